"""A worker: `objective` asks for a trial (study.ledger.claim), trains and tracks it (study.trial.run_trials) and
tells Optuna what it returned (study.ledger.conclude), until the queue or the budget is empty. Several workers run as
processes side by side. Retraining a run left hollow (`repair_hollow`) is here too: the worker is what trains.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from analysis.store import first_line, tracking_uri
from cyclelike.config import ConfigError, DataError, NonFiniteLossError, RunConfig
from cyclelike.fused import check_fusable
from cyclelike.train import timed_text

from .checkpoints import CHECKPOINT_DIR, CHECKPOINT_S, drop_checkpoint
from .ledger import claim_group, conclude, count_configs, hollow_runs, recover_dead
from .outcome import TrialOutcome
from .owners import lease, owner_alive
from .processes import die_with_sweep
from .retries import KILLED_STALE
from .spec import SweepSpec
from .stores.mlflow import Client, without_retries
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
from .tracking import RunLogger, reproduce_command, run_name, shown_params
from .trial import Report, run_trials


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


@dataclass
class Started:
    """A claimed trial whose MLflow run is open: what it trains and where it logs."""
    trial: optuna.Trial
    params: dict[str, Any]
    config: RunConfig
    logger: RunLogger
    report: Report


def objective(study: optuna.Study, storage, ctx: Context, client, reserve=lambda: False) -> int:
    """One trial, or with fused seeds the seeds of one condition as one stacked model, as Optuna's examples write
    an objective: ask (study.ledger.claim), train and track (study.trial), tell (the finishing protocol,
    study.ledger.conclude). Returns how many trials ran (0: the draw was no new condition)."""
    group = claim_group(study, ctx, reserve)
    for batch in _batches(group, ctx.fuse):
        started = [_start(ctx, client, study, trial, params, config) for trial, params, config in batch]
        outcomes = _train(study, storage, ctx, started)  # None: they failed or were killed, and are told so
        if outcomes is not None:
            for run, outcome in zip(started, outcomes, strict=True):
                _tell(study, ctx, run, outcome)
    return len(group)


def _fail(study, trial, logger, reason: str) -> None:
    try:
        trial.set_user_attr("failure", reason[-2000:])
        study.tell(trial, state=TrialState.FAIL)  # Optuna first: a run closed before its trial is told is never retried
    except optuna.exceptions.UpdateFinishedTrialError:
        _superseded(trial, logger)
        return
    logger.finish("FAILED", tags={"optuna.state": "FAIL", "failure": reason[-5000:]})
    tqdm.write(f"trial {trial.number:4d} FAILED: {reason.strip().splitlines()[-1] if reason.strip() else ''}")


def _start(ctx: Context, client, study, trial, params, config) -> Started:
    spec, seed = ctx.spec, trial.user_attrs["seed"]
    if config.threads == 0:
        config = config.replace(threads=ctx.threads)
    logger = _reopen(client, study, trial, spec) if "resume_run" in trial.user_attrs else None
    if logger is None:
        logger = RunLogger.start(client, ctx.experiment_id, run_name(spec, params, seed),
                                 parent_run_id=ctx.parent_run_id,
                                 tags={"study": spec.name, "trial": trial.number, "seed": seed,
                                       "config_key": trial.user_attrs["config_key"], "optuna.state": "RUNNING",
                                       "eval_every": spec.eval_every, **ctx.provenance,
                                       # the run's description: one line, so the image cards keep their images
                                       "mlflow.note.content": f"Trial {trial.number} of study {spec.name}, "
                                                              f"seed {seed}."},
                                 shown=shown_params(spec))
        logger.set_tags({"reproduce": reproduce_command(logger.run_id)})
    trial.set_user_attr("mlflow_run_id", logger.run_id)
    return Started(trial, params, config, logger, _reporter(spec, trial))


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
            return True  # declared stale by another worker: stop this seed; _tell says why

    return report


def _batches(group: list, fuse: bool) -> list[list]:
    """The seeds of a condition as one stacked model, or one after another where its scheme or norm does not
    stack (or seeds do not fuse)."""
    if fuse and len(group) > 1:
        try:
            check_fusable([config for _, _, config in group])
            return [group]
        except ConfigError:
            pass
    return [[member] for member in group]


def _train(study, storage, ctx: Context, started: list[Started]) -> list[TrialOutcome] | None:
    """study.trial.run_trials under each trial's lease; None where the trials failed or were killed (and are told
    so here)."""
    spec, first = ctx.spec, started[0]
    ctx.current.update(number=first.trial.number)
    study_id = storage.get_study_id_from_name(spec.name)
    try:
        with contextlib.ExitStack() as stack:
            # each epoch first asks whether the storage still takes the trial's heartbeats: a trial it lost
            # stops (an outage), instead of training on to an end it cannot tell
            alive = [stack.enter_context(lease(storage, storage.get_trial_id_from_study_id_trial_number(
                study_id, run.trial.number))).check for run in started]
            seeds = "+".join(str(run.trial.user_attrs["seed"]) for run in started)
            return run_trials([run.config for run in started], [run.logger for run in started], spec.eval_every,
                              [run.report for run in started], desc=run_name(spec, first.params, seeds),
                              progress=ctx.progress, weights=spec.weights == "all", checkpoint_s=CHECKPOINT_S,
                              resume=first.logger.run_id == first.trial.user_attrs.get("resume_run"),
                              keep_checkpoint=spec.keep_checkpoints, drop=False, alive=alive)
    except KeyboardInterrupt:
        _kill(study, started, "killed: interrupted")  # the next invocation runs these conditions again
        raise
    except (NonFiniteLossError, DataError, ConfigError) as err:
        for run in started:
            if isinstance(err, NonFiniteLossError):
                run.logger.pending_tags.update({"stop/reason": "diverged", "summary.stop/epoch": err.epoch})
            _fail(study, run.trial, run.logger, f"{type(err).__name__}: {err}")
    except Exception as err:
        if is_outage(err):
            # no retry is used up; closed where the store still answers (else the next start closes them)
            _kill(study, started, f"killed: the store stopped answering ({outage_reason(err)})", lost=True)
            raise StoreOutage(first_line(err)) from None
        for run in started:
            _fail(study, run.trial, run.logger, traceback.format_exc())
    finally:
        ctx.current.clear()
    return None


def _kill(study, started: list[Started], reason: str, lost: bool = False) -> None:
    """Stopped, not failed: the trials are failed as killed, which uses up no retry, and their runs closed as
    KILLED; with the store `lost`, as far as it still answers."""
    for run in started:
        with contextlib.suppress(Exception) if lost else contextlib.nullcontext():
            run.trial.set_user_attr("failure", reason)
            study.tell(run.trial, state=TrialState.FAIL)
        with contextlib.suppress(Exception) if lost else contextlib.nullcontext(), \
                without_retries() if lost else contextlib.nullcontext():
            run.logger.finish("KILLED", tags={"optuna.state": "FAIL", "failure": reason})


def _superseded(trial, logger) -> None:
    """Another worker declared this trial stale while it ran (its heartbeats or lease lapsed): the retry it
    queued runs the condition, so this result is not counted, and the sweep goes on."""
    logger.finish("KILLED", tags={"optuna.state": "FAIL", "failure": f"{KILLED_STALE}; this result is not counted"})
    tqdm.write(f"trial {trial.number:4d} was declared stale by another worker while it ran: not counted, "
               "its retry runs it again")


def _tell(study, ctx: Context, run: Started, outcome: TrialOutcome) -> None:
    """Tell Optuna the trial's outcome by the finishing protocol (study.ledger.conclude)."""
    try:
        _tell_outcome(study, ctx, run, outcome)
    except optuna.exceptions.UpdateFinishedTrialError:
        _superseded(run.trial, run.logger)  # its checkpoint stays: the retry queued for it may go on from there


