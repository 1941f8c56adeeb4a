"""Optuna sweeps: one study per sweep file, one MLflow run per trial nested under a parent run per study.

The coordinator (this process) prepares everything under a lock before any worker starts: the MLflow
store, the experiment and parent run, the recovery of trials whose owner died, and the queue of every
(condition, seed) not yet done. Workers then pop trials until the queue (or the trial budget) is empty.

A condition is its whole RunConfig except the seed (and how it is executed); each (condition, seed)
runs once. A trial is failed as stale only when its owner is known dead: the same host and a dead
process, or a lease (a timestamp the owner refreshes) older than a grace period.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import multiprocessing as mp
import os
import socket
import sys
import threading
import time
import traceback
import uuid
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from analysis.store import first_line, optuna_storage, safe_url, sqlite_path, tracking_uri
from cyclelike.config import ConfigError, DataError, NonFiniteLossError, RunConfig
from cyclelike.fused import check_fusable
from cyclelike.train import timed_text

from . import autotune
from .spec import SweepError, SweepSpec
from .tracking import RunLogger, ensure_experiment, file_lock, prepare_store, provenance
from .trial import CHECKPOINT_DIR, CHECKPOINT_S, run_trial, run_trials_fused

PARENT_ATTR = "mlflow_parent_run_id"
LEASE_EVERY_S = 30.0
LEASE_GRACE_S = float(os.environ.get("CYCLELIKE_LEASE_GRACE_S", 300))  # another host's trial is dead past this
# RDB storages (PostgreSQL, many machines): Optuna's heartbeat, which this harness sends for its ask/tell trials
HEARTBEAT_S = int(os.environ.get("CYCLELIKE_HEARTBEAT_S", 60))
HEARTBEAT_GRACE_S = int(os.environ.get("CYCLELIKE_HEARTBEAT_GRACE_S", 180))
HOST = socket.gethostname()
KILLED_STALE = "killed: its worker stopped sending heartbeats"
TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)  # needs no new trial
optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial says more
# heartbeats and fail_stale_trials are marked experimental in Optuna; they are what the RDB path relies on
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# this harness sends the heartbeats study.optimize would (see `lease`); said once per trial, it buried our lines
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run" links, twice per trial


def open_storage(url: str | None, workers: int = 1):
    url = optuna_storage(url)
    if "://" not in url:  # a journal file: one machine, any number of processes
        path = Path(url)
        if path.is_dir():
            raise SweepError(f"--storage {url}: is a folder; give a journal file (e.g. {path / 'optuna.journal'}) "
                             "or a database URL")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(url))
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
        # so heartbeats decide, and Optuna hands each dead trial to `_killed` as it fails it
        return HeartbeatStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=HEARTBEAT_GRACE_S,
                                heartbeat_stale_trial_callback=_killed)
    except Exception as err:  # SQLAlchemy and the drivers raise many types for a bad URL or a server that is down
        raise SweepError(f"--storage {safe_url(url)}: cannot open it: {first_line(err)}") from None


class HeartbeatStorage(RDBStorage):
    """Optuna's RDB storage, where a RUNNING trial that never sent a heartbeat is stale once the grace period
    has passed since it started. Optuna skips such a trial, so a worker that died between `ask` and its first
    heartbeat left it RUNNING for ever, and every other worker waiting for it."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        grace = datetime.timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval)
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
        return file_lock(Path(url + ".coordinator"))  # not ".lock": the journal backend takes that name
    if url.startswith("postgresql"):
        return advisory_lock(url)
    db = sqlite_path(tracking_uri())
    return file_lock(db.parent / ".coordinator.lock") if db is not None else contextlib.nullcontext()


