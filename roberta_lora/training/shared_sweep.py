"""A sweep whose Optuna study lives in a shared storage, so several `sweep` processes (on one machine or
many) work through it together: `sweep --storage URL`.

The study is filled once, by the process that creates it: one enqueued trial per grid combination, or
N parameter-free trials that Optuna's sampler fills in (`--optuna N`). Each has a *slot* (its combination
index, or its place among the N), which names its folder `<root>/trial-<slot>/`, so every trial and seed
runs exactly once and the ranked table is the one a single process would write. Workers only run enqueued
trials. A worker that is killed leaves its trial RUNNING; it is put back in the queue (same slot, same
folder: its seeds resume) once it is known dead:

* SQL storages (sqlite, PostgreSQL, MySQL): Optuna's heartbeat; a trial whose heartbeat is older than two
  intervals is failed and retried by `RetryFailedTrialCallback`.
* a journal file (`journal:PATH`, which needs a filesystem all workers see): each running trial holds an
  OS file lock beside the journal; a RUNNING trial whose lock is free has lost its worker.

A worker with no queued trial left waits while others still run theirs (it takes over a dead one), then
writes `sweep.md` / `sweep.csv` from the trials stored in the study: every worker ends with the full table.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roberta_lora.errors import ConfigError

logger = logging.getLogger(__name__)

JOURNAL = "journal:"
SQL_SCHEMES = ("sqlite", "postgresql", "mysql")
DRIVERS = {"postgresql": "psycopg (pip install 'psycopg[binary]'), or write postgresql+psycopg2://... for psycopg2",
           "mysql": "a MySQL driver (pip install pymysql, and write mysql+pymysql://...)"}
MAX_RETRIES = 3
# What a worker sees when another created the schema (or its version row) at the same moment: a table that
# already exists (every SQL dialect), a duplicate row (sqlite, PostgreSQL, MySQL / MariaDB wording).
SCHEMA_RACE = ("already exists", "UNIQUE constraint", "duplicate key", "Duplicate entry")
READY_TIMEOUT_S = 120.0


class _NoWork(Exception):
    """The trial Optuna handed out was not an enqueued one: another worker took the last queued trial."""


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, _, host = rest.partition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


def check_storage_url(url: str) -> None:
    """Refuse what is not a storage URL before anything is imported or written."""
    text = url.strip()
    if not text:
        raise ConfigError("--storage is empty: expected sqlite:///sweep.db, journal:PATH, "
                          "postgresql://user:password@host/db or mysql+pymysql://user:password@host/db")
    if text.startswith(JOURNAL):
        path = Path(text[len(JOURNAL):].removeprefix("//"))
        if not str(path).strip() or str(path) == ".":
            raise ConfigError(f"--storage {text!r}: expected journal:PATH, a file every worker can reach "
                              "(e.g. journal:/shared/sweeps/rte.log)")
        if path.is_dir():
            raise ConfigError(f"--storage {text!r}: {path} is a folder; name a journal file inside it")
        if not path.parent.is_dir():
            raise ConfigError(f"--storage {text!r}: the folder {path.parent} does not exist; create it first")
        return
    scheme = text.partition("://")[0].partition("+")[0].lower()
    if "://" not in text or scheme not in SQL_SCHEMES:
        raise ConfigError(f"--storage {mask_url(text)!r}: expected sqlite:///PATH, journal:PATH, "
                          "postgresql://... or mysql+DRIVER://... (any Optuna storage)")
    if scheme == "sqlite":
        path = Path(text.partition("://")[2].removeprefix("/"))
        if text.partition("://")[2] in ("", "/"):
            raise ConfigError(f"--storage {text!r}: expected sqlite:///PATH (three slashes, then the file)")
        if path.is_dir():
            raise ConfigError(f"--storage {text!r}: {path} is a folder; name a database file")
        if not path.parent.is_dir():
            raise ConfigError(f"--storage {text!r}: the folder {path.parent} does not exist; create it first")


def check_heartbeat(seconds: Any) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds != int(seconds) or not 1 <= seconds <= 3600:
        raise ConfigError(f"--heartbeat {seconds!r}: expected a whole number of seconds from 1 to 3600 "
                          "(a dead worker's trial is retried after two of them)")
    return int(seconds)


def open_storage(url: str, heartbeat: int) -> Any:
    """The Optuna storage for `url`; a missing driver or an unreachable server is one ConfigError."""
    import optuna

    check_storage_url(url)
    url = url.strip()
    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        path = url[len(JOURNAL):].removeprefix("//")
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(path))
        except OSError as error:
            raise ConfigError(f"--storage {url}: cannot open the journal ({error.strerror or error})") from None
    scheme = url.partition("://")[0].partition("+")[0].lower()
    try:
        return _open_rdb(optuna, url, scheme, heartbeat)
    except Exception as error:  # SQLAlchemy's errors (a bad URL, a refused connection, a wrong password), a driver
        raise _rdb_error(url, scheme, error) from None


def _open_rdb(optuna: Any, url: str, scheme: str, heartbeat: int) -> Any:
    engine = {"connect_args": {"timeout": 60}} if scheme == "sqlite" else {"pool_pre_ping": True}
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # optuna >= 4.9's name
    attempt = 0
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                callback = {"heartbeat_stale_trial_callback": retry(max_retry=MAX_RETRIES)} if retry else \
                    {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRIES)}
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                                  grace_period=2 * heartbeat, **callback)
        except Exception as error:
            # Workers starting together race to create the schema; the loser finds it made and tries again.
            text = str(error)
            if attempt == 3 or not any(sign in text for sign in SCHEMA_RACE):
                raise
            time.sleep(0.5 + attempt)
            attempt += 1


def _rdb_error(url: str, scheme: str, error: BaseException) -> ConfigError:
    password = url.partition("://")[2].split("@")[0].partition(":")[2]
    if isinstance(error, ImportError):  # SQLAlchemy's, or optuna's wrapper of it
        name = getattr(error, "name", None) or getattr(error.__cause__, "name", None) or "the driver"
        hint = DRIVERS.get(scheme, "the database's Python driver")
        return ConfigError(f"--storage {mask_url(url)}: the database driver is missing ({name}); install {hint}")
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if password:
        first = first.replace(password, "***")
    return ConfigError(f"--storage {mask_url(url)}: cannot open the study storage ({type(error).__name__}: "
                       f"{first[:300]}); check the address, the user and that the server runs")


def lock_folder(url: str, study_name: str, root: Path) -> Path:
    """Where the running trials' locks live: beside a journal (all its workers see that folder), else in
    the sweep folder."""
    import hashlib

    tag = hashlib.sha256(study_name.encode()).hexdigest()[:12]
    url = url.strip()
    if url.startswith(JOURNAL):
        journal = Path(url[len(JOURNAL):].removeprefix("//"))
        return journal.parent / f"{journal.name}.locks" / tag
    return root / ".sweep-locks" / tag


def shared_study(storage: Any, name: str, space: dict[str, Any], slots: list[dict[str, Any]],
                 sampler: Any, pruner: Any) -> Any:
    """Create and fill the study, or load the one another worker made; refuse a different sweep in it."""
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                    pruner=pruner, load_if_exists=False)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "ready" not in study.user_attrs:  # the creator is still enqueueing
            if "space" in study.user_attrs and study.user_attrs["space"] != space:
                break
            if time.monotonic() > deadline:
                raise ConfigError(f"the study {name!r} in --storage was created but never filled (its worker "
                                  "died while starting); choose another --study-name") from None
            time.sleep(0.2)
        if study.user_attrs.get("space") != space:
            raise ConfigError(f"the study {name!r} in --storage holds a sweep over {study.user_attrs.get('space')}; "
                              f"this one is over {space}: start it with the same --task / --grid / --seeds / "
                              "--optuna, or choose another --study-name") from None
        return study
    study.set_user_attr("space", space)
    for slot, params in enumerate(slots):
        study.enqueue_trial(params, user_attrs={"slot": slot})
    study.set_user_attr("ready", True)
    return study


def work_through(study: Any, storage: Any, run_slot: Callable[[Any, int, dict[str, Any]], float],
                 grid: dict[str, list[Any]], lock_dir: Path, heartbeat: int) -> None:
    """Run queued trials until none is left and no other worker still runs one."""
    import optuna
    from filelock import FileLock

    journal = isinstance(storage, optuna.storages.JournalStorage)
    lock_dir.mkdir(parents=True, exist_ok=True)

    def objective(trial: Any) -> float:
        slot = trial.user_attrs.get("slot")
        if slot is None:
            trial.set_user_attr("surplus", True)
            raise _NoWork
        params = {name: trial.suggest_categorical(name, values) for name, values in grid.items()}
        with FileLock(lock_dir / f"trial-{slot:03d}.lock"):
            return run_slot(trial, slot, params)

    waited = False
    while True:
        if journal:
            retry_dead_journal_trials(study, storage, lock_dir, grace_s=2 * heartbeat)
        else:
            with warnings.catch_warnings():  # "experimental" since optuna 2.9, once per trial otherwise
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        if optuna.trial.TrialState.WAITING in states:
            try:
                study.optimize(objective, n_trials=1, catch=())
            except _NoWork:
                pass
            continue
        running = states.count(optuna.trial.TrialState.RUNNING)
        if not running:
            return
        if not waited:
            logger.info("sweep: no queued trial left; waiting for %d trial(s) other workers run", running)
            waited = True
        time.sleep(min(heartbeat, 5))


def retry_dead_journal_trials(study: Any, storage: Any, lock_dir: Path, grace_s: float) -> None:
    """Fail and re-enqueue every RUNNING trial whose worker's lock is free (the worker died)."""
    import datetime

    import optuna
    from filelock import FileLock, Timeout

    now = datetime.datetime.now()
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        slot = trial.user_attrs.get("slot")
        started = trial.datetime_start or now
        if slot is None or (now - started).total_seconds() < grace_s:
            continue
        lock = FileLock(lock_dir / f"trial-{slot:03d}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # its worker is alive
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            if storage.get_trial(trial_id).state != optuna.trial.TrialState.RUNNING:
                continue  # another worker got here first
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            retries = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("slot") == slot) - 1
            if retries >= MAX_RETRIES:
                logger.warning("sweep: trial %d (slot %d) lost its worker %d times; not retried", trial.number,
                               slot, retries + 1)
                continue
            logger.info("sweep: trial %d (slot %d) lost its worker; queued again", trial.number, slot)
            study.add_trial(optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
                user_attrs=trial.user_attrs, system_attrs={"failed_trial": trial.number}))
        finally:
            lock.release()


def stored_rows(study: Any, row: Callable[[int, dict[str, Any], dict[str, Any]], dict[str, Any]]) -> list[dict]:
    """One row per slot whose trial completed, in slot order (the order one process would meet them)."""
    import optuna

    rows: dict[int, dict[str, Any]] = {}
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        slot = trial.user_attrs.get("slot")
        if slot is not None and "summary" in trial.user_attrs and "repeat_of" not in trial.user_attrs \
                and slot not in rows:
            rows[slot] = row(slot, trial.params, trial.user_attrs["summary"])
    return [rows[slot] for slot in sorted(rows)]
