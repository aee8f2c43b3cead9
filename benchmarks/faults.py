"""Fault tally: bad input and damaged files, per fault class, and how each one ended.

Every input is fed to the real code in this process, each in a thread with a deadline, and
ends in one of:

  ok       accepted, and rightly: a valid input (a random mutation can be one) with nothing
           coerced, or damage that missed the data (what was read equals the original), or
           a storage cut short that reads back as the study was before the cut (what a
           killed writer leaves: trials it had not finished are RUNNING, resume retries them)
  clear    the project's own error: a PolicyError naming the file; a ValueError naming the
           storage or config file, on one line; CLI exit status 2 with one error line
           naming the option (argparse's usage above it allowed)
  unclear  an error of the right kind, but on several lines or naming nothing
  wrong    bad input accepted silently, data read back different from what was written, or
           the CLI getting through to training (tripwires stand in for it and the search)
  crashed  any other exception: a traceback for the user
  hung     not finished within --deadline seconds

Classes (seeded, so every run tries the same inputs):

  policy files     mutations of a valid policy (a value at a random path replaced by random
                   JSON), values of the wrong type or out of range, unknown keys, random and
                   cut-short text, non-UTF-8, repeated keys, deep nesting; Policy.load
  CLI argv         `autocompress search/demo/resume/evaluate` argv with at least one invalid
                   value, drawn by tests/test_cli_fuzz.py's generators; cli.main(argv)
  storage files    a search.db (SQLite) and a search.log (Optuna journal) of a 30-trial study
                   with autocompress settings, garbled, zeroed, truncated, bit-flipped or
                   replaced; read back as resume does (load_settings, then the trials)
  config files     garbage YAML files: `autocompress search --config FILE`
  config settings  a config with importable entry points and one invalid setting value;
                   SearchConfig.load (what `search --config` checks before it runs anything)

Process faults (SIGKILL during fine-tuning, measurement or between trials; a second driver;
concurrent drivers; killed, crashing and hanging measurement children; a killed Ray
driver and a lost node) cost minutes each: --process runs their tests through pytest and
reports passed and failed.

    python benchmarks/faults.py               # the in-process classes, under a minute on 2 cores
    python benchmarks/faults.py --process     # also the process-fault tests (about 15 minutes)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the CLI fuzz's generators and checks

import test_cli_fuzz as fuzz  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_policy_loading import VALID as VALID_POLICY  # noqa: E402  (the fuzz's valid policy)

from autocompress import zoo  # noqa: E402
from autocompress.config import SearchConfig  # noqa: E402
from autocompress.policies import Policy, PolicyError  # noqa: E402
from autocompress.search import driver, optuna_backend  # noqa: E402
from autocompress.search.settings import SearchSettings  # noqa: E402
from autocompress.search.storage import open_storage, storage_url  # noqa: E402

OUTCOMES = ("ok", "clear", "unclear", "wrong", "crashed", "hung")


def run_with_deadline(function, seconds: float):
    """(finished, result or exception); a thread that is still running is left behind (daemon)."""
    box: dict = {}

    def target():
        try:
            box["result"] = function()
        except BaseException as error:  # judged by the caller
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__  # it may hold them redirected
        return False, None
    return True, box.get("error", box.get("result"))


# -- policy files ----------------------------------------------------------------------------------

POLICY_KEYS = [
    *["default", "overrides", "pinned", "student", "distillation", "quantization", "weights", "activations"],
    *["bits", "symmetric", "per_channel", "range_init", "pruning", "ratio", "criterion", "sparsity"],
    *["level", "block", "family", "params", "format", "version", "fc"],
]
# (path, values of the wrong type or out of range): each makes VALID_POLICY invalid.
BAD_LEAVES = [
    (("default", "quantization", "weights", "bits"), ["8", 8.0, True, 0, 9, 16, -1, [8], 1e9]),
    (("default", "quantization", "weights", "symmetric"), ["yes", 1, 0, "true", None]),
    (("default", "quantization", "activations", "bits"), ["8", 8.5, False, 0, 33]),
    (("default", "pruning", "ratio"), ["0.5", True, -0.1, 1.5, math.nan, math.inf, -math.inf]),
    (("default", "pruning", "criterion"), [5, "l3", "", None, ["l2"]]),
    (("overrides", "fc", "sparsity", "level"), ["0.5", -0.5, 1.5, math.nan, True]),
    (("pinned",), ["conv1", 5, {"conv1": True}, [5], [None]]),
    (("format",), ["other.policy", 5]),
    (("version",), [2, "1", 1.0, True]),
]


def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(7 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-10, 300)
    if kind == 3:
        return rng.choice([0.0, 0.5, 1.0, -1.5, 1e300, math.nan, math.inf, -math.inf, rng.uniform(-2, 2)])
    if kind == 4:
        return "".join(rng.choice("abcl2_ .-\u00e9") for _ in range(rng.randrange(9)))
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(POLICY_KEYS): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _with(data, path, value):
    """``data`` with the value at ``path`` (created where missing) replaced."""
    if not path:
        return value
    node = dict(data) if isinstance(data, dict) else {}
    node[path[0]] = _with(node.get(path[0]), path[1:], value)
    return node


def policy_inputs(count: int, rng: random.Random) -> list[tuple[bytes, bool, object, str]]:
    """(file bytes, known to be invalid, the JSON data when it is some: what a loaded policy must
    keep, what was done to the valid policy when it was a change)."""
    text = json.dumps(VALID_POLICY)
    inputs: list[tuple[bytes, bool, object, str]] = []
    while len(inputs) < count:
        family = rng.randrange(8)
        if family in (0, 1):  # a random mutation: valid or not, nothing may be coerced
            path, value = [rng.choice(POLICY_KEYS) for _ in range(rng.randint(1, 4))], _random_json(rng)
            data = _with(VALID_POLICY, path, value)
            inputs.append((json.dumps(data).encode(), False, data, f"{'.'.join(path)} = {value!r}"))
        elif family == 2:
            path, values = rng.choice(BAD_LEAVES)
            value = rng.choice(values)
            data = _with(VALID_POLICY, list(path), value)
            inputs.append((json.dumps(data).encode(), True, data, f"{'.'.join(path)} = {value!r}"))
        elif family == 3:  # an unknown key somewhere a policy has fixed fields
            where = rng.choice([(), ("default",), ("default", "quantization"), ("default", "pruning")])
            path = [*where, rng.choice(["colour", "bitz", "ratios", "Default"])]
            data = _with(VALID_POLICY, path, 1)
            inputs.append((json.dumps(data).encode(), True, data, f"{'.'.join(path)} = 1"))
        elif family == 4:  # random text: almost never a policy
            garbage = "".join(rng.choice('{}[]":,0189.-aeflnrstu \n\\') for _ in range(rng.randrange(60)))
            try:
                data = json.loads(garbage)
            except ValueError:
                data = None
            inputs.append((garbage.encode(), not isinstance(data, dict), data, ""))
        elif family == 5:  # cut short, as by a full disk or a killed writer
            inputs.append((text[: rng.randrange(len(text))].encode(), True, None, ""))
        elif family == 6:
            inputs.append((rng.randbytes(rng.randrange(1, 80)) + b"\xff", True, None, ""))  # not UTF-8
        else:
            special = [
                b'{"default": {"pruning": {"ratio": 0.5, "ratio": 0.25}}}',
                b"[" * 100_000 + b"]" * 100_000,
                b"[]",
                b"null",
                b'"policy"',
                b"1e999",
                b'{"pinned": ["caf\xe9"]}',
            ]
            inputs.append((rng.choice(special), True, None, ""))
    return inputs


def _kept(source, loaded) -> bool:
    """Every value of ``source`` is in ``loaded`` at the same place, of the same JSON type
    (an integer is a fine number); NaN never is."""
    if isinstance(source, dict):
        return isinstance(loaded, dict) and all(
            k in loaded and _kept(v, loaded[k]) for k, v in source.items()
        )
    if isinstance(source, list):
        return isinstance(loaded, list) and len(source) == len(loaded) and all(map(_kept, source, loaded))
    if isinstance(source, bool) or source is None or isinstance(source, str):
        return type(loaded) is type(source) and loaded == source
    if isinstance(source, int):
        return type(loaded) in (int, float) and loaded == source
    return type(loaded) is float and loaded == source  # NaN != NaN


def judge_policy(folder: Path, index: int, item, deadline: float) -> tuple[str, str]:
    data, known_bad, source, change = item
    path = folder / f"policy-{index}.json"
    path.write_bytes(data)
    shown = change or data[:100].decode("utf-8", "backslashreplace")
    finished, result = run_with_deadline(lambda: Policy.load(path), deadline)
    if not finished:
        return "hung", shown
    if isinstance(result, PolicyError):
        return ("clear", "") if str(path) in str(result) else ("unclear", f"{shown} -> {result}")
    if isinstance(result, BaseException):
        return "crashed", f"{shown} -> {type(result).__name__}: {result}"
    if known_bad or not _kept(source, result.to_dict()):
        return "wrong", f"{shown} accepted"
    return "ok", ""


# -- CLI argv ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def tripwires():
    """What tests/test_cli_fuzz.py's fixture sets up: no cached baseline, and training and
    the search raise ReachedTraining."""
    saved = (zoo.train, driver.run_search, driver.run_job, os.environ.get("AUTOCOMPRESS_CACHE"))
    with tempfile.TemporaryDirectory(prefix="faults-cache-") as cache:
        os.environ["AUTOCOMPRESS_CACHE"] = cache
        zoo.train = driver.run_search = driver.run_job = fuzz._tripwire
        try:
            yield
        finally:
            zoo.train, driver.run_search, driver.run_job = saved[:3]
            if saved[3] is None:
                os.environ.pop("AUTOCOMPRESS_CACHE", None)
            else:
                os.environ["AUTOCOMPRESS_CACHE"] = saved[3]


def drawn(strategy, count: int) -> list:
    """``count`` examples of a hypothesis strategy, the same on every run."""
    examples: list = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example):
        examples.append(example)

    collect()
    return examples[:count]


def judge_cli(case: fuzz.Case, deadline: float) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="faults-cli-") as folder:
        tmp = Path(folder)
        fuzz._layout(tmp, case.files)
        before = fuzz._snapshot(tmp)
        argv = case.argv(tmp)
        shown = repr(argv).replace(folder, "TMP")
        finished, result = run_with_deadline(lambda: fuzz.run_cli(argv), deadline)
        if not finished:
            return "hung", shown
        if isinstance(result, fuzz.ReachedTraining):
            return "wrong", f"{shown}: got to training"
        if fuzz._snapshot(tmp) != before:
            return "wrong", f"{shown}: changed files"
        if isinstance(result, BaseException):
            return "crashed", f"{shown} -> {type(result).__name__}: {result}"
        status, out, err, _ = result
        if status != 2:
            return "wrong", f"{shown}: exit status {status}"
        try:
            fuzz.assert_one_clear_error(status, out, err, case.needles(tmp))
        except AssertionError:
            return "unclear", f"{shown} -> {err.strip()}".replace(folder, "TMP")
        return "clear", ""


# -- storage files -----------------------------------------------------------------------------------

STUDY = "faults"


def make_storages(folder: Path) -> dict[str, Path]:
    """A search.db and a search.log holding the same 30-trial study and autocompress settings."""
    settings_ = SearchSettings(space="compact", n_trials=30, workdir=str(folder)).to_dict()
    paths = {"sqlite": folder / "search.db", "journal": folder / "search.log"}
    for path in paths.values():
        storage = open_storage(storage_url(path, folder), heartbeat_interval=None)
        study = optuna.create_study(
            storage=storage, study_name=STUDY, sampler=optuna.samplers.RandomSampler(0)
        )
        study.set_user_attr(optuna_backend.SETTINGS_KEY, settings_)
        study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("bits", 2, 8), n_trials=30)
        if hasattr(storage, "engine"):
            storage.engine.dispose()
    return paths


def read_back(path: Path):
    """What resume reads: the settings (load_settings), then the study's trials."""
    loaded = optuna_backend.load_settings(path, STUDY)
    storage = open_storage(storage_url(path, path.parent), heartbeat_interval=None)
    try:
        study = optuna.load_study(study_name=STUDY, storage=storage)
        trials = [(t.number, t.state.name, t.params, t.values) for t in study.get_trials(deepcopy=False)]
        return loaded.to_dict(), trials
    finally:
        if hasattr(storage, "engine"):
            storage.engine.dispose()