@contextlib.contextmanager
def advisory_lock(url: str, key: int = 0x6379636C65):
    """A PostgreSQL advisory lock: one coordinator at a time across every machine on this database."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                         dbname=u.database, autocommit=True) as con:
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


SHORT_NAMES = {"n_images": "N", "lambda_cyc": "cyc", "lambda_l1": "l1", "lambda_adv": "adv", "lambda_id": "id",
               "base_filters": "w", "image_size": "px", "batch_size": "bs"}
NAME_ORDER = ("pairing", "direction_schedule", "scheme", "arch")


def run_name(spec: SweepSpec, params: dict[str, Any], seed: int | str) -> str:
    """What the MLflow UI lists: N and the seed first, so that they survive the UI's truncation of long names,
    then the rest of the condition, e.g. N10-s0-fixed-unet-cyc1."""
    keys = [k for k in NAME_ORDER if k in params] + sorted(k for k in params if k not in NAME_ORDER)
    parts = []
    for k in keys:
        v = params[k]
        text = f"{v:g}" if isinstance(v, float) else str(v)
        parts.append(text if isinstance(v, str) else f"{SHORT_NAMES.get(k, k)}{text}")
    lead = [p for p in parts if p.startswith("N") and p[1:].isdigit()]
    return "-".join([*lead, f"s{seed}", *[p for p in parts if p not in lead]] or [spec.name])


def config_key(config: RunConfig) -> str:
    return hashlib.sha1(json.dumps(config.condition(), sort_keys=True, default=str).encode()).hexdigest()[:10]


def load_study(spec: SweepSpec, storage, create: bool = False, worker: int = 0, history: int = 0) -> optuna.Study:
    kwargs = dict(study_name=spec.name, storage=storage, sampler=make_sampler(spec, worker, history),
                  pruner=make_pruner(spec))
    if create:
        return optuna.create_study(directions=spec.directions, load_if_exists=True, **kwargs)
    return optuna.load_study(**kwargs)


# ---------------------------------------------------------------- owners, leases and recovery


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process: a pid reused by another process has another one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_record(invocation: str) -> dict[str, Any]:
    return {"host": HOST, "pid": os.getpid(), "pid_start": _process_start(os.getpid()), "invocation": invocation}


def owner_alive(trial: FrozenTrial, now: float | None = None) -> bool:
    owner, now = trial.user_attrs.get("owner"), now or time.time()
    if owner and owner.get("host") == HOST:
        return _process_start(owner["pid"]) is not None and _process_start(owner["pid"]) == owner.get("pid_start")
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    return now - float(trial.user_attrs.get("lease", started)) < LEASE_GRACE_S


def heartbeat_enabled(storage) -> bool:
    return isinstance(storage, RDBStorage) and bool(storage.heartbeat_interval)


@contextlib.contextmanager
def lease(storage, trial_id: int):
    """Tell the storage the trial is alive while it runs: Optuna's heartbeat on an RDB storage (the thread
    `study.optimize` would run), else a lease timestamp that other hosts can read."""
    stop = threading.Event()
    beat = heartbeat_enabled(storage)
    interval = storage.heartbeat_interval if beat else LEASE_EVERY_S

    def refresh():
        while True:
            with contextlib.suppress(Exception):  # a missed refresh is retried; the grace spans several
                if beat:
                    storage.record_heartbeat(trial_id)
                else:
                    storage.set_trial_user_attr(trial_id, "lease", time.time())
            if stop.wait(interval):
                return

    thread = threading.Thread(target=refresh, daemon=True, name=f"lease-{trial_id}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


class StoreOutage(RuntimeError):
    """The tracking server or the database stopped answering, after MLflow's and the driver's own retries."""


OUTAGE_WORDS = ("Max retries exceeded", "Connection refused", "connection refused", "could not connect",
                "server closed the connection", "Connection reset", "Name or service not known", "timed out")


def is_outage(err: BaseException) -> bool:
    """Whether an error, or one it was raised from, says the store could not be reached (not bad input)."""
    import requests
    import sqlalchemy.exc

    seen = err
    while seen is not None:
        if isinstance(seen, ConnectionError | requests.exceptions.ConnectionError | requests.exceptions.Timeout
                      | sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if any(w in str(seen) for w in OUTAGE_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_killed(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and "killed" in str(trial.user_attrs.get("failure", ""))


def _retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a killed trial's condition and seed again: it did not fail, it was stopped."""
    if "config_key" in trial.user_attrs:
        keep = {k: trial.user_attrs[k] for k in ("seed", "config_key", "fixed_key") if k in trial.user_attrs}
        study.enqueue_trial(trial.params, user_attrs=keep | _resumes(trial))


def _resumes(trial: FrozenTrial) -> dict[str, Any]:
    """What a retry of a killed trial goes on from: its MLflow run, which holds the last checkpoint."""
    attrs = {"retry_of": trial.number}
    if "mlflow_run_id" in trial.user_attrs:
        attrs["resume_run"] = trial.user_attrs["mlflow_run_id"]
    return attrs


def _close_run(client, run_id: str, state: str, failure: str | None) -> None:
    if failure:
        client.set_tag(run_id, "failure", failure)
    client.set_tag(run_id, "optuna.state", state)
    status = {"COMPLETE": "FINISHED", "FAIL": "FAILED"}.get(state, "KILLED")
    client.set_terminated(run_id, "KILLED" if "killed" in (failure or "") else status)


def _killed(study: optuna.Study, trial) -> None:
    """Optuna's callback for a trial it failed on a missed heartbeat: close its run, queue it again."""
    from mlflow.tracking import MlflowClient

    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        _close_run(MlflowClient(tracking_uri()), run_id, "FAIL", KILLED_STALE)
    _retry(study, trial)


def recover_stale(study: optuna.Study, storage, client) -> list[int]:
    """Fail the RUNNING trials whose owner is dead, then close every MLflow trial run left RUNNING whose
    trial has ended (its process died between telling Optuna and closing the run)."""
    if heartbeat_enabled(storage):
        optuna.storages.fail_stale_trials(study)  # calls _killed for each trial it fails
    study_id = storage.get_study_id_from_name(study.study_name)
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if heartbeat_enabled(storage) or owner_alive(t):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "failure", "killed: its process died while the trial was RUNNING")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        recovered.append(t.number)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    experiment = client.get_experiment_by_name(study.study_name)
    if experiment is not None:
        for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING' and tags.trial != ''"):
            t = trials.get(int(run.data.tags["trial"]))
            if t is None or t.state == TrialState.RUNNING:
                continue  # a live trial, or one Optuna has not heard of yet
            _close_run(client, run.info.run_id, t.state.name, t.user_attrs.get("failure"))
    return recovered