def _tell_outcome(study, ctx: Context, run: Started, outcome: TrialOutcome) -> None:
    spec, trial, logger, seed = ctx.spec, run.trial, run.logger, run.trial.user_attrs["seed"]
    if outcome.failure is not None:  # a fused seed that diverged: it fails alone, the group's others go on
        _fail(study, trial, logger, f"{type(outcome.failure).__name__}: {outcome.failure}")
        if not spec.keep_checkpoints:
            drop_checkpoint(logger, outcome)  # a failed trial's retry starts afresh
        return
    # one attribute, one storage write: several per trial added up to a visible share of a short sweep
    trial.set_user_attr("timing", {**outcome.timing, "sec_per_epoch": outcome.sec_per_epoch,
                                   "invocation": ctx.invocation})
    cell = " ".join(f"{k}={v}" for k, v in run.params.items())
    if outcome.pruned:
        trial.set_user_attr("pruned_at_epoch", outcome.epochs_run)
        conclude(study, trial, logger, outcome, TrialState.PRUNED, None, "KILLED",
                 {"pruned_at_epoch": outcome.epochs_run}, spec.keep_checkpoints)
        tqdm.write(f"trial {trial.number:4d} PRUNED at epoch {outcome.epochs_run}  {cell} seed={seed}")
        return
    # each objective as the trial's final evaluation measured it (NaN where the scheme does not define it)
    values = [outcome.metrics.get(m, float("nan")) for m in spec.objectives]
    if any(v != v for v in values):
        _fail(study, trial, logger, f"objective {spec.objectives} is NaN for scheme={run.config.scheme} "
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
               f"{timed_text(outcome.sec_per_epoch, run.config.warmup_epochs)}  {cell} seed={seed}")