def damaged(data: bytes, rng: random.Random, kind: str) -> tuple[str, bytes]:
    """One kind of damage (with random place and size) and the damaged bytes."""
    damage = bytearray(data)
    if kind == "sqlite":
        what = rng.choice(["zeroed header", "zeroed page", "garbled pages", "flipped bytes", "truncated"])
    else:
        what = rng.choice(["cut last line", "garbage line", "flipped bytes", "truncated", "not UTF-8 line"])
    lines = data.splitlines(keepends=True)
    if what == "zeroed header":
        damage[:100] = bytes(100)
    elif what == "zeroed page":
        page = rng.randrange(len(data) // 4096)
        damage[page * 4096 : (page + 1) * 4096] = bytes(4096)
    elif what == "garbled pages":  # as tests/test_storage.py: bytes changed all through the data pages
        start, step = rng.randrange(100, len(data) // 2), rng.randrange(97, 2000)
        damage[start::step] = bytes([rng.randrange(256)]) * len(damage[start::step])
    elif what == "flipped bytes":
        for _ in range(rng.choice([1, 4, 16, 64])):
            damage[rng.randrange(len(damage))] ^= 1 << rng.randrange(8)
    elif what == "truncated":
        damage = damage[: rng.randrange(len(damage))]
    elif what == "cut last line":  # a writer killed in the middle of its last record
        damage = bytearray(b"".join(lines[:-1]) + lines[-1][: rng.randrange(1, len(lines[-1]) - 1)])
    elif what == "garbage line":
        at = rng.randrange(len(lines))
        damage = bytearray(b"".join(lines[:at] + [b'{"op_code": 9, "what": [1, 2\n'] + lines[at:]))
    else:
        at = rng.randrange(len(lines))
        damage = bytearray(b"".join(lines[:at] + [b'{"op_code": "\xff\xfe"}\n'] + lines[at:]))
    return what, bytes(damage)


def storage_inputs(paths: dict[str, Path], count: int, rng: random.Random) -> list[tuple[str, str, bytes]]:
    """(kind, damage, bytes): damaged copies of both storages, and a few whole-file faults."""
    originals = {kind: path.read_bytes() for kind, path in paths.items()}
    inputs = [
        (kind, what, data)
        for kind in paths
        for what, data in [
            ("empty", b""),
            ("random bytes", rng.randbytes(len(originals[kind]))),
            ("another file's", json.dumps(VALID_POLICY).encode()),
        ]
    ]
    while len(inputs) < count:
        kind = rng.choice(list(paths))
        inputs.append((kind, *damaged(originals[kind], rng, kind)))
    return inputs[:count]


def _earlier(original, read) -> bool:
    """``read`` is a state the study really had before ``original``: the same settings, no
    trial that was not written, each trial as written or still RUNNING with what it had then."""
    (settings_a, trials_a), (settings_b, trials_b) = original, read
    if settings_a != settings_b or len(trials_b) > len(trials_a):
        return False
    for (number, state, params, values), (number_a, state_a, params_a, values_a) in zip(trials_b, trials_a):
        if number != number_a or any(k not in params_a or params_a[k] != v for k, v in params.items()):
            return False
        if (state, params, values) != (state_a, params_a, values_a) and (state, values) != ("RUNNING", None):
            return False
    return True


def judge_storage(folder: Path, index: int, item, original, deadline: float) -> tuple[str, str]:
    kind, what, data = item
    path = folder / f"damaged-{index}" / ("search.db" if kind == "sqlite" else "search.log")
    path.parent.mkdir()
    path.write_bytes(data)
    shown = f"{path.name}, {what}"
    finished, result = run_with_deadline(lambda: read_back(path), deadline)
    if not finished:
        return "hung", shown
    if isinstance(result, ValueError):
        message = str(result)
        if str(path) in message and "\n" not in message:
            return "clear", ""
        return "unclear", f"{shown} -> {type(result).__name__}: {message}"
    if isinstance(result, BaseException):
        return "crashed", f"{shown} -> {type(result).__name__}: {result}"
    # As written, or a cut-off tail read back as the state before it (what a killed writer leaves).
    if result == original[kind] or _earlier(original[kind], result):
        return "ok", ""
    (settings_a, trials_a), (settings_b, trials_b) = original[kind], result
    differ = sum(a != b for a, b in zip(trials_a, trials_b)) + abs(len(trials_a) - len(trials_b))
    also = "" if settings_a == settings_b else " and the settings"
    return "wrong", f"{shown}: read back without an error, {differ} of {len(trials_a)} trials{also} changed"


# -- config files ------------------------------------------------------------------------------------

ENTRY_MODULE = "autocompress_faults_entry"
ENTRY = f"model: {ENTRY_MODULE}:model\ndata: {ENTRY_MODULE}:loaders\n"
# Setting values that are not valid: each must be refused when the config is loaded.
BAD_SETTINGS = {
    "n_trials": ["0", "-1", "1.5", "'5'", "true", ".inf", ".nan", "null"],
    "max_accuracy_drop": ["-0.1", "1", "2", ".nan", "'0.01'", ".inf", "true"],
    "confidence": ["0.2", "1", ".nan", "'0.9'", "true", "-1"],
    "seed": ["-1", "1.5", "true", "'0'", "4294967296"],
    "timeout": ["0", "-1", ".nan", "'60'", "true", "-.inf"],
    "objective": [
        "speed",
        "{latency: .nan}",
        "{latency: -1}",
        "[]",
        "{}",
        "{latency: .inf}",
        "[latency, latency]",
    ],
    "space": ["5", "[]", "nope"],
    "sampler": ["nope", "5"],
    "strategy": ["nope"],
    "backend": ["dask", "5"],
    "top_k": ["0", "1.5", "true"],
    "confirm_fraction": ["1", "-0.1", ".nan", "'0.3'"],
    "finetune": [
        "{epochs: -1}",
        "{epochs: .nan}",
        "{epoch: 1}",
        "{lr: -1}",
        "{lr: .nan}",
        "{epochs: .inf}",
        "5",
    ],
    "target": ["{threads: 0}", "{threads: 1.5}", "{device: TPU}", "{threads: 4294967296}", "5"],
    "early_stop_margin": ["-1", ".nan", "'0.05'"],
    "hardware_proposals": ["'yes'", "1"],
    "relative_drop": ["'yes'", "1", "2"],
    "workdir": ["5", "''", "[]"],
    "study_name": ["5", "''", "[]"],
    "storage": ["5", "'x.txt'", "[]"],
    "final_finetune": ["{epochs: -1}", "5"],
    "ray": ["{max_failures: -1}", "{scheduler: hyperband}", "{resources_per_trial: {}}", "5"],
}


def judge_config_setting(folder: Path, index: int, text: str, deadline: float) -> tuple[str, str]:
    path = folder / f"config-{index}.yaml"
    path.write_text(text)
    shown = text.removeprefix(ENTRY).strip()
    finished, result = run_with_deadline(lambda: SearchConfig.load(path), deadline)
    if not finished:
        return "hung", shown
    if isinstance(result, ValueError):
        if str(path) in str(result) and "\n" not in str(result):
            return "clear", ""
        return "unclear", f"{shown} -> {result}"
    if isinstance(result, BaseException):
        return "crashed", f"{shown} -> {type(result).__name__}: {result}"
    return "wrong", f"{shown} accepted"


# -- process faults (pytest) -------------------------------------------------------------------------

PROCESS_TESTS = {
    "SIGKILL in a search": [
        "tests/test_search.py::test_a_killed_search_resumes_and_retries_the_interrupted_trial",
    ],
    "second driver": ["tests/test_search.py::test_a_second_driver_on_a_running_search_is_refused"],
    "concurrent drivers": ["tests/test_storage.py::test_processes_creating_one_study_at_once_all_succeed"],
    "measurement child": [
        "tests/test_runtime_worker.py::test_the_worker_dies_with_a_killed_parent",
        "tests/test_runtime_worker.py::test_crashing_child_raises_readable_error",
        "tests/test_runtime_worker.py::test_hanging_child_times_out",
    ],
    "Ray driver / node": [
        "tests/test_ray.py::test_a_killed_driver_is_restored_and_finishes_the_budget",
        "tests/test_ray.py::test_a_lost_node_retries_its_trial_from_the_checkpoint",
    ],
}


def run_process_tests(timeout: float) -> None:
    print(f"\n{'process fault (pytest)':<24} {'tests':>6} {'passed':>7} {'failed':>7} {'time':>8}")
    for name, tests in PROCESS_TESTS.items():
        started = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", *tests],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            counts = {
                word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", done.stdout)
            }
        except subprocess.TimeoutExpired:
            counts = {"hung": 1}
        failed = (
            counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0) + counts.get("hung", 0)
        )
        total = counts.get("passed", 0) + failed + counts.get("skipped", 0)
        print(
            f"{name:<24} {total:>6} {counts.get('passed', 0):>7} {failed:>7} {time.perf_counter() - started:>7.0f}s"
        )


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policies", type=int, default=500)
    parser.add_argument("--argv", type=int, default=300)
    parser.add_argument("--storages", type=int, default=200)
    parser.add_argument(
        "--configs", type=int, default=100, help="garbage config files (plus every bad setting)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--deadline", type=float, default=20.0, help="seconds per input before it counts as hung"
    )
    parser.add_argument("--process", action="store_true", help="also run the process-fault tests (minutes)")
    parser.add_argument("--verbose", action="store_true", help="every input that was not ok or clear")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # Optuna's experimental-feature notes are not faults
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rng = random.Random(args.seed)
    tally: dict[str, collections.Counter] = {}
    seconds: dict[str, float] = {}
    seen: dict[str, list[str]] = collections.defaultdict(list)  # what ended other than ok or clear

    def record(name: str, judged) -> None:
        started, counts = time.perf_counter(), collections.Counter()
        for outcome, detail in judged:
            counts[outcome] += 1
            if outcome not in ("ok", "clear"):
                seen[f"{name}, {outcome}"].append(detail)
        tally[name], seconds[name] = counts, time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="faults-") as folder:
        work = Path(folder)
        (work / f"{ENTRY_MODULE}.py").write_text(
            "import torch\n\ndef model():\n    return torch.nn.Linear(2, 2)\n\ndef loaders():\n    return [], []\n"
        )
        sys.path.insert(0, str(work))

        policies = policy_inputs(args.policies, rng)
        record("policy files", (judge_policy(work, i, p, args.deadline) for i, p in enumerate(policies)))

        with tripwires():
            fuzz.load_dataset("digits")
            commands = st.sampled_from(["search", "demo", "resume", "evaluate"]).flatmap(fuzz.cases)
            record("CLI argv", (judge_cli(case, args.deadline) for case in drawn(commands, args.argv)))
            garbage = drawn(
                fuzz.GARBAGE_CONFIGS.map(
                    lambda data: fuzz.Case(
                        "search",
                        (
                            fuzz.Part(
                                ("--config", "{tmp}/garbage.yaml"),
                                ("{tmp}/garbage.yaml", "cannot import"),
                                True,
                            ),
                        ),
                        {"garbage.yaml": data, "garbage.json": b"", "garbage.db": b"\xff\xfe"},
                    )
                ),
                args.configs,
            )
            record("config files", (judge_cli(case, args.deadline) for case in garbage))

        stores = work / "storages"
        stores.mkdir()
        paths = make_storages(stores)
        original = {kind: read_back(path) for kind, path in paths.items()}
        damages = storage_inputs(paths, args.storages, rng)
        record(
            "storage files",
            (judge_storage(stores, i, d, original, args.deadline) for i, d in enumerate(damages)),
        )

        settings_texts = [
            f"{ENTRY}{key}: {value}\n" for key, values in BAD_SETTINGS.items() for value in values
        ]
        judged = (judge_config_setting(work, i, text, args.deadline) for i, text in enumerate(settings_texts))
        record("config settings", judged)
        sys.path.remove(str(work))

    print(f"# fault tally, seed {args.seed}, deadline {args.deadline:g} s per input")
    print(f"{'fault class':<16} {'tried':>6} " + " ".join(f"{o:>8}" for o in OUTCOMES) + f" {'time':>7}")
    for name, counts in tally.items():
        cells = " ".join(f"{counts.get(o, 0):>8}" for o in OUTCOMES)
        print(f"{name:<16} {sum(counts.values()):>6} {cells} {seconds[name]:>6.1f}s")
    total = sum(tally.values(), collections.Counter())
    print(f"{'all':<16} {sum(total.values()):>6} " + " ".join(f"{total.get(o, 0):>8}" for o in OUTCOMES))
    for what, details in seen.items():
        shown = details if args.verbose else details[:3]
        print(f"\n{what} ({len(details)}{', e.g.' if len(shown) < len(details) else ''}):")
        for detail in shown:
            print(f"  {detail[:300]}")
    if args.process:
        run_process_tests(timeout=1800)
    return 0


if __name__ == "__main__":
    sys.exit(main())