def queue_missing(study: optuna.Study, spec: SweepSpec) -> dict[str, Any]:
    """Queue each (condition, seed) asked for that has no trial done, running or waiting: the grid's cells
    not yet run, killed trials, and failed ones up to spec.max_retries times (their cause may be gone)."""
    tried: dict[tuple[str, int], list[FrozenTrial]] = defaultdict(list)
    for t in study.get_trials(deepcopy=False):
        if "config_key" in t.user_attrs and not t.user_attrs.get("spurious"):
            tried[(t.user_attrs["config_key"], t.user_attrs["seed"])].append(t)
    wanted: dict[tuple[str, int], dict] = {}
    if spec.sampler == "grid":
        for params in spec.grid_cells():
            for seed in spec.seeds:
                wanted[(config_key(spec.config_for(params, seed)), seed)] = params
    for (key, seed), trials in tried.items():  # sampled conditions of this sweep's fixed values
        if trials[-1].user_attrs.get("fixed_key") == spec.fixed_key and not spec.sampler == "grid":
            wanted.setdefault((key, seed), trials[-1].params)
    report = {"queued": 0, "retries": 0, "exhausted": [], "changed": {}}
    for (key, seed), params in wanted.items():
        trials = tried.get((key, seed), [])
        if any(t.state in TAKEN for t in trials):
            continue
        failures = [t for t in trials if t.state == TrialState.FAIL and not _is_killed(t)]
        if len(failures) > spec.max_retries:
            report["exhausted"].append((params, seed, failures[-1].user_attrs.get("failure", "")))
            continue
        report["retries"] += bool(failures)
        resume = _resumes(trials[-1]) if trials and _is_killed(trials[-1]) else {}
        study.enqueue_trial(params, user_attrs={"seed": seed, "config_key": key, "fixed_key": spec.fixed_key,
                                                **resume})
        report["queued"] += 1
    report["changed"] = changed_fixed(study, spec)
    return report


def changed_fixed(study: optuna.Study, spec: SweepSpec) -> dict[str, tuple[Any, Any]]:
    """The fixed values this sweep file now asks for that differ from the study's earlier trials."""
    earlier = [t for t in study.get_trials(deepcopy=False) if "condition" in t.user_attrs]
    if not earlier:
        return {}
    last = earlier[-1]
    now = spec.config_for(last.params, last.user_attrs["seed"]).condition()
    return {k: (v, now.get(k)) for k, v in last.user_attrs["condition"].items() if now.get(k) != v}


def ensure_parent_run(client, study: optuna.Study, spec: SweepSpec, experiment_id: str) -> str:
    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id
        except Exception:  # deleted from MLflow: start a new parent
            pass
    parent = RunLogger.start(client, experiment_id, f"study-{spec.name}",
                             tags={"study": spec.name, "role": "study", "sampler": spec.sampler})
    study.set_user_attr(PARENT_ATTR, parent.run_id)
    space = {k: (v if isinstance(v, list) else vars(v)) for k, v in spec.space.items()}
    parent.log_dict({"fixed": spec.fixed, "space": space,
                     "seeds": spec.seeds, "objectives": spec.objectives, "directions": spec.directions,
                     "sampler": spec.sampler, "eval_every": spec.eval_every, "pruner": spec.pruner,
                     "epochs_per_image": spec.epochs_per_image},
                    "sweep.json")
    if spec.source and Path(spec.source).is_file():
        parent.log_file(spec.source)
    return parent.run_id


# ---------------------------------------------------------------- workers


@dataclass
class Context:
    spec: SweepSpec
    storage_url: str | None
    experiment_id: str
    parent_run_id: str
    threads: int
    invocation: str
    deadline: float  # 0: none
    max_trials: int  # 0: no limit for this invocation
    history: int = 0  # trials in the study when this invocation began: seeds the samplers
    progress: bool = True  # per-trial bars; off when several worker processes share the terminal
    fuse: bool = False  # the seeds of a condition train as one stacked model (cyclelike.fused)
    provenance: dict = field(default_factory=dict)  # command, commit, dirty flag, versions: on every trial run
    current: dict = field(default_factory=dict)  # the trial this process runs, for the error that names it


def _count_configs(study: optuna.Study, spec: SweepSpec) -> int:
    return len({t.user_attrs["config_key"] for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get("fixed_key") == spec.fixed_key})


def _claim(study: optuna.Study, ctx: Context):
    """Ask for a trial and give it its condition and seed; None when the draw is no new condition."""
    spec = ctx.spec
    trial = study.ask()
    if heartbeat_enabled(study._storage):  # alive from the moment it exists, not from its MLflow run
        study._storage.record_heartbeat(trial._trial_id)
    params = spec.suggest(trial)
    if "config_key" not in trial.user_attrs:
        key = config_key(spec.config_for(params, spec.seeds[0]))
        # the check of what is taken and the write of the key are one step under the coordinator lock: two
        # workers that draw the same condition at once would otherwise both see it free
        with coordinator_lock(ctx.storage_url):
            taken = {t.user_attrs.get("config_key") for t in study.get_trials(deepcopy=False)
                     if t.number != trial.number}
            # grid: another worker took the last queued cell between our check and ask; random/tpe: a repeat
            if spec.sampler == "grid" or key in taken:
                trial.set_user_attr("spurious", True)
                study.tell(trial, state=TrialState.FAIL)
                return None
            trial.set_user_attr("config_key", key)
        trial.set_user_attr("seed", spec.seeds[0])
        trial.set_user_attr("fixed_key", spec.fixed_key)
        for seed in spec.seeds[1:]:  # the same condition again with each other seed
            study.enqueue_trial(params, user_attrs={"seed": seed, "config_key": key, "fixed_key": spec.fixed_key})
    seed = trial.user_attrs["seed"]
    config = spec.config_for(params, seed)
    mine = config_key(config)
    if mine != trial.user_attrs["config_key"]:  # queued by a machine whose precision=auto resolves otherwise
        with coordinator_lock(ctx.storage_url):
            if any(t.user_attrs.get("config_key") == mine and t.user_attrs.get("seed") == seed
                   and t.state in TAKEN for t in study.get_trials(deepcopy=False) if t.number != trial.number):
                trial.set_user_attr("spurious", True)  # this machine's version of the cell is done or running
                study.tell(trial, state=TrialState.FAIL)
                return None
            trial.set_user_attr("config_key", mine)
    trial.set_user_attr("owner", owner_record(ctx.invocation))
    trial.set_user_attr("condition", config.condition())
    return trial, params, config


