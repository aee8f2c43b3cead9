"""Where a search keeps its trials: an Optuna storage (SQLite by default).

    None / "path/search.db"              SQLite file (created)
    "sqlite:///...", "postgresql://..."  any SQLAlchemy URL (RDB): heartbeats, several workers
    "path/search.log" / "journal:path"   Optuna journal file (no server, no heartbeat)
    an optuna.storages.BaseStorage       used as is

With an RDB, each running trial heartbeats; a trial whose worker died (killed, lost
node) goes stale after ``grace_period`` seconds, is marked FAIL and retried with the
same parameters by the next worker that starts a trial.
"""

from __future__ import annotations

import contextlib
import datetime
import random
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
MAX_RETRY = 2
# What SQLite says of a file whose pages or records are damaged.
DAMAGE_SIGNS = ("malformed", "not a database", "corrupt", "could not decode")
DAMAGED = (
    "The file is damaged: restore it from a backup, or start a new search "
    "(another workdir or storage); the trials' models in its workdir are kept."
)


def storage_url(storage: str | Path | None, workdir: Path) -> str | BaseStorage:
    """The storage to use, as a URL (or storage object) that can be stored and reopened."""
    if storage is None:
        return f"sqlite:///{(workdir / 'search.db').resolve()}"
    if isinstance(storage, BaseStorage):
        return storage
    text = str(storage)
    if "://" in text:
        return text
    if text.startswith("journal:") or text.endswith((".log", ".jsonl", ".journal")):
        return "journal:" + str(Path(text.removeprefix("journal:")).resolve())
    if text.endswith((".db", ".sqlite", ".sqlite3")):
        return f"sqlite:///{Path(text).resolve()}"
    raise ValueError(
        f"cannot tell what storage {text!r} is: use None (SQLite in the workdir), a file 'search.db', "
        "a journal file 'search.log', or a URL such as 'sqlite:///abs/path.db' or 'postgresql://user:pw@host/db'"
    )


def open_storage(
    url: str | BaseStorage, *, heartbeat_interval: int | None = 30, grace_period: int | None = None
) -> BaseStorage:
    """Open ``url`` (see storage_url) with heartbeats and retries for RDBs; clear errors otherwise."""
    if isinstance(url, BaseStorage):
        return url
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))  # reads and replays the whole log
        except OSError as error:
            raise ValueError(f"cannot open the journal storage {path}: {error}") from None
        except Exception as error:  # JSONDecodeError, UnicodeDecodeError, KeyError...: a log it cannot replay
            raise ValueError(f"cannot open the journal storage {path}: {_cause(error)}. {DAMAGED}") from None
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in RDB_SCHEMES:
        raise ValueError(
            f"cannot open the search storage {_redact(url)!r}: unsupported scheme {scheme!r}; "
            "use sqlite, postgresql or mysql"
        )
    try:
        if scheme == "sqlite":
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            heartbeat = {}
            if heartbeat_interval:
                heartbeat = dict(
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period or 3 * heartbeat_interval,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                )
            # Several processes opening a new database at once race to create its tables.
            return _retrying(lambda: RDBStorage(url, engine_kwargs=_engine_kwargs(scheme), **heartbeat))
    except Exception as error:  # SQLAlchemy / driver errors come in many types
        hint = "Check the path and that the file is an Optuna SQLite database."
        cause = str(error).splitlines()[0] if str(error) else ""
        if scheme == "sqlite" and any(t in cause for t in DAMAGE_SIGNS):
            hint = DAMAGED
        elif scheme != "sqlite":
            hint = (
                "Check the URL, that the database server is up and reachable, and that its driver is installed "
                "(PostgreSQL: pip install psycopg2-binary)."
            )
        raise ValueError(
            f"cannot open the search storage {_redact(url)!r}: {type(error).__name__}: {cause}. {hint}"
        ) from None


def storage_file(url: str | BaseStorage) -> Path | None:
    """The file of a SQLite or journal storage URL (see storage_url); None for a database
    server or a storage object."""
    if isinstance(url, str) and url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    if isinstance(url, str) and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///"))
    return None


@contextlib.contextmanager
def reading(url: str | BaseStorage) -> Iterator[None]:
    """Around the reads that load a study and its trials (a search's start, a resume): a
    storage file that opened but is damaged further in fails part way through a read, with
    Optuna's StorageInternalError or the LookupError, KeyError, ValueError or TypeError of a
    record it cannot decode; that is one ValueError naming the file and what to do. Only
    Optuna's calls go inside (a ValueError of our own would be taken for damage); errors of
    a database server pass as they are."""
    try:
        yield
    except (optuna.exceptions.StorageInternalError, LookupError, ValueError, TypeError) as error:
        path = storage_file(url)
        if path is None:
            raise
        hint = DAMAGED
        if isinstance(error, optuna.exceptions.StorageInternalError) and not any(
            t in _cause(error) for t in DAMAGE_SIGNS
        ):  # not damage: the disk, a lock held too long
            hint = "Check that the file is readable and that no other program holds it, then run again."
        raise ValueError(f"the search storage {path} cannot be read: {_cause(error)}. {hint}") from None


def _cause(error: BaseException) -> str:
    """``Type: first line`` of what went wrong; for Optuna's StorageInternalError, of the
    database error under it (its own text guesses at an oversized write)."""
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def create_or_load_study(storage: BaseStorage, name: str, **kwargs) -> optuna.Study:
    """``optuna.create_study(load_if_exists=True)`` that does not fail when another process
    creates the same study at the same moment (it loads it instead)."""
    return _retrying(
        lambda: optuna.create_study(storage=storage, study_name=name, load_if_exists=True, **kwargs)
    )


def _retrying(make, attempts: int = 6):
    """``make()``, retried with a growing random pause on the errors of a creation race
    (a table or study another process created between our check and our insert)."""
    for attempt in range(attempts):
        try:
            return make()
        except Exception as error:
            race = isinstance(error, optuna.exceptions.DuplicatedStudyError) or any(
                text in str(error).lower()
                for text in ("already exists", "unique constraint", "database is locked", "duplicate")
            )
            if not race or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
    raise AssertionError("unreachable")


def _engine_kwargs(scheme: str) -> dict:
    if scheme == "sqlite":  # the heartbeat thread and the trial write concurrently
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def _redact(url: str) -> str:
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


def has_heartbeat(storage: BaseStorage) -> bool:
    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


def recover_interrupted(
    study: optuna.Study, driver: str | None = None, unowned_after: float | None = None
) -> int:
    """RUNNING trials left by a dead driver are failed and their parameters queued again.
    ``driver``: only the trials that driver started (its lock is ours now, so it is
    gone); None: every RUNNING trial (storages without heartbeats, where a resume means
    the previous driver is gone). ``unowned_after``: also a trial no driver has claimed
    (killed between its creation and its first step, it may have no heartbeat either, and
    would stay RUNNING for good) once it started that many seconds ago. Returns how many
    were recovered."""
    recovered = 0
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = trial.user_attrs.get("driver")
        started = trial.datetime_start or now
        unowned = (
            owner is None and unowned_after is not None and (now - started).total_seconds() > unowned_after
        )
        if driver is not None and owner != driver and not unowned:
            continue  # another worker's, perhaps alive: its heartbeat decides
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        if trial.params:  # a trial that never drew its parameters has nothing to retry
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        recovered += 1
    return recovered
