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

import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
MAX_RETRY = 2


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


def open_storage(url: str | BaseStorage, *, heartbeat_interval: int | None = 30, grace_period: int | None = None) -> BaseStorage:
    """Open ``url`` (see storage_url) with heartbeats and retries for RDBs; clear errors otherwise."""
    if isinstance(url, BaseStorage):
        return url
    try:
        if url.startswith("journal:"):
            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        scheme = url.split("://", 1)[0].split("+", 1)[0]
        if scheme not in RDB_SCHEMES:
            raise ValueError(f"unsupported scheme {scheme!r}; use sqlite, postgresql or mysql")
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
            return RDBStorage(url, engine_kwargs=_engine_kwargs(scheme), **heartbeat)
    except Exception as error:  # SQLAlchemy / driver errors come in many types
        raise ValueError(
            f"cannot open the search storage {_redact(url)!r}: {type(error).__name__}: {error}. "
            "Check the URL, that the database server is up and reachable, and that its driver is installed "
            "(PostgreSQL: pip install psycopg2-binary)."
        ) from None


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


def recover_interrupted(study: optuna.Study) -> int:
    """For storages without heartbeats: RUNNING trials left by a dead search (resume
    means the previous driver is gone) are failed and their parameters queued again.
    Returns how many were recovered."""
    recovered = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        recovered += 1
    return recovered