def _fail(study, trial, logger, reason: str) -> None:
    try:
        trial.set_user_attr("failure", reason[-2000:])
        study.tell(trial, state=TrialState.FAIL)  # Optuna first: a run closed before its trial is told is never retried
    except optuna.exceptions.UpdateFinishedTrialError:
        _superseded(trial, logger)
        return
    logger.finish("FAILED", tags={"optuna.state": "FAIL", "failure": reason[-5000:]})
    tqdm.write(f"trial {trial.number:4d} FAILED: {reason.strip().splitlines()[-1] if reason.strip() else ''}")


def _claim_group(study: optuna.Study, ctx: Context, reserve) -> list:
    """The next trial and, with fused seeds, the other seeds of its condition that wait next in the queue
    (ask() pops the oldest waiting trial; another worker may take one first, which then runs alone)."""
    first = _claim(study, ctx)
    if first is None:
        return []
    group = [first]
    key = first[0].user_attrs["config_key"]
    # a retry goes on from its own checkpoint: it runs alone (fused groups keep none)
    while ctx.fuse and len(group) < len(ctx.spec.seeds) and "resume_run" not in first[0].user_attrs:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not waiting or waiting[0].user_attrs.get("config_key") != key or "resume_run" in waiting[0].user_attrs \
                or not reserve():
            break
        claimed = _claim(study, ctx)
        if claimed is None:
            break
        group.append(claimed)
    return group


def _start(ctx: Context, client, study, trial, params, config):
    spec, seed = ctx.spec, trial.user_attrs["seed"]
    if config.threads == 0:
        config = config.replace(threads=ctx.threads)
    logger = _reopen(client, study, trial, spec) if "resume_run" in trial.user_attrs else None
    if logger is not None:
        trial.set_user_attr("mlflow_run_id", logger.run_id)
        return config, logger, _reporter(spec, trial)
    logger = RunLogger.start(client, ctx.experiment_id, run_name(spec, params, seed), parent_run_id=ctx.parent_run_id,
                             tags={"study": spec.name, "trial": trial.number, "seed": seed,
                                   "config_key": trial.user_attrs["config_key"], "optuna.state": "RUNNING",
                                   "eval_every": spec.eval_every, **ctx.provenance,
                                   # the run's description: one line, so the image cards keep their images
                                   "mlflow.note.content": f"Trial {trial.number} of study {spec.name}, seed {seed}."})
    logger.set_tags({"reproduce": f"python -m study run --from {logger.run_id}"})
    trial.set_user_attr("mlflow_run_id", logger.run_id)
    return config, logger, _reporter(spec, trial)


def _reopen(client, study: optuna.Study, trial, spec: SweepSpec) -> RunLogger | None:
    """A retry of a killed trial goes on in the killed trial's run, which holds its checkpoint and curves;
    the pruner sees the killed trial's evaluations again (as Optuna's inherit_intermediate_values does)."""
    run_id = trial.user_attrs["resume_run"]
    try:
        if not client.list_artifacts(run_id, CHECKPOINT_DIR):
            return None  # killed before its first checkpoint: a fresh start in a new run, the old one KILLED
        client.update_run(run_id, status="RUNNING")
    except Exception:  # the run was deleted: a fresh start in a new run
        return None
    killed = study.get_trials(deepcopy=False)[trial.user_attrs["retry_of"]] if "retry_of" in trial.user_attrs else None
    if killed is not None and not spec.multi_objective:
        for step, value in killed.intermediate_values.items():
            trial.report(value, step)
    resumes = int(client.get_run(run_id).data.tags.get("resumes", 0)) + 1
    logger = RunLogger(client, run_id)
    logger.set_tags({"trial": trial.number, "optuna.state": "RUNNING", "resumes": resumes})
    return logger


def _reporter(spec: SweepSpec, trial):
    def report(epoch: int, metrics: dict[str, float]) -> bool:
        if spec.multi_objective or spec.pruner == "none":
            return False
        value = metrics.get(spec.objectives[0], float("nan"))
        try:
            if value == value:
                trial.report(value, epoch)
            return trial.should_prune()
        except optuna.exceptions.UpdateFinishedTrialError:
            return True  # declared stale by another worker: stop this seed; _conclude says why

    return report


def run_one(study: optuna.Study, storage, ctx: Context, client, reserve=lambda: False) -> int:
    """Claim and run one trial, or with fused seeds the seeds of one condition as one stacked model; returns
    how many trials ran (0 when the draw was no new condition)."""
    group = _claim_group(study, ctx, reserve)
    if not group:
        return 0
    fused = len(group) > 1 and ctx.fuse
    if fused:
        try:
            check_fusable([config for _, _, config in group])
        except ConfigError:
            fused = False  # a scheme or norm that does not stack: the seeds run one after another
    if not fused and len(group) > 1:
        return sum(_run_group(study, storage, ctx, client, [member], False) for member in group)
    return _run_group(study, storage, ctx, client, group, fused)


