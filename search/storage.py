"""Where studies live, and how several workers share one without losing a trial.

Two kinds of STORAGE, both Optuna RDB storages with trial heartbeats:

* ``sqlite:///studies/hematune.db`` (the default) — workers on one machine.
  Plain SQLite fails parallel workers with "database is locked": a transaction
  that starts by reading and then wants to write cannot wait for the lock
  (SQLite reports a deadlock at once instead of using its busy timeout). Here
  every transaction starts with ``BEGIN IMMEDIATE`` — it takes the write lock
  first and waits for it up to ``SQLITE_WAIT_S`` — and the file is in WAL mode,
  so the short storage transactions of four or more workers simply queue.
  It also makes "pop a queued trial" atomic, so two workers never run the same
  retried trial. (Do not put the file on NFS: SQLite's locks do not work there.)
* ``postgresql://user:password@host/db`` — workers on several machines.

Why not Optuna's JournalStorage for local workers: in Optuna 5.0 it has no
trial heartbeats, so the trial of a worker killed with ``kill -9`` would stay
RUNNING forever and never be retried. RDB storages have them.

Heartbeats: a running trial's worker writes a heartbeat every
``HEARTBEAT_S``; a trial whose heartbeat is older than ``GRACE_S`` belongs to
a dead worker. Optuna checks before each new trial of any worker on the study,
marks such a trial FAIL and calls :class:`RetryLostTrial`, which queues its
parameters once more, recorded as a retry (``retry_of`` user attribute and
Optuna's ``failed_trial`` / ``retry_history`` system attributes).
``HEMATUNE_HEARTBEAT_S`` / ``HEMATUNE_GRACE_S`` override the two (tests use a
few seconds; the grace period must comfortably exceed the heartbeat interval).
"""
from __future__ import annotations

import importlib.util
import os
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from data_pipeline.errors import first_line
from search import (
    interrupts,  # Keras-free too
    keys,
)
from search.errors import SearchConfigError  # Keras-free, like this module

HEARTBEAT_S, GRACE_S = 20, 90
SQLITE_WAIT_S = 60  # how long a transaction waits for another worker's write lock
PG_CONNECT_TIMEOUT_S = 10  # an unreachable server fails in seconds, not minutes
MAX_RETRY = 1  # a lost or interrupted trial is run again once
CREATE_RACE_ATTEMPTS = 4


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds, with the environment's overrides."""
    values = []
    for name, default in (("HEMATUNE_HEARTBEAT_S", HEARTBEAT_S), ("HEMATUNE_GRACE_S", GRACE_S)):
        text = os.environ.get(name, "").strip()
        try:
            value = int(text) if text else default
        except ValueError:
            raise SearchConfigError(f"{name}={text}: must be a whole number of seconds") from None
        if value <= 0:
            raise SearchConfigError(f"{name}={text}: must be a positive number of seconds")
        values.append(value)
    heartbeat, grace = values
    if grace <= heartbeat:
        raise SearchConfigError(f"HEMATUNE_GRACE_S={grace} must be longer than HEMATUNE_HEARTBEAT_S={heartbeat}, "
                                "or live trials would be declared dead")
    return heartbeat, grace


def queue_retry(study: optuna.Study, number: int, params: dict, distributions: dict, history: list[int],
                reason: str, max_retry: int = MAX_RETRY) -> bool:
    """Queue trial ``number``'s parameters to run again; False once the series was retried ``max_retry`` times.

    ``history`` is the lost trial's own ``retry_history`` (the trials it retries), empty for a first try.
    """
    history = [*history, number]
    if len(history) > max_retry:
        return False
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=params, distributions=distributions,
        user_attrs={keys.RETRY_OF: number, keys.RETRY_REASON: reason, keys.RETRY_HISTORY: history},
        system_attrs={"failed_trial": history[0], "retry_history": history},  # as Optuna's retry callback
    ))
    return True


