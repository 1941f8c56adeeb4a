"""Optuna sweeps: one study per sweep file, one MLflow run per trial nested under a parent run per study.

The coordinator (this process) prepares everything before any worker starts: the MLflow store, the
experiment and parent run, the recovery of trials a dead process left RUNNING, and for grid sweeps
the queue of every cell x seed not yet done. Workers then pop trials until the queue (or the trial
budget) is empty, so each trial runs exactly once however many workers there are.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tqdm.auto import tqdm

from cyclelike.data import DataError
from cyclelike.train import NonFiniteLossError

from .spec import SweepError, SweepSpec
from .tracking import RunLogger, ensure_experiment, prepare_store, provenance, tracking_uri
from .trial import run_trial

PARENT_ATTR = "mlflow_parent_run_id"
optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial says more


def default_storage_url() -> str:
    """The Optuna journal beside the MLflow store: safe for several processes on one machine."""
    uri = tracking_uri()
    folder = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else Path("mlruns")
    return str(folder / "optuna.journal")


def open_storage(url: str | None, workers: int = 1):
    url = url or default_storage_url()
    if "://" not in url:  # a journal file: one machine, any number of processes
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    if url.startswith("sqlite") and workers > 1:
        raise SweepError(f"--storage {url}: Optuna on sqlite is unsafe with several workers (trials run twice); "
                         "use a journal file (the default) or PostgreSQL")
    if url.startswith("sqlite"):
        return RDBStorage(url)
    # PostgreSQL for several machines: no process can tell another machine's live trial from a dead one,
    # so heartbeats decide, and Optuna hands each dead trial to `_killed` as it fails it
    return RDBStorage(url, heartbeat_interval=60, grace_period=180, failed_trial_callback=_killed)


def make_sampler(spec: SweepSpec, seed: int = 0) -> optuna.samplers.BaseSampler:
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    # grid: every cell is enqueued, so the sampler never draws; random draws uniformly
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "median" and not spec.multi_objective:
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=spec.eval_every)
    return optuna.pruners.NopPruner()


def config_key(params: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]


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


def load_study(spec: SweepSpec, storage, create: bool = False) -> optuna.Study:
    kwargs = dict(study_name=spec.name, storage=storage, sampler=make_sampler(spec), pruner=make_pruner(spec))
    if create:
        return optuna.create_study(directions=spec.directions, load_if_exists=True, **kwargs)
    return optuna.load_study(**kwargs)


def _retry(study: optuna.Study, trial) -> None:
    """Queue a killed trial's configuration and seed again: it did not fail, it was stopped."""
    if "config_key" in trial.user_attrs:
        study.enqueue_trial(trial.params, user_attrs={k: trial.user_attrs[k] for k in ("seed", "config_key")}
                            | {"retry_of": trial.number})


def _killed(study: optuna.Study, trial) -> None:
    """Optuna's callback for a trial it failed on a missed heartbeat: close its run, queue it again."""
    from mlflow.tracking import MlflowClient

    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        client = MlflowClient(tracking_uri())
        client.set_tag(run_id, "optuna.state", "FAIL")
        client.set_tag(run_id, "failure", "killed: its worker stopped sending heartbeats")
        client.set_terminated(run_id, "KILLED")
    _retry(study, trial)


def recover_stale(study: optuna.Study, storage, client) -> list[int]:
    """Trials left RUNNING by a process that died: FAIL them, close their MLflow runs as KILLED and
    queue their configuration again. Runs before any worker of this sweep starts."""
    if isinstance(storage, RDBStorage) and storage.heartbeat_interval:
        optuna.storages.fail_stale_trials(study)  # calls _killed for each trial it fails
        return []
    study_id = storage.get_study_id_from_name(study.study_name)
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "failure", "killed: its process died while the trial was RUNNING")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        _retry(study, t)
        recovered.append(t.number)
    # every MLflow trial run still RUNNING belongs to a dead process now
    experiment = client.get_experiment_by_name(study.study_name)
    if experiment is not None:
        stale = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING' and tags.trial != ''")
        for run in stale:
            client.set_tag(run.info.run_id, "optuna.state", "FAIL")
            client.set_tag(run.info.run_id, "failure", "killed: its process died while the trial was RUNNING")
            client.set_terminated(run.info.run_id, "KILLED")
    return recovered