def _run_group(study, storage, ctx: Context, client, group, fused: bool) -> int:
    spec = ctx.spec
    started = [(trial, params, *_start(ctx, client, study, trial, params, config)) for trial, params, config in group]
    ctx.current.update(number=group[0][0].number)
    study_id = storage.get_study_id_from_name(spec.name)
    try:
        with contextlib.ExitStack() as stack:
            for trial, *_ in started:
                stack.enter_context(lease(storage, storage.get_trial_id_from_study_id_trial_number(study_id,
                                                                                                   trial.number)))
            if fused:
                outcomes = run_trials_fused([c for _, _, c, _, _ in started], [lg for *_, lg, _ in started],
                                            spec.eval_every, [r for *_, r in started],
                                            desc=run_name(spec, group[0][1], "+".join(str(t.user_attrs["seed"])
                                                                                      for t, *_ in started)),
                                            progress=ctx.progress, weights=spec.weights == "all")
            else:
                trial, params, config, logger, report = started[0]
                outcomes = [run_trial(config, logger, spec.eval_every, report,
                                      desc=run_name(spec, params, trial.user_attrs["seed"]), progress=ctx.progress,
                                      weights=spec.weights == "all", checkpoint_s=CHECKPOINT_S,
                                      resume="resume_run" in trial.user_attrs and logger.run_id ==
                                      trial.user_attrs["resume_run"], keep_checkpoint=spec.keep_checkpoints)]
    except KeyboardInterrupt:
        # stopped, not failed: the next invocation runs these conditions again
        for trial, _, _, logger, _ in started:
            trial.set_user_attr("failure", "killed: interrupted")
            study.tell(trial, state=TrialState.FAIL)
            logger.finish("KILLED", tags={"optuna.state": "FAIL", "failure": "killed: interrupted"})
        raise
    except (NonFiniteLossError, DataError, ConfigError) as err:
        for trial, _, _, logger, _ in started:
            if isinstance(err, NonFiniteLossError):
                logger.pending_tags.update({"stop/reason": "diverged", "summary.stop/epoch": err.epoch})
            _fail(study, trial, logger, f"{type(err).__name__}: {err}")
        return len(started)
    except Exception as err:
        if is_outage(err):
            _stop_for_outage(study, started, err)
        for trial, _, _, logger, _ in started:
            _fail(study, trial, logger, traceback.format_exc())
        return len(started)
    finally:
        ctx.current.clear()
    for (trial, params, config, logger, _), outcome in zip(started, outcomes, strict=True):
        _conclude(study, ctx, trial, params, config, logger, outcome)
    return len(started)


def _stop_for_outage(study, started, err: BaseException) -> None:
    """The store stopped answering mid-trial: the trials are killed, not failed (no retry is used up), closed
    where the store still answers (else the next start closes them), and this worker stops."""
    reason = f"killed: the store stopped answering ({first_line(err)})"
    for trial, _, _, logger, _ in started:
        with contextlib.suppress(Exception):
            trial.set_user_attr("failure", reason)
            study.tell(trial, state=TrialState.FAIL)
        with contextlib.suppress(Exception):
            logger.finish("KILLED", tags={"optuna.state": "FAIL", "failure": reason})
    raise StoreOutage(first_line(err)) from None


def _superseded(trial, logger) -> None:
    """Another worker declared this trial stale while it ran (its heartbeats or lease lapsed): the retry it
    queued runs the condition, so this result is not counted, and the sweep goes on."""
    logger.finish("KILLED", tags={"optuna.state": "FAIL", "failure": f"{KILLED_STALE}; this result is not counted"})
    tqdm.write(f"trial {trial.number:4d} was declared stale by another worker while it ran: not counted, "
               "its retry runs it again")


def _conclude(study, ctx: Context, trial, params, config, logger, outcome) -> None:
    try:
        _tell_outcome(study, ctx, trial, params, config, logger, outcome)
    except optuna.exceptions.UpdateFinishedTrialError:
        _superseded(trial, logger)


def _tell_outcome(study, ctx: Context, trial, params, config, logger, outcome) -> None:
    spec, seed = ctx.spec, trial.user_attrs["seed"]
    if outcome.failure is not None:  # a fused seed that diverged: it fails alone, the group's others go on
        _fail(study, trial, logger, f"{type(outcome.failure).__name__}: {outcome.failure}")
        return
    # one attribute, one storage write: several per trial added up to a visible share of a short sweep
    trial.set_user_attr("timing", {**outcome.timing, "sec_per_epoch": outcome.sec_per_epoch,
                                   "invocation": ctx.invocation})
    summary = " ".join(f"{k}={v}" for k, v in params.items())
    if outcome.pruned:
        trial.set_user_attr("pruned_at_epoch", outcome.epochs_run)
        study.tell(trial, state=TrialState.PRUNED)
        logger.finish("KILLED", tags={"optuna.state": "PRUNED", "pruned_at_epoch": outcome.epochs_run})
        tqdm.write(f"trial {trial.number:4d} PRUNED at epoch {outcome.epochs_run}  {summary} seed={seed}")
        return
    values = [outcome.metrics.get(m, float("nan")) for m in spec.objectives]
    if any(v != v for v in values):
        _fail(study, trial, logger, f"objective {spec.objectives} is NaN for scheme={config.scheme} "
                                    "(a metric this scheme does not define)")
        return
    if study.tell(trial, values, skip_if_finished=True).state != TrialState.COMPLETE:
        raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial.number} ended elsewhere")
    logger.finish("FINISHED", tags={"optuna.state": "COMPLETE"})
    scores = " ".join(f"{m}={v:.3f}" for m, v in zip(spec.objectives, values, strict=True))
    ended = f"locked at epoch {outcome.epochs_run}" if outcome.stop_reason == "locked" else \
        f"budget of {outcome.epochs_run} epochs"
    tqdm.write(f"trial {trial.number:4d} COMPLETE {scores}  {ended}  "
               f"{timed_text(outcome.sec_per_epoch, config.warmup_epochs)}  {summary} seed={seed}")


