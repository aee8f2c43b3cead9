"""Study storages: several processes creating or loading one study at the same moment."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import optuna
import pytest

from autocompress.search.storage import create_or_load_study, open_storage, storage_url

WORKER = textwrap.dedent("""
    import pathlib, sys, time
    from autocompress.search.storage import create_or_load_study, open_storage, storage_url

    where, index, go = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
    while not go.exists():  # all start at once
        time.sleep(0.005)
    storage = open_storage(storage_url(where, pathlib.Path.cwd()), heartbeat_interval=None)
    study = create_or_load_study(storage, "shared", directions=["minimize"])
    study.set_user_attr("worker" + index, True)
    print("ok")
""")


@pytest.mark.parametrize("name", ["search.db", "search.log"])
def test_processes_creating_one_study_at_once_all_succeed(tmp_path, name):
    where, go = str(tmp_path / name), tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, where, str(i), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    go.touch()
    outputs = [w.communicate(timeout=180) for w in workers]
    failed = [
        err.strip().splitlines()[-1]
        for w, (out, err) in zip(workers, outputs)
        if w.returncode != 0 or "ok" not in out
    ]
    assert not failed, failed
    storage = open_storage(storage_url(where, tmp_path), heartbeat_interval=None)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    assert [s.study_name for s in summaries] == ["shared"]
    assert set(optuna.load_study(study_name="shared", storage=storage).user_attrs) == {
        f"worker{i}" for i in range(6)
    }


def test_the_ray_experiment_filesystem_replaces_files_whole(tmp_path):
    """A driver killed while Tune copies its state must leave the old file, not half the new one."""
    import pickle

    from autocompress.search.atomic_fs import atomic_local_filesystem

    fs = atomic_local_filesystem()
    state = tmp_path / "experiment" / "experiment_state.json"
    with fs.open_output_stream(str(state)) as stream:
        stream.write(b'{"trial_data": []}')
    assert state.read_bytes() == b'{"trial_data": []}'

    stream = fs.open_output_stream(str(state))
    stream.write(b'{"trial_data": [')  # the copy is cut here
    assert state.read_bytes() == b'{"trial_data": []}'
    stream.write(b"1]}")
    stream.close()
    assert state.read_bytes() == b'{"trial_data": [1]}'
    assert [p.name for p in state.parent.iterdir()] == ["experiment_state.json"]  # no staging file left
    assert pickle.loads(pickle.dumps(fs)) == fs  # Tune ships it to the workers


@pytest.mark.parametrize("damage", ["garbled", "zeroed header", "truncated"])
def test_a_damaged_sqlite_file_is_one_clear_error_without_a_server_hint(tmp_path, damage):
    path = tmp_path / "search.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    study = optuna.create_study(storage=storage, study_name="damaged")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=20)
    storage.engine.dispose()
    data = bytearray(path.read_bytes())
    if damage == "garbled":  # bytes changed all through the data pages
        data[4096::997] = bytes(len(data[4096::997]))
        data[len(data) * 3 // 4 :: 97] = b"\xff" * len(data[len(data) * 3 // 4 :: 97])
    elif damage == "zeroed header":
        data[:100] = bytes(100)
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as raised:
        create_or_load_study(open_storage(f"sqlite:///{path}"), "damaged")
    message = str(raised.value)
    assert "The file is damaged" in message and str(path) in message
    assert "psycopg2" not in message and "server" not in message and "\n" not in message


def test_a_trial_no_driver_claimed_is_recovered_once_stale(tmp_path):
    """A driver killed between creating a trial and claiming it left it RUNNING with no owner
    (and perhaps no heartbeat): stuck for good, until it is let go as stale."""
    from autocompress.search.storage import recover_interrupted

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'search.db'}", study_name="s")
    unclaimed = study.ask()  # created, never claimed, never sampled
    other = study.ask()
    other.set_user_attr("driver", "another-live-worker")
    other.suggest_float("x", 0, 1)
    mine = study.ask()
    mine.set_user_attr("driver", "me")
    mine.suggest_float("x", 0, 1)

    assert recover_interrupted(study, "me", unowned_after=3600) == 1  # too fresh to be an orphan
    states = {t.number: t.state for t in study.trials}
    assert states[unclaimed.number] == states[other.number] == optuna.trial.TrialState.RUNNING
    assert states[mine.number] == optuna.trial.TrialState.FAIL

    assert recover_interrupted(study, "me", unowned_after=0) == 1
    states = {t.number: t.state for t in study.trials}
    assert states[unclaimed.number] == optuna.trial.TrialState.FAIL  # let go: nothing to retry
    assert states[other.number] == optuna.trial.TrialState.RUNNING  # its owner's heartbeat decides
    retried = [
        t.user_attrs.get("retry_of") for t in study.trials if t.state == optuna.trial.TrialState.WAITING
    ]
    assert retried == [mine.number]


def _search_storage(folder, name: str):
    """A search's storage file as resume finds it: a 20-trial study with autocompress settings."""
    from autocompress.search.optuna_backend import SETTINGS_KEY
    from autocompress.search.settings import SearchSettings

    path = folder / name
    storage = open_storage(storage_url(path, folder), heartbeat_interval=None)
    study = optuna.create_study(storage=storage, study_name="s", sampler=optuna.samplers.RandomSampler(0))
    study.set_user_attr(SETTINGS_KEY, SearchSettings(space="compact", workdir=str(folder)).to_dict())
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=20)
    if hasattr(storage, "engine"):
        storage.engine.dispose()
    return path