def enqueue_grid(study: optuna.Study, spec: SweepSpec) -> int:
    """Queue every cell x seed that has no trial yet (a killed one was re-queued by recover_stale)."""
    done = set()
    for t in study.get_trials(deepcopy=False):
        killed = t.state == TrialState.FAIL and "killed" in t.user_attrs.get("failure", "")
        if "config_key" in t.user_attrs and not killed:
            done.add((t.user_attrs["config_key"], t.user_attrs["seed"]))
    added = 0
    for params in spec.grid_cells():
        key = config_key(params)
        for seed in spec.seeds:
            if (key, seed) not in done:
                study.enqueue_trial(params, user_attrs={"seed": seed, "config_key": key})
                added += 1
    return added


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
                     "sampler": spec.sampler, "eval_every": spec.eval_every, "pruner": spec.pruner},
                    "sweep.json")
    if spec.source and Path(spec.source).is_file():
        parent.log_file(spec.source)
    return parent.run_id


def _count_configs(study: optuna.Study) -> int:
    return len({t.user_attrs["config_key"] for t in study.get_trials(deepcopy=False) if "config_key" in t.user_attrs})


def _fail(study, trial, logger, reason: str) -> None:
    trial.set_user_attr("failure", reason[-2000:])
    logger.finish("FAILED", tags={"optuna.state": "FAIL", "failure": reason[-5000:]})
    study.tell(trial, state=TrialState.FAIL)
    tqdm.write(f"trial {trial.number:4d} FAILED: {reason.splitlines()[-1] if reason else ''}")


def run_one(study: optuna.Study, ctx: Context, client) -> None:
    spec = ctx.spec
    trial = study.ask()
    params = spec.suggest(trial)
    if "config_key" not in trial.user_attrs:
        if spec.sampler == "grid":  # another worker took the last queued cell between our check and ask
            trial.set_user_attr("spurious", True)
            study.tell(trial, state=TrialState.FAIL)
            return
        key = config_key(params)
        trial.set_user_attr("config_key", key)
        trial.set_user_attr("seed", spec.seeds[0])
        for seed in spec.seeds[1:]:  # the same configuration again with each other seed
            study.enqueue_trial(params, user_attrs={"seed": seed, "config_key": key})
    seed = trial.user_attrs["seed"]
    config = spec.config_for(params, seed)
    if config.threads == 0:
        config = config.replace(threads=ctx.threads)
    logger = RunLogger.start(client, ctx.experiment_id, f"trial-{trial.number:04d}", parent_run_id=ctx.parent_run_id,
                             tags={"study": spec.name, "trial": trial.number, "seed": seed,
                                   "config_key": trial.user_attrs["config_key"], "optuna.state": "RUNNING"})
    trial.set_user_attr("mlflow_run_id", logger.run_id)

    def report(epoch: int, metrics: dict[str, float]) -> bool:
        if spec.multi_objective or spec.pruner == "none":
            return False
        value = metrics.get(spec.objectives[0], float("nan"))
        if value == value:
            trial.report(value, epoch)
        return trial.should_prune()

    try:
        outcome = run_trial(config, logger, spec.eval_every, report, desc=f"trial-{trial.number:04d}")
    except KeyboardInterrupt:
        # stopped, not failed: the next invocation runs this configuration again
        trial.set_user_attr("failure", "killed: interrupted")
        logger.finish("KILLED", tags={"optuna.state": "FAIL", "failure": "killed: interrupted"})
        study.tell(trial, state=TrialState.FAIL)
        _retry(study, trial)
        raise
    except (NonFiniteLossError, DataError) as err:
        return _fail(study, trial, logger, f"{type(err).__name__}: {err}")
    except Exception:
        return _fail(study, trial, logger, traceback.format_exc())
    # one attribute, one storage write: several per trial added up to a visible share of a short sweep
    trial.set_user_attr("timing", {**outcome.timing, "sec_per_epoch": outcome.sec_per_epoch,
                                   "invocation": ctx.invocation})
    summary = " ".join(f"{k}={v}" for k, v in params.items())
    if outcome.pruned:
        trial.set_user_attr("pruned_at_epoch", outcome.epochs_run)
        logger.finish("KILLED", tags={"optuna.state": "PRUNED", "pruned_at_epoch": outcome.epochs_run})
        study.tell(trial, state=TrialState.PRUNED)
        tqdm.write(f"trial {trial.number:4d} PRUNED at epoch {outcome.epochs_run}  {summary} seed={seed}")
        return
    values = [outcome.metrics.get(m, float("nan")) for m in spec.objectives]
    if any(v != v for v in values):
        return _fail(study, trial, logger, f"objective {spec.objectives} is NaN for scheme={config.scheme} "
                                           "(a metric this scheme does not define)")
    logger.finish("FINISHED", tags={"optuna.state": "COMPLETE"})
    study.tell(trial, values)
    scores = " ".join(f"{m}={v:.3f}" for m, v in zip(spec.objectives, values, strict=True))
    tqdm.write(f"trial {trial.number:4d} COMPLETE {scores}  {outcome.sec_per_epoch:.3f} s/epoch  {summary} seed={seed}")