def worker_loop(ctx: Context, counter=None, worker: int = 0, busy=None) -> None:
    """Pop and run trials until the queue or the budget is empty. Adds to `busy` this worker's seconds from
    its start to the end of its last trial: the worker-seconds the harness overhead is counted against (a
    slot left idle at the end of the queue is no overhead)."""
    started, ended = time.time(), []
    try:
        _work(ctx, counter, worker, ended)
    finally:
        if busy is not None and ended:
            with busy.get_lock():
                busy.value += ended[-1] - started


def _work(ctx: Context, counter, worker: int, ended: list[float]) -> None:
    torch.set_num_threads(ctx.threads)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    storage = open_storage(ctx.storage_url)
    study = load_study(ctx.spec, storage, worker=worker, history=ctx.history)
    spec = ctx.spec
    repeats = 0
    beat = heartbeat_enabled(storage)
    while repeats < 50:  # fifty repeat draws in a row: the space holds no new condition
        if ctx.deadline and time.time() > ctx.deadline:
            break
        if beat:  # as study.optimize does: a trial whose worker died (on any machine) is failed and re-queued
            optuna.storages.fail_stale_trials(study)
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not waiting and (spec.sampler == "grid" or (spec.trials and _count_configs(study, spec) >= spec.trials)):
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if beat and running:  # another worker's trial may yet go stale and come back to the queue
                time.sleep(min(10.0, storage.heartbeat_interval))
                continue
            break
        if counter is not None:
            with counter.get_lock():
                if ctx.max_trials and counter.value >= ctx.max_trials:
                    break
                counter.value += 1
        def reserve() -> bool:  # one more trial of this invocation's budget, for a fused group
            if counter is None:
                return True
            with counter.get_lock():
                if ctx.max_trials and counter.value >= ctx.max_trials:
                    return False
                counter.value += 1
                return True

        ran = run_one(study, storage, ctx, client, reserve)
        if ran:
            ended.append(time.time())
        repeats = 0 if ran else repeats + 1
        if not ran and counter is not None:
            with counter.get_lock():
                counter.value -= 1


OUTAGE_EXIT = 3  # the store (tracking server, database) stopped answering: neither bad input nor a failed trial


def _worker_main(ctx: Context, counter, worker: int, busy) -> None:
    try:
        worker_loop(ctx, counter, worker, busy)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as err:
        if not (isinstance(err, StoreOutage) or is_outage(err)):
            raise
        print(f"worker {worker}: the store stopped answering: {first_line(err)}", file=sys.stderr)
        raise SystemExit(OUTAGE_EXIT) from None


# ---------------------------------------------------------------- the sweep