def _assert_damaged_file_error(error: Exception, path) -> None:
    message = str(error)
    assert isinstance(error, ValueError) and str(path) in message and "\n" not in message
    assert "The file is damaged: restore it from a backup, or start a new search" in message


# Damage past what opening the file reads: it opens, then a read of the study fails part way.
SQLITE_RECORD_DAMAGE = {
    "an enum value (LookupError)": "UPDATE trial_values SET value_type = 'FNITE' WHERE trial_value_id = 3",
    "a distribution (JSONDecodeError)": (
        'UPDATE trial_params SET distribution_json = \'{"name": "Float\' WHERE param_id = 5'
    ),
    "a date (ValueError)": "UPDATE trials SET datetime_start = '2026-13-45 99:00' WHERE trial_id = 4",
    "a table's page (StorageInternalError)": None,
}


@pytest.mark.parametrize("damage", list(SQLITE_RECORD_DAMAGE))
def test_a_sqlite_file_damaged_past_its_header_is_one_clear_error_when_resume_reads_it(tmp_path, damage):
    import sqlite3

    from autocompress.search.optuna_backend import load_settings

    path = _search_storage(tmp_path, "search.db")
    assert load_settings(path, "s").space == "compact"
    connection = sqlite3.connect(path)
    if SQLITE_RECORD_DAMAGE[damage] is not None:
        connection.execute(SQLITE_RECORD_DAMAGE[damage])
        connection.commit()
        connection.close()
    else:  # the trial_params table's root page zeroed: "database disk image is malformed" on reading it
        page = connection.execute("PRAGMA page_size").fetchone()[0]
        root = connection.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'trial_params'"
        ).fetchone()[0]
        connection.close()
        data = bytearray(path.read_bytes())
        data[(root - 1) * page : root * page] = bytes(page)
        path.write_bytes(bytes(data))
    open_storage(storage_url(path, tmp_path), heartbeat_interval=None).engine.dispose()  # it still opens
    with pytest.raises(ValueError) as raised:
        load_settings(path, "s")  # what resume reads first, before the model is built
    _assert_damaged_file_error(raised.value, path)
    assert f"the search storage {path} cannot be read: " in str(raised.value)


def test_the_reads_at_a_search_start_name_the_damaged_file_and_pass_a_server_error(tmp_path):
    """OptunaSession wraps its first reads (the study, its settings, every trial) in reading()."""
    import sqlite3

    from autocompress.search.storage import reading

    path = _search_storage(tmp_path, "search.db")
    with sqlite3.connect(path) as connection:
        connection.execute(SQLITE_RECORD_DAMAGE["an enum value (LookupError)"])
    url = storage_url(path, tmp_path)
    storage = open_storage(url, heartbeat_interval=None)
    with pytest.raises(ValueError) as raised, reading(url):
        create_or_load_study(storage, "s").get_trials(deepcopy=False)
    _assert_damaged_file_error(raised.value, path)
    storage.engine.dispose()
    # Not a file: a database server's error (or a storage object's) is not taken for a damaged file.
    for where in ("postgresql://user@host/db", optuna.storages.InMemoryStorage()):
        with pytest.raises(optuna.exceptions.StorageInternalError), reading(where):
            raise optuna.exceptions.StorageInternalError("connection lost")


def _rename_a_key(lines: list[bytes]) -> None:  # valid JSON, but a record Optuna cannot replay
    at = next(i for i, line in enumerate(lines) if b'"param_name"' in line)
    lines[at] = lines[at].replace(b'"param_name"', b'"param_namf"')


JOURNAL_DAMAGE = {
    "a garbage line (JSONDecodeError)": lambda lines: lines.insert(3, b'{"op_code": 9, "what": [1, 2\n'),
    "a line not UTF-8 (UnicodeDecodeError)": lambda lines: lines.insert(3, b'{"op_code": "\xff\xfe"}\n'),
    "a renamed key (KeyError)": _rename_a_key,
}


@pytest.mark.parametrize("damage", list(JOURNAL_DAMAGE))
def test_a_damaged_journal_file_is_one_clear_error_naming_it(tmp_path, damage):
    from autocompress.search.optuna_backend import load_settings

    path = _search_storage(tmp_path, "search.log")
    lines = path.read_bytes().splitlines(keepends=True)
    JOURNAL_DAMAGE[damage](lines)
    path.write_bytes(b"".join(lines))
    with pytest.raises(ValueError) as raised:
        load_settings(path, "s")
    _assert_damaged_file_error(raised.value, path)
    with pytest.raises(ValueError) as raised:
        open_storage(storage_url(path, tmp_path), heartbeat_interval=None)
    _assert_damaged_file_error(raised.value, path)


def test_a_journal_whose_last_line_a_killed_writer_cut_still_resumes(tmp_path):
    from autocompress.search.optuna_backend import load_settings

    path = _search_storage(tmp_path, "search.log")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # the last record half written
    assert load_settings(path, "s").space == "compact"
