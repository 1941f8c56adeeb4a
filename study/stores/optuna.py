"""The Optuna side of a study: its storage (a journal file on one machine, PostgreSQL for many), the
coordinator lock, samplers and pruners, and what counts as the store being unreachable.

On PostgreSQL heartbeats decide which trial is alive: no process can tell another machine's live trial from a
dead one. HeartbeatStorage makes a trial that never sent one stale too, once its grace period is over.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import warnings
from pathlib import Path

import optuna
from filelock import FileLock
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.storages.journal._file import BaseJournalFileLock  # the base both of its locks share; not re-exported
from optuna.trial import TrialState

from analysis.store import DB_CONNECT_ARGS, first_line, optuna_storage, safe_url, sqlite_path, tracking_uri

from ..retries import KILLED_STALE, killed
from ..spec import SweepError, SweepSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial says more
# heartbeats and fail_stale_trials are marked experimental in Optuna; they are what the RDB path relies on
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# this harness sends the heartbeats study.optimize would (see owners.lease); said once per trial, it buried our lines
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run" links, twice per trial


# RDB storages (PostgreSQL, many machines): Optuna's heartbeat, which this harness sends for its ask/tell trials;
# often enough that a database gone is seen well within owners.OUTAGE_S of its last answer
HEARTBEAT_S = int(os.environ.get("CYCLELIKE_HEARTBEAT_S", 15))


HEARTBEAT_GRACE_S = int(os.environ.get("CYCLELIKE_HEARTBEAT_GRACE_S", 180))


def open_storage(url: str | None, workers: int = 1):
    url = optuna_storage(url)
    if "://" not in url:  # a journal file: one machine, any number of processes
        path = Path(url)
        if path.is_dir():
            raise SweepError(f"--storage {url}: is a folder; give a journal file (e.g. {path / 'optuna.journal'}) "
                             "or a database URL")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(url, lock_obj=JournalLock(url)))
        except OSError as err:
            raise SweepError(f"the Optuna journal {url} cannot be written ({err.strerror}); "
                             "give a writable --store DIR or --storage") from None
    if url.startswith("sqlite") and workers > 1:
        raise SweepError(f"--storage {url}: Optuna on sqlite is unsafe with several workers (trials run twice); "
                         "use a journal file (the default) or PostgreSQL")
    try:
        if url.startswith("sqlite"):
            return RDBStorage(url)
        # PostgreSQL for several machines: no process can tell another machine's live trial from a dead one,
        # so heartbeats decide, and Optuna hands each dead trial to `retries.killed` as it fails it
        return HeartbeatStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=HEARTBEAT_GRACE_S,
                                heartbeat_stale_trial_callback=killed,
                                engine_kwargs={"pool_pre_ping": True, "connect_args": db_connect_args(url)})
    except Exception as err:  # SQLAlchemy and the drivers raise many types for a bad URL or a server that is down
        raise SweepError(f"--storage {safe_url(url)}: cannot open it: {first_line(err)}") from None


class JournalLock(BaseJournalFileLock):
    """Optuna's journal lock (the symlink `<journal>.lock`, which optuna-dashboard and plain Optuna take too), taken
    under a kernel lock of this harness's own. A sweep killed while it held Optuna's left the symlink behind, and the
    next start waited out Optuna's grace period. The kernel lock ends with its holder, so whoever holds it and finds
    a symlink that a harness process made (it points at the kernel lock's file) knows that process is dead. A symlink
    another program made (it points at the journal) is waited for as Optuna waits. One machine only: flock over NFS
    may lock on one machine alone, and the journal is for one machine (open_storage)."""

    def __init__(self, journal: str, grace_period: int = 30) -> None:
        self._kernel = FileLock(journal + ".flock")
        self._optuna = JournalFileSymlinkLock(journal, grace_period)  # its release() only ever removes the symlink
        self._mark = self._optuna._lock_target_file = str(Path(journal + ".flock").resolve())

    def acquire(self) -> bool:
        self._kernel.acquire(poll_interval=0.001)  # held for one append: milliseconds
        try:
            # a plain Optuna waiting on our symlink times its grace from the mtime of what it points at
            Path(self._mark).touch()
            with contextlib.suppress(OSError):  # no symlink: nothing to clear
                if os.readlink(self._optuna._lock_file) == self._mark:
                    os.unlink(self._optuna._lock_file)
            return self._optuna.acquire()
        except BaseException:
            self._kernel.release()
            raise

    def release(self) -> None:
        try:
            self._optuna.release()
        finally:
            self._kernel.release()


def db_connect_args(url: str) -> dict:
    """The bounded timeouts of analysis.store for a PostgreSQL URL, under the URL's own (its query wins)."""
    from sqlalchemy.engine import make_url

    if not url.startswith("postgresql"):
        return {}
    return {k: v for k, v in DB_CONNECT_ARGS.items() if k not in make_url(url).query}


class HeartbeatStorage(RDBStorage):
    """Optuna's RDB storage, where a RUNNING trial that never sent a heartbeat is stale once the grace period
    has passed since it started. Optuna skips such a trial, so a worker that died between `ask` and its first
    heartbeat left it RUNNING for ever, and every other worker waiting for it."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        grace = datetime.timedelta(seconds=heartbeat_grace_s(self))
        now = datetime.datetime.now()  # Optuna stamps datetime_start with the worker's clock, as here
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            if t._trial_id not in stale and t.datetime_start and now - t.datetime_start > grace \
                    and not self._has_heartbeat(t._trial_id):
                stale.append(t._trial_id)
        for trial_id in stale:  # Optuna fails them next, without a word: the reason goes on first
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                self.set_trial_user_attr(trial_id, "failure", KILLED_STALE)
        return stale

    def _has_heartbeat(self, trial_id: int) -> bool:
        from optuna.storages._rdb import models

        session = self.scoped_session()
        try:
            return session.query(models.TrialHeartbeatModel).filter_by(trial_id=trial_id).first() is not None
        finally:
            session.close()


def coordinator_lock(storage_url: str | None):
    """One coordinator at a time per store: recovery and queueing read, then write."""
    url = optuna_storage(storage_url)
    if "://" not in url:
        return FileLock(Path(url + ".coordinator"))  # not ".lock": the journal backend takes that name
    if url.startswith("postgresql"):
        return advisory_lock(url)
    db = sqlite_path(tracking_uri())
    return FileLock(db.parent / ".coordinator.lock") if db is not None else contextlib.nullcontext()


@contextlib.contextmanager
def advisory_lock(url: str, key: int = 0x6379636C65):
    """A PostgreSQL advisory lock: one coordinator at a time across every machine on this database."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                         dbname=u.database, autocommit=True, **DB_CONNECT_ARGS) as con:
        con.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            con.execute("SELECT pg_advisory_unlock(%s)", (key,))


def make_sampler(spec: SweepSpec, worker: int = 0, history: int = 0) -> optuna.samplers.BaseSampler:
    """Each worker draws its own sequence: one seed for all would make every worker draw the same trials."""
    seed = int(hashlib.sha256(f"{spec.sampler_seed}/{worker}/{history}".encode()).hexdigest()[:8], 16)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    # grid: every cell is enqueued, so the sampler never draws; random draws uniformly
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "median" and not spec.multi_objective:
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=spec.eval_every)
    return optuna.pruners.NopPruner()