def retry_when_interrupted(objective):
    """Wrap the outermost objective: on Ctrl-C, SIGINT (or a worker's SIGTERM) the trial says why it failed
    and its parameters are queued to run first when the study resumes; Optuna then marks it FAIL."""
    def _objective(trial: optuna.Trial) -> float:
        try:
            interrupts.check()  # a Ctrl-C swallowed between trials stops here, before any training
            return objective(trial)
        except KeyboardInterrupt:
            requeued = queue_retry(trial.study, trial.number, trial.params, trial.distributions,
                                   list(trial.user_attrs.get(keys.RETRY_HISTORY, [])),
                                   f"trial {trial.number} was interrupted (Ctrl-C or SIGINT)")
            trial.set_user_attr(keys.FAIL_REASON, "interrupted (Ctrl-C or SIGINT)" + (
                "; its parameters run again first when the study resumes" if requeued else ""))
            raise
    return _objective


class RetryLostTrial:
    """Heartbeat-stale callback: the dead worker's trial runs again once, marked as a retry."""

    def __init__(self, grace_s: int, max_retry: int = MAX_RETRY):
        self.grace_s, self.max_retry = grace_s, max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        queue_retry(study, trial.number, trial.params, trial.distributions,
                    list(trial.system_attrs.get(keys.RETRY_HISTORY, [])),
                    f"trial {trial.number}'s worker sent no heartbeat for {self.grace_s}s (killed or lost)",
                    self.max_retry)


DEFAULT_DATABASE = "hematune.db"


def default_storage(studies_dir: Path | str) -> str:
    """The storage used when STORAGE= is not given: one SQLite file in the studies folder."""
    return f"sqlite:///{Path(studies_dir) / DEFAULT_DATABASE}"


def redacted(url: str) -> str:
    """The URL with its password shown as ***, for anything printed."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _with_installed_driver(parsed: URL) -> URL:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1 and psycopg2 to 2.0: use whichever is installed."""
    if parsed.drivername == "postgresql":
        for module, driver in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
            if importlib.util.find_spec(module) is not None:
                return parsed.set(drivername=driver)
    return parsed


def _tune_sqlite(storage: RDBStorage) -> None:
    """WAL journal and ``BEGIN IMMEDIATE`` transactions (see the module docstring)."""
    with storage.engine.connect() as connection:  # autocommit here: no listener yet, isolation_level None
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")

    @event.listens_for(storage.engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


STORAGE_ERRORS = (SQLAlchemyError, optuna.exceptions.StorageInternalError)


def describe_failure(exc: BaseException) -> str:
    """One line for a storage that failed mid-run (server gone, disk full): the root cause's first line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return (f"the study storage failed ({first_line(exc, 200)}); what was stored before is intact: "
            "fix the storage (server, disk space, permissions) and re-run to resume")


def open_storage(url: str) -> RDBStorage:
    """The study storage at ``url``, with heartbeats and the retry of lost trials."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SearchConfigError(f"STORAGE={url}: not a database URL; e.g. sqlite:///studies/hematune.db "
                                "or postgresql://user:password@host/db") from None
    heartbeat, grace = heartbeat_settings()
    backend = parsed.get_backend_name()
    engine_kwargs: dict = {}
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise SearchConfigError(f"STORAGE={url}: needs a file, e.g. sqlite:///studies/hematune.db "
                                    "(an in-memory database is lost when the command ends)")
        folder = Path(parsed.database).expanduser().resolve().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SearchConfigError(f"STORAGE={url}: cannot create {folder} ({exc.strerror})") from None
        # isolation_level=None: pysqlite leaves transactions to us (BEGIN IMMEDIATE, see _tune_sqlite)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_WAIT_S, "isolation_level": None}}
    elif backend == "postgresql":
        parsed = _with_installed_driver(parsed)
        engine_kwargs = {"connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT_S}, "pool_pre_ping": True}
    for attempt in range(CREATE_RACE_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9; we rely on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(parsed.render_as_string(hide_password=False), engine_kwargs=engine_kwargs,
                                     heartbeat_interval=heartbeat, grace_period=grace,
                                     heartbeat_stale_trial_callback=RetryLostTrial(grace))
            if backend == "sqlite":
                _tune_sqlite(storage)
            return storage
        except (SQLAlchemyError, ImportError, ValueError, RuntimeError) as exc:
            reason = first_line(exc)
            # two workers creating the tables of a new database at once: the loser finds them made
            if isinstance(exc, SQLAlchemyError) and attempt + 1 < CREATE_RACE_ATTEMPTS and any(
                    text in reason for text in ("already exists", "duplicate key")):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise SearchConfigError(f"STORAGE={redacted(url)}: cannot open the study database "
                                    f"({reason[:200]})") from None
    raise AssertionError("unreachable")
