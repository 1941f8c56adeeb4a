"""A worker: claim a trial (study.ledger), train and track it (study.trial), tell Optuna what it returns
(`objective`), until the queue or the budget is empty. Several workers run as processes side by side.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from analysis.store import first_line, tracking_uri
from cyclelike.config import ConfigError, DataError, NonFiniteLossError
from cyclelike.fused import check_fusable
from cyclelike.train import timed_text

from .checkpoints import CHECKPOINT_DIR, CHECKPOINT_S, drop_checkpoint
from .ledger import claim_group, conclude, count_configs, recover_dead
from .owners import lease, owner_alive
from .retries import KILLED_STALE
from .spec import SweepSpec
from .stores.mlflow import Client
from .stores.optuna import (
    OUTAGE_EXIT,
    StoreOutage,
    coordinator_lock,
    heartbeat_enabled,
    is_outage,
    load_study,
    open_storage,
    outage_reason,
)
from .tracking import RunLogger, reproduce_command
from .trial import TrialOutcome, run_trial, run_trials_fused


def objective(outcome: TrialOutcome, spec: SweepSpec) -> list[float]:
    """What a trial returns to Optuna: each of the sweep's objectives as the trial's final evaluation
    measured it (NaN where the scheme does not define it, which fails the trial)."""
    return [outcome.metrics.get(m, float("nan")) for m in spec.objectives]


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


def _fail(study, trial, logger, reason: str) -> None:
    try:
        trial.set_user_attr("failure", reason[-2000:])
        study.tell(trial, state=TrialState.FAIL)  # Optuna first: a run closed before its trial is told is never retried
    except optuna.exceptions.UpdateFinishedTrialError:
        _superseded(trial, logger)
        return
    logger.finish("FAILED", tags={"optuna.state": "FAIL", "failure": reason[-5000:]})
    tqdm.write(f"trial {trial.number:4d} FAILED: {reason.strip().splitlines()[-1] if reason.strip() else ''}")


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
                                   "mlflow.note.content": f"Trial {trial.number} of study {spec.name}, seed {seed}."},
                             shown=shown_params(spec))
    logger.set_tags({"reproduce": reproduce_command(logger.run_id)})
    trial.set_user_attr("mlflow_run_id", logger.run_id)
    return config, logger, _reporter(spec, trial)


def shown_params(spec: SweepSpec) -> tuple[str, ...]:
    """The config keys a trial's run shows as params: what its study varies (a budget per image varies epochs)."""
    varied = sorted(spec.space, key=lambda k: (NAME_ORDER.index(k) if k in NAME_ORDER else len(NAME_ORDER), k))
    return (*varied, *(("epochs",) if spec.epochs_per_image else ()))


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
    group = claim_group(study, ctx, reserve)
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
            leases = [stack.enter_context(lease(storage, storage.get_trial_id_from_study_id_trial_number(
                study_id, trial.number))) for trial, *_ in started]
            # each epoch first asks whether the storage still takes the trial's heartbeats: a trial it lost
            # stops (an outage), instead of training on to an end it cannot tell
            alive = [held.check for held in leases]
            if fused:
                outcomes = run_trials_fused([c for _, _, c, _, _ in started], [lg for *_, lg, _ in started],
                                            spec.eval_every, [report for *_, report in started],
                                            desc=run_name(spec, group[0][1], "+".join(str(t.user_attrs["seed"])
                                                                                      for t, *_ in started)),
                                            progress=ctx.progress, weights=spec.weights == "all",
                                            checkpoint_s=CHECKPOINT_S, keep_checkpoint=spec.keep_checkpoints,
                                            drop=False, alive=alive)
            else:
                trial, params, config, logger, report = started[0]
                outcomes = [run_trial(config, logger, spec.eval_every, report,
                                      desc=run_name(spec, params, trial.user_attrs["seed"]), progress=ctx.progress,
                                      weights=spec.weights == "all", checkpoint_s=CHECKPOINT_S,
                                      resume="resume_run" in trial.user_attrs and logger.run_id ==
                                      trial.user_attrs["resume_run"], keep_checkpoint=spec.keep_checkpoints,
                                      drop=False, alive=alive[0])]
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
    reason = f"killed: the store stopped answering ({outage_reason(err)})"
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
    """Tell Optuna the trial's outcome by the finishing protocol (study.ledger.conclude)."""
    try:
        _tell_outcome(study, ctx, trial, params, config, logger, outcome)
    except optuna.exceptions.UpdateFinishedTrialError:
        _superseded(trial, logger)  # its checkpoint stays: the retry queued for it may go on from there