def load_study(spec: SweepSpec, storage, create: bool = False, worker: int = 0, history: int = 0) -> optuna.Study:
    kwargs = dict(study_name=spec.name, storage=storage, sampler=make_sampler(spec, worker, history),
                  pruner=make_pruner(spec))
    if create:
        return optuna.create_study(directions=spec.directions, load_if_exists=True, **kwargs)
    return optuna.load_study(**kwargs)


def heartbeat_grace_s(storage) -> float:
    """How long a trial may go without a heartbeat before it is stale: Optuna's rule (the grace period, else two
    heartbeat intervals), for the workers that fail stale trials and for the one whose heartbeats fail."""
    return storage.grace_period or 2 * storage.heartbeat_interval


def heartbeat_enabled(storage) -> bool:
    return isinstance(storage, RDBStorage) and bool(storage.heartbeat_interval)


class StoreOutage(RuntimeError):
    """The tracking server or the database stopped answering, after MLflow's and the driver's own retries."""


OUTAGE_WORDS = ("Max retries exceeded", "Connection refused", "connection refused", "could not connect",
                "server closed the connection", "Connection reset", "Connection broken", "Connection aborted",
                "RemoteDisconnected", "Name or service not known", "timed out")


def is_outage(err: BaseException) -> bool:
    """Whether an error, or one it was raised from, says the store could not be reached (not bad input)."""
    return _lost_in(err) is not None


def outage_reason(err: BaseException) -> str:
    """The line that says why the store did not answer: the deepest such error in the chain, not a wrapper's
    guess (Optuna calls a lost database "invalid data in the commit, e.g. exceeding max length")."""
    return first_line(_lost_in(err) or err)


def _lost_in(err: BaseException) -> BaseException | None:
    import http.client

    import requests
    import sqlalchemy.exc
    import urllib3

    lost = (StoreOutage, ConnectionError, http.client.HTTPException, urllib3.exceptions.ProtocolError,
            requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.ChunkedEncodingError,
            sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
    found, seen = None, err
    while seen is not None:
        if isinstance(seen, lost) or any(w in str(seen) for w in OUTAGE_WORDS):
            found = seen
        seen = seen.__cause__ or seen.__context__
    return found


OUTAGE_EXIT = 3  # the store (tracking server, database) stopped answering: neither bad input nor a failed trial