def repair_hollow(study: optuna.Study, spec: SweepSpec, client) -> list[str]:
    """Make whole the run of each COMPLETE trial that is not (study.ledger.hollow_runs): re-finished from its
    checkpoint, or retrained from epoch 0 where it has none, in the same run, which is tagged `repaired` with
    which. The trial's value stays what Optuna was told. Returns a line each."""
    said = []
    for trial, run_id in hollow_runs(study, spec, client):
        logger = RunLogger(client, run_id)
        client.update_run(run_id, status="RUNNING")
        (outcome,) = run_trials([spec.config_for(trial.params, trial.user_attrs["seed"])], [logger],
                                spec.eval_every, progress=False, weights=spec.weights == "all",
                                checkpoint_s=CHECKPOINT_S, resume=True, drop=False)
        how = f"re-finished from its checkpoint at epoch {outcome.resumed_from}" if outcome.resumed_from else \
            "retrained from epoch 0 (no checkpoint)"
        logger.finish("FINISHED", tags={"optuna.state": "COMPLETE", "repaired": how})
        if not spec.keep_checkpoints:
            drop_checkpoint(logger, outcome)
        said.append(f"trial {trial.number}'s run {run_id} was COMPLETE in Optuna but not whole: {how}")
    return said


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

    def reserve() -> bool:  # one more trial of this invocation's budget: a claim's first, or a fused seed
        if counter is None:
            return True
        with counter.get_lock():
            if ctx.max_trials and counter.value >= ctx.max_trials:
                return False
            counter.value += 1
            return True

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
        if not reserve():
            break
        ran = objective(study, storage, ctx, client, reserve)
        if ran:
            ended.append(time.time())
        repeats = 0 if ran else repeats + 1
        if not ran and counter is not None:
            with counter.get_lock():
                counter.value -= 1


def worker_process(ctx: Context, counter, worker: int, busy, sweep_alive) -> None:
    die_with_sweep(sweep_alive)
    try:
        worker_loop(ctx, counter, worker, busy)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as err:
        if not (isinstance(err, StoreOutage) or is_outage(err)):
            raise
        print(f"worker {worker}: the store stopped answering: {outage_reason(err)}", file=sys.stderr)
        raise SystemExit(OUTAGE_EXIT) from None