def _tell_outcome(study, ctx: Context, trial, params, config, logger, outcome) -> None:
    spec, seed = ctx.spec, trial.user_attrs["seed"]
    if outcome.failure is not None:  # a fused seed that diverged: it fails alone, the group's others go on
        _fail(study, trial, logger, f"{type(outcome.failure).__name__}: {outcome.failure}")
        if not spec.keep_checkpoints:
            drop_checkpoint(logger, outcome)  # a failed trial's retry starts afresh
        return
    # one attribute, one storage write: several per trial added up to a visible share of a short sweep
    trial.set_user_attr("timing", {**outcome.timing, "sec_per_epoch": outcome.sec_per_epoch,
                                   "invocation": ctx.invocation})
    summary = " ".join(f"{k}={v}" for k, v in params.items())
    if outcome.pruned:
        trial.set_user_attr("pruned_at_epoch", outcome.epochs_run)
        conclude(study, trial, logger, outcome, TrialState.PRUNED, None, "KILLED",
                 {"pruned_at_epoch": outcome.epochs_run}, spec.keep_checkpoints)
        tqdm.write(f"trial {trial.number:4d} PRUNED at epoch {outcome.epochs_run}  {summary} seed={seed}")
        return
    values = objective(outcome, spec)
    if any(v != v for v in values):
        _fail(study, trial, logger, f"objective {spec.objectives} is NaN for scheme={config.scheme} "
                                    "(a metric this scheme does not define)")
        if not spec.keep_checkpoints:
            drop_checkpoint(logger, outcome)
        return
    conclude(study, trial, logger, outcome, TrialState.COMPLETE, values, "FINISHED", {}, spec.keep_checkpoints)
    scores = " ".join(f"{m}={v:.3f}" for m, v in zip(spec.objectives, values, strict=True))
    ended = {"locked": f"locked at epoch {outcome.epochs_run}",
             "collapsed": f"stopped on a collapse at epoch {outcome.epochs_run}"}.get(
        outcome.stop_reason, f"budget of {outcome.epochs_run} epochs")
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
    client = Client(tracking_uri())
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
        if not waiting and (spec.sampler == "grid" or (spec.trials and count_configs(study, spec) >= spec.trials)):
            # the queue is empty, but a trial another process runs may yet die and come back to it: a dead owner
            # here is found at once, one elsewhere when its heartbeats or lease lapse; the sweep ends when none runs
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if running:
                if not all(owner_alive(t, storage) for t in running):  # decided under the lock, where claims are
                    with coordinator_lock(ctx.storage_url):
                        if recover_dead(study, storage):
                            continue
                time.sleep(2.0 if beat else 1.0)
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


def die_with_sweep() -> None:
    """A worker process ends when its sweep does, however the sweep ends: a SIGKILL leaves the sweep no time to
    stop it, and an orphan went on finishing trials that the next start counts as killed and runs again."""
    import ctypes
    import multiprocessing
    import signal

    parent = multiprocessing.parent_process()
    if parent is None:
        return
    try:  # Linux: the kernel sends the signal as the parent dies
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # elsewhere: look every second
        def watch() -> None:
            while os.getppid() == parent.pid:
                time.sleep(1.0)
            os._exit(137)

        threading.Thread(target=watch, daemon=True, name="die-with-sweep").start()
    if os.getppid() != parent.pid:  # the sweep died before the request took
        os._exit(137)


def worker_process(ctx: Context, counter, worker: int, busy) -> None:
    die_with_sweep()
    try:
        worker_loop(ctx, counter, worker, busy)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as err:
        if not (isinstance(err, StoreOutage) or is_outage(err)):
            raise
        print(f"worker {worker}: the store stopped answering: {outage_reason(err)}", file=sys.stderr)
        raise SystemExit(OUTAGE_EXIT) from None