def worker_loop(ctx: Context, counter=None) -> None:
    """Pop and run trials until the queue or the budget is empty."""
    torch.set_num_threads(ctx.threads)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    study = load_study(ctx.spec, open_storage(ctx.storage_url))
    spec = ctx.spec
    while True:
        if ctx.deadline and time.time() > ctx.deadline:
            break
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not waiting and (spec.sampler == "grid" or (spec.trials and _count_configs(study) >= spec.trials)):
            break
        if counter is not None:
            with counter.get_lock():
                if ctx.max_trials and counter.value >= ctx.max_trials:
                    break
                counter.value += 1
        run_one(study, ctx, client)


def _worker_main(ctx: Context, counter) -> None:
    try:
        worker_loop(ctx, counter)
    except KeyboardInterrupt:
        pass


def run_sweep(spec: SweepSpec, storage_url: str | None = None, workers: int = 1, max_trials: int = 0) -> pd.DataFrame:
    if workers < 1:
        raise SweepError(f"--workers {workers}: expected an integer >= 1")
    t0 = time.time()
    client = prepare_store()
    experiment_id = ensure_experiment(client, spec.name)
    storage = open_storage(storage_url, workers)
    study = load_study(spec, storage, create=True)
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in spec.directions]:
        raise SweepError(f"study {spec.name!r} exists with directions {[d.name.lower() for d in study.directions]}; "
                         f"the sweep file asks for {spec.directions}: rename the study or use another --storage")
    parent_run_id = ensure_parent_run(client, study, spec, experiment_id)
    parent = RunLogger(client, parent_run_id)
    parent.set_tags(provenance())
    recovered = recover_stale(study, storage, client)
    if recovered:
        print(f"recovered trial(s) {recovered} left RUNNING by a dead process: marked FAILED and queued again")
    if spec.sampler == "grid":
        added = enqueue_grid(study, spec)
        total = len(spec.grid_cells()) * len(spec.seeds)
        print(f"study {spec.name}: grid of {total} trials ({len(spec.grid_cells())} cells x {len(spec.seeds)} seeds), "
              f"{added} queued now, {total - added} already done or queued")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    invocation = f"{int(t0)}-{os.getpid()}"
    ctx = Context(spec, storage_url, experiment_id, parent_run_id, max(1, cores // workers), invocation,
                  t0 + spec.timeout_s if spec.timeout_s else 0.0, max_trials)
    status = "FINISHED"
    try:
        counter = mp.get_context("spawn").Value("i", 0)
        if workers == 1:
            worker_loop(ctx, counter)
        else:
            procs = [mp.get_context("spawn").Process(target=_worker_main, args=(ctx, counter)) for _ in range(workers)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
    except KeyboardInterrupt:
        status = "KILLED"
        print("interrupted: the study resumes where it stopped when the same command runs again")
    finally:
        wall = time.time() - t0
        table = trials_table(load_study(spec, open_storage(storage_url)), spec)
        mine = table[table["invocation"] == invocation] if len(table) else table
        work = float(mine[["time_train_s", "time_eval_s"]].sum().sum()) if len(mine) else 0.0
        overhead = 1.0 - work / (wall * workers) if wall > 0 and len(mine) else float("nan")
        counts = table["state"].value_counts().to_dict() if len(table) else {}
        parent.log_metrics({"study/trials_complete": counts.get("COMPLETE", 0),
                            "study/trials_pruned": counts.get("PRUNED", 0),
                            "study/trials_failed": counts.get("FAIL", 0), "time/sweep_wall_s": wall,
                            "time/harness_overhead": overhead}, step=int(t0))
        parent.finish(status, tags={"workers": workers, "last_invocation": invocation})
    table.attrs.update(wall_s=wall, harness_overhead=overhead, trials_this_run=len(mine))
    return table


def trials_table(study: optuna.Study, spec: SweepSpec) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("spurious"):
            continue
        row = {"trial": t.number, "state": t.state.name, "seed": t.user_attrs.get("seed"), **t.params}
        for i, m in enumerate(spec.objectives):
            row[m] = t.values[i] if t.values else float("nan")
        timing = t.user_attrs.get("timing", {})
        row["sec_per_epoch"] = timing.get("sec_per_epoch", float("nan"))
        for k in ("train_s", "eval_s", "total_s"):
            row[f"time_{k}"] = timing.get(k, 0.0)
        row["invocation"] = timing.get("invocation", "")
        rows.append(row)
    return pd.DataFrame(rows)