class SweepFailed(RuntimeError):
    """The sweep stopped or its trials failed; the message names the trials and why. `code` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def prepare(spec: SweepSpec, storage_url: str | None, workers: int):
    """Store, study, parent run, recovery and queue, under the coordinator lock."""
    storage = open_storage(storage_url, workers)  # a bad storage fails before anything is created
    client = prepare_store()
    with coordinator_lock(storage_url):
        experiment_id = ensure_experiment(client, spec.name)
        study = load_study(spec, storage, create=True)
        if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in spec.directions]:
            raise SweepError(f"study {spec.name!r} exists with directions "
                             f"{[d.name.lower() for d in study.directions]}; the sweep file asks for "
                             f"{spec.directions}: rename the study or use another --storage")
        if study.metric_names is None:  # optuna-dashboard then says pair/forward_top1, not "Objective 0"
            study.set_metric_names(spec.objectives)
        parent_run_id = ensure_parent_run(client, study, spec, experiment_id)
        RunLogger(client, parent_run_id).set_tags(provenance())
        spec.check_study(study)
        recovered = recover_stale(study, storage, client)
        queue = queue_missing(study, spec)
    if recovered:
        print(f"recovered trial(s) {recovered} left RUNNING by a dead process: marked FAILED and queued again")
    if queue["changed"]:
        changes = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in queue["changed"].items())
        print(f"study {spec.name}: the settings differ from its earlier trials in {changes}; these conditions "
              f"are new trials of the same study (to keep them apart, rename the study in the sweep file)")
    for params, seed, reason in queue["exhausted"]:
        print(f"not retried ({spec.max_retries} retries used): {params} seed={seed}: "
              f"{reason.strip().splitlines()[-1] if reason.strip() else ''}")
    if spec.sampler == "grid":
        total = len(spec.grid_cells()) * len(spec.seeds)
        print(f"study {spec.name}: grid of {total} trials ({len(spec.grid_cells())} cells x {len(spec.seeds)} seeds), "
              f"{queue['queued']} queued now ({queue['retries']} of them retries of failed trials)")
    return client, study, experiment_id, parent_run_id


def plan(study: optuna.Study, spec: SweepSpec, max_trials: int) -> int:
    """Trials this invocation means to run: the queue (grid), or the configurations still to draw x seeds."""
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    if spec.sampler != "grid" and spec.trials:
        waiting += max(0, spec.trials - _count_configs(study, spec)) * len(spec.seeds)
    return min(waiting, max_trials) if max_trials else waiting


def estimate(study: optuna.Study, spec: SweepSpec, planned: int, threads: int, workers: int) -> str:
    """A rough time for the planned trials. An epoch's time grows with N and the pixel count, so one rate
    per image-pixel scales to every queued condition (architectures differ): from the study's finished
    trials when it has some, else from two epochs of the largest queued condition, trained here once."""
    # a queued trial's condition is in its fixed_params until a worker asks for it
    queued = [spec.config_for(t.params or t.system_attrs.get("fixed_params", {}), t.user_attrs.get("seed", 0))
              for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))] or [spec.base_config()]
    work = [c.n_images * c.image_size**2 for c in queued]
    measured = [t.user_attrs["timing"]["sec_per_epoch"] / (t.user_attrs["condition"]["n_images"]
                                                           * t.user_attrs["condition"]["image_size"] ** 2)
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "timing" in t.user_attrs and "condition" in t.user_attrs]
    if measured:
        per_unit, source = float(np.median(measured)), f"the {len(measured)} finished trial(s) of this study"
    else:
        from cyclelike.train import train

        probe = queued[work.index(max(work))].replace(epochs=2, warmup_epochs=1, threads=threads)
        try:
            per_unit = train(probe).sec_per_epoch / (probe.n_images * probe.image_size**2)
        except Exception as err:  # bad data or settings: each trial will fail and say why; the plan stands
            return f"no time estimate ({type(err).__name__}: {first_line(err)})"
        source = f"2 epochs of N={probe.n_images}, {probe.image_size} px, {probe.arch}"
    mean_epochs_work = sum(c.epochs * w for c, w in zip(queued, work, strict=True)) / len(queued)
    seconds = per_unit * mean_epochs_work * planned / workers * 1.1  # ~10% for evaluation and logging
    when = (f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60
            else f"{seconds:.0f} s")
    text = f"about {when} here (rough: scaled from {source})"
    if seconds >= 3600:
        text += ("\nwarning: this is a long study on this machine; Ctrl-C stops it and the same command resumes it, "
                 "and fewer epochs, a smaller image_size or a GPU (device=cuda) shorten it")
    return text


def overall_bar(spec: SweepSpec, storage_url: str | None, invocation: str, planned: int):
    """A bar for the whole invocation (trials done / planned, elapsed, left) above the trial's own bar; it
    follows the storage, so it counts the trials of every worker process. Returns the function that stops it."""
    if not planned:
        return lambda: None
    bar = tqdm(total=planned, desc=f"study {spec.name}", unit="trial", dynamic_ncols=True)
    stop = threading.Event()

    def follow():
        study = load_study(spec, open_storage(storage_url))
        while not stop.wait(2.0):
            with contextlib.suppress(Exception):
                done = len(_ended_here(study, invocation))
                bar.update(max(0, min(planned, done) - bar.n))

    thread = threading.Thread(target=follow, daemon=True, name="overall-progress")
    thread.start()

    def close():
        stop.set()
        thread.join(timeout=5)
        bar.close()

    return close


def execution(spec: SweepSpec, workers: int | str, fuse: str) -> tuple[int, int, bool]:
    """Worker processes, torch threads per worker and whether seeds fuse. `auto` reads this machine's cached
    measurement of the study's typical cell (measuring it once where there is none); never more threads in
    all than cores."""
    if workers != "auto" and (not isinstance(workers, int) or workers < 1):
        raise SweepError(f"--workers {workers}: expected an integer >= 1 or auto")
    if fuse not in ("auto", "on", "off"):
        raise SweepError(f"--fuse-seeds {fuse}: expected auto, on or off")
    cell = spec.config_for({}, spec.seeds[0])
    if spec.sampler == "grid":
        pins = autotune.sample_pins(spec.space)
        sample = [c for c in spec.grid_cells() if all(c[k] == v for k, v in pins.items())]
        cell = autotune.typical_cell([spec.config_for(c, spec.seeds[0]) for c in sample])
    try:
        check_fusable([cell, cell.replace(seed=cell.seed + 1)])
        fusable = len(spec.seeds) > 1
    except ConfigError:
        fusable = False
    n = autotune.cores()
    tuning = None
    if workers == "auto":
        tuning = autotune.tune(cell, spec.seeds, fusable)
    elif fuse == "auto":
        tuning = autotune.cached(cell)
    count = tuning.workers if workers == "auto" else workers
    threads = tuning.threads if workers == "auto" else max(1, n // count)
    fused = fusable and (fuse == "on" or (fuse == "auto" and tuning is not None and tuning.fuse))
    return count, threads, fused


def run_sweep(spec: SweepSpec, storage_url: str | None = None, workers: int | str = 1, max_trials: int = 0,
              probe: bool = True, fuse: str = "off") -> pd.DataFrame:
    """Run the study; returns the trials table. Raises SweepFailed, after closing everything, when the sweep
    was interrupted, a worker died, or every trial of this invocation failed."""
    workers, threads, fused = execution(spec, workers, fuse)
    t0 = time.time()
    client, study, experiment_id, parent_run_id = prepare(spec, storage_url, workers)
    invocation = f"{int(t0)}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ctx = Context(spec, storage_url, experiment_id, parent_run_id, threads, invocation,
                  t0 + spec.timeout_s if spec.timeout_s else 0.0, max_trials, len(study.trials), workers == 1,
                  fuse=fused, provenance=provenance())
    if probe:
        print(f"execution: {workers} worker(s) x {threads} torch thread(s)"
              + (f", seeds {spec.seeds} fused into one stacked model per condition" if fused else ""), flush=True)
    planned = plan(study, spec, max_trials)
    if planned and probe:
        print(f"planned: {planned} trial(s) in this invocation; {estimate(study, spec, planned, ctx.threads, workers)}",
              flush=True)
    status, problem = "FINISHED", None
    counter = mp.get_context("spawn").Value("i", 0)
    busy = mp.get_context("spawn").Value("d", 0.0)  # the workers' seconds, start to last trial's end
    overall = overall_bar(spec, storage_url, invocation, planned)
    try:
        if workers == 1:
            worker_loop(ctx, counter, busy=busy)
        else:
            procs = [mp.get_context("spawn").Process(target=_worker_main, args=(ctx, counter, k, busy))
                     for k in range(workers)]
            for p in procs:
                p.start()
            try:
                for p in procs:
                    p.join()
            except KeyboardInterrupt:
                for p in procs:  # they got the same Ctrl-C: let them close their trials
                    p.join()
                raise
            dead = [p for p in procs if p.exitcode not in (0, 130)]
            if any(p.exitcode == 130 for p in procs):
                raise KeyboardInterrupt
            if dead and all(p.exitcode == OUTAGE_EXIT for p in dead):
                raise StoreOutage("see the workers' lines above")
            if dead:
                status = "FAILED"
                problem = SweepFailed("worker process(es) " + ", ".join(f"{p.pid} (exit code {p.exitcode})"
                                                                        for p in dead) + " died")
    except KeyboardInterrupt:
        status = "KILLED"
        problem = SweepFailed("interrupted", code=130)
    except Exception as err:
        status = "FAILED"
        number = ctx.current.get("number")
        if isinstance(err, StoreOutage) or is_outage(err):
            problem = SweepFailed(f"the store stopped answering: {first_line(err)}; its trials count as killed, "
                                  "not failed: the same command resumes the study once it answers", OUTAGE_EXIT)
        else:
            problem = SweepFailed(f"the worker crashed{f' during trial {number}' if number is not None else ''}: "
                                  f"{type(err).__name__}: {err}")
    finally:
        overall()
        wall = time.time() - t0
    try:
        study, table, overhead, mine = _close_invocation(spec, storage_url, client, parent_run_id, invocation,
                                                          status, workers, t0, wall, busy.value)
    except Exception as err:
        if not is_outage(err):
            raise
        raise SweepFailed(f"{problem or 'the sweep'}; the store could not be reached to close it: "
                          f"{first_line(err)}; the next start closes its runs", OUTAGE_EXIT) from None
    table.attrs.update(wall_s=wall, harness_overhead=overhead, trials_this_run=len(mine), experiment_id=experiment_id)
    ended = _ended_here(study, invocation)
    if problem is not None:
        stopped = [t.number for t in ended if _is_killed(t)]
        raise SweepFailed(f"{problem}{f'; trial(s) {stopped} stopped' if stopped else ''}; the same command "
                          "resumes the study", problem.code)
    if not ended and len(table) and not table["state"].isin(["COMPLETE", "PRUNED", "RUNNING"]).any():
        raise SweepFailed(f"study {spec.name} has no completed trial and nothing left to run: its cells used up "
                          f"their {spec.max_retries} retries (see 'not retried' above); remove the cause, then raise "
                          "max_retries in the sweep file")
    failed = [t for t in ended if t.state == TrialState.FAIL]
    if ended and len(failed) == len(ended):
        reasons = sorted({str(t.user_attrs.get("failure", "")).strip().splitlines()[-1:][0]
                          if str(t.user_attrs.get("failure", "")).strip() else "unknown" for t in failed})
        raise SweepFailed(f"all {len(failed)} trial(s) of this invocation failed: " + "; ".join(reasons))
    return table


def _close_invocation(spec, storage_url, client, parent_run_id, invocation, status, workers, t0, wall, busy):
    """Close a crashed worker's trial, and log the invocation's counts and overhead on the parent run: the
    share of the workers' busy seconds spent outside training and evaluation."""
    storage = open_storage(storage_url)
    study = load_study(spec, storage)
    with coordinator_lock(storage_url):
        recover_stale(study, storage, client)  # a crashed worker's trial, closed now
    table = trials_table(study, spec)
    parent = RunLogger(client, parent_run_id)
    mine = table[table["invocation"] == invocation] if len(table) else table
    work = float(mine[["time_train_s", "time_eval_s"]].sum().sum()) if len(mine) else 0.0
    overhead = 1.0 - work / busy if busy > 0 and len(mine) else float("nan")
    counts = table["state"].value_counts().to_dict() if len(table) else {}
    parent.log_metrics({"study/trials_complete": counts.get("COMPLETE", 0),
                        "study/trials_pruned": counts.get("PRUNED", 0),
                        "study/trials_failed": counts.get("FAIL", 0), "time/sweep_wall_s": wall,
                        "time/harness_overhead": overhead}, step=int(t0))
    parent.finish(status, tags={"workers": workers, "last_invocation": invocation})
    return study, table, overhead, mine


def _ended_here(study: optuna.Study, invocation: str) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and not t.user_attrs.get("spurious")
            and t.user_attrs.get("owner", {}).get("invocation") == invocation]


def trials_table(study: optuna.Study, spec: SweepSpec) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("spurious") or t.state == TrialState.WAITING:
            continue
        row = {"trial": t.number, "state": t.state.name, "seed": t.user_attrs.get("seed"), **t.params}
        for i, m in enumerate(spec.objectives):
            row[m] = t.values[i] if t.values else float("nan")
        timing = t.user_attrs.get("timing", {})
        row["sec_per_epoch"] = timing.get("sec_per_epoch", float("nan"))
        for k in ("train_s", "eval_s", "total_s"):
            row[f"time_{k}"] = timing.get(k, 0.0)
        row["invocation"] = t.user_attrs.get("owner", {}).get("invocation", timing.get("invocation", ""))
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["trial", "state", "seed", "invocation", "time_train_s",
                                                         "time_eval_s", "time_total_s"])
