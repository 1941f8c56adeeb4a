"""The exactly-once contract of a study, in one place. Its invariants:

- each (condition, seed) completes once: a claim makes its trial RUNNING, writes its owner, checks what is taken
  and writes its key in one step under the coordinator lock, and a condition queued or running is never queued
  again;
- a dead owner's trial is failed as killed and queued again: at once for a dead process on this host (or a trial
  left without owner), after a grace on another host (a lease on a journal, heartbeats on PostgreSQL);
- a killed trial uses up no retry; a failed one is retried up to max_retries times;
- a retry resumes from its checkpoint, in the killed trial's MLflow run, with its intermediate values;
- a retry carries its cell: it is queued with its condition's params fixed, so no sampler draws another cell;
- a sweep waits for the trials others run, and one that ends with a cell of its grid without a result (RUNNING
  included) says which and fails, whatever happened to its workers.

Finishing a trial is one ordered protocol (`conclude`), so that a kill between any two steps leaves either a
resumable trial or a whole run:
1. the run holds everything it will hold: its artifacts, then every metric in the order logged, then its
   closing tags (summaries, stop/reason) in the last batch: `trial.is_whole` reads them;
2. only then is the trial told to Optuna (COMPLETE or PRUNED);
3. then its checkpoint is deleted, only now: a tell lost to an outage leaves the retry the checkpoint to go on
   from, not epoch 0;
4. then the run is closed (FINISHED, or KILLED for a pruned one).
Killed before 2, the trial is RUNNING with a dead owner: failed as killed and resumed (at most one checkpoint
interval trained again). Killed after 2, the run is whole and RUNNING: the next start closes it and deletes the
checkpoint left in it (`recover_stale`). A COMPLETE trial whose run is not whole (left by a harness that told
Optuna first) is found at the next start (`hollow_runs`) and repaired by the layer that trains
(study.workers.repair_hollow): re-finished from its checkpoint, or retrained from epoch 0 without one, in the same
run, tagged `repaired`.
The named instants where the fault-injection tests kill a worker (CYCLELIKE_FAULT, `outcome.fault`): claimed,
checkpoint (after the first is stored), trained (after the last epoch), whole (after 1), told (after 2),
dropped (after 3).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cyclelike.config import EXECUTION_KEYS, RunConfig
from cyclelike.execution import condition, identity

from .checkpoints import CHECKPOINT_DIR, drop_checkpoint
from .outcome import TrialOutcome, fault, is_whole
from .owners import owner_alive, owner_record
from .retries import close_run, is_killed, requeue, resumes
from .spec import SweepSpec
from .stores.optuna import coordinator_lock, heartbeat_enabled
from .tracking import RunLogger

TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)  # needs no new trial


def config_key(config: RunConfig) -> str:
    return hashlib.sha1(json.dumps(identity(config), sort_keys=True, default=str).encode()).hexdigest()[:10]


def recover_dead(study: optuna.Study, storage) -> list[int]:
    """Fail as killed each RUNNING trial whose owner is dead (study.owners.owner_alive: at once on this host, past
    a grace elsewhere) and queue its retry; returns their numbers. Asked under the coordinator lock, where a claim
    writes its owner."""
    if heartbeat_enabled(storage):
        optuna.storages.fail_stale_trials(study)  # other hosts' trials past their heartbeat grace: Optuna's rule
    study_id = storage.get_study_id_from_name(study.study_name)
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if owner_alive(t, storage):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            storage.set_trial_user_attr(trial_id, "failure", "killed: its process died while the trial was RUNNING")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # failed by Optuna's stale check meanwhile, which queued its retry
        requeue(study, t)
        recovered.append(t.number)
    return recovered


def recover_stale(study: optuna.Study, storage, client, keep_checkpoints: bool = False) -> list[int]:
    """Fail the RUNNING trials whose owner is dead (recover_dead), then close every MLflow trial run left RUNNING
    whose trial has ended (its process died between telling Optuna and closing the run), without the checkpoint a
    COMPLETE or PRUNED one no longer needs."""
    recovered = recover_dead(study, storage)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    experiment = client.get_experiment_by_name(study.study_name)
    if experiment is not None:
        for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING' and tags.trial != ''"):
            t = trials.get(int(run.data.tags["trial"]))
            if t is None or t.state == TrialState.RUNNING:
                continue  # a live trial, or one Optuna has not heard of yet
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and not keep_checkpoints \
                    and client.list_artifacts(run.info.run_id, CHECKPOINT_DIR):
                RunLogger(client, run.info.run_id).delete_artifacts(CHECKPOINT_DIR)
            close_run(client, run.info.run_id, t.state.name, t.user_attrs.get("failure"))
    return recovered


def queue_missing(study: optuna.Study, spec: SweepSpec) -> dict[str, Any]:
    """Queue each (condition, seed) asked for that has no trial done, running or waiting: the grid's cells
    not yet run, killed trials, and failed ones up to spec.max_retries times (their cause may be gone)."""
    tried = _tried(study)
    wanted = dict(_grid(spec)) if spec.sampler == "grid" else {}
    for (key, seed), trials in tried.items():  # sampled conditions of this sweep's fixed values
        if trials[-1].user_attrs.get("fixed_key") == spec.fixed_key and not spec.sampler == "grid":
            wanted.setdefault((key, seed), trials[-1].params)
    report = {"queued": 0, "retries": 0, "exhausted": [], "changed": {}}
    for (key, seed), params in wanted.items():
        trials = tried.get((key, seed), [])
        if any(t.state in TAKEN for t in trials):
            continue
        failures = [t for t in trials if t.state == TrialState.FAIL and not is_killed(t)]
        if len(failures) > spec.max_retries:
            report["exhausted"].append((params, seed, failures[-1].user_attrs.get("failure", "")))
            continue
        report["retries"] += bool(failures)
        resume = resumes(trials[-1]) if trials and is_killed(trials[-1]) else {}
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
    now = condition(spec.config_for(last.params, last.user_attrs["seed"]))
    # an execution setting recorded by an older trial (the switches were in the condition then) is no change
    return {k: (v, now.get(k)) for k, v in last.user_attrs["condition"].items()
            if k not in EXECUTION_KEYS and now.get(k) != v}


def count_configs(study: optuna.Study, spec: SweepSpec) -> int:
    return len({t.user_attrs["config_key"] for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get("fixed_key") == spec.fixed_key})


def claim(study: optuna.Study, ctx):
    """Ask for a trial and give it its owner, its condition and its seed; None when the draw is no new condition.
    All of it is one step under the coordinator lock, where recovery looks: the trial is never RUNNING without
    its owner there, and one found so was left by a process that died inside this step (owners.owner_alive). The
    check of what is taken and the write of the key are in that step too: two workers that draw the same
    condition at once would otherwise both see it free."""
    spec = ctx.spec
    with coordinator_lock(ctx.storage_url):
        trial = study.ask()
        if heartbeat_enabled(study._storage):  # alive from the moment it exists, not from its MLflow run
            study._storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr("owner", owner_record(ctx.invocation))
        params = spec.suggest(trial)
        if "config_key" not in trial.user_attrs:
            key = config_key(spec.config_for(params, spec.seeds[0]))
            taken = {t.user_attrs.get("config_key") for t in study.get_trials(deepcopy=False)
                     if t.number != trial.number}
            # grid: another worker took the last queued cell between our check and ask; random/tpe: a repeat
            if spec.sampler == "grid" or key in taken:
                return _spurious(study, trial)
            trial.set_user_attr("config_key", key)
            trial.set_user_attr("seed", spec.seeds[0])
            trial.set_user_attr("fixed_key", spec.fixed_key)
            for seed in spec.seeds[1:]:  # the same condition again with each other seed
                study.enqueue_trial(params, user_attrs={"seed": seed, "config_key": key, "fixed_key": spec.fixed_key})
        seed = trial.user_attrs["seed"]
        config = spec.config_for(params, seed)
        mine = config_key(config)
        if mine != trial.user_attrs["config_key"]:  # queued by a machine whose precision=auto resolves otherwise
            if any(t.user_attrs.get("config_key") == mine and t.user_attrs.get("seed") == seed
                   and t.state in TAKEN for t in study.get_trials(deepcopy=False) if t.number != trial.number):
                return _spurious(study, trial)  # this machine's version of the cell is done or running
            trial.set_user_attr("config_key", mine)
        trial.set_user_attr("condition", condition(config))
    fault("claimed")
    return trial, params, config


def _spurious(study: optuna.Study, trial) -> None:
    trial.set_user_attr("spurious", True)
    study.tell(trial, state=TrialState.FAIL)


def claim_group(study: optuna.Study, ctx, reserve) -> list:
    """The next trial and, with fused seeds, the other seeds of its condition that wait next in the queue
    (ask() pops the oldest waiting trial; another worker may take one first, which then runs alone)."""
    first = claim(study, ctx)
    if first is None:
        return []
    group = [first]
    key = first[0].user_attrs["config_key"]
    # a retry goes on from its own checkpoint (a fused group's seeds have one each): it runs alone
    while ctx.fuse and len(group) < len(ctx.spec.seeds) and "resume_run" not in first[0].user_attrs:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not waiting or waiting[0].user_attrs.get("config_key") != key or "resume_run" in waiting[0].user_attrs \
                or not reserve():
            break
        claimed = claim(study, ctx)
        if claimed is None:
            break
        group.append(claimed)
    return group


def conclude(study: optuna.Study, trial, logger: RunLogger, outcome: TrialOutcome, state: TrialState,
             values: list[float] | None, status: str, tags: dict[str, Any], keep_checkpoint: bool) -> None:
    """The finishing protocol (the module's docstring): the run whole, Optuna told, the checkpoint deleted, the
    run closed. Raises UpdateFinishedTrialError when another worker ended the trial first (it was stale)."""
    logger.seal()
    fault("whole")
    if study.tell(trial, values, state=state, skip_if_finished=True).state != state:
        raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial.number} ended elsewhere")
    fault("told")
    if not keep_checkpoint:
        drop_checkpoint(logger, outcome)
    fault("dropped")
    logger.finish(status, tags={"optuna.state": state.name, **tags})


def hollow_runs(study: optuna.Study, spec: SweepSpec, client) -> list[tuple[FrozenTrial, str]]:
    """Each COMPLETE trial whose run is not whole (a kill after the tell of a harness that told Optuna first), with
    its run's id: study.workers.repair_hollow makes it whole."""
    experiment = client.get_experiment_by_name(spec.name)
    runs = {t.user_attrs["mlflow_run_id"]: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "mlflow_run_id" in t.user_attrs}
    if experiment is None or not runs:
        return []
    return [(runs[run.info.run_id], run.info.run_id)
            for run in client.search_runs([experiment.experiment_id], "tags.trial != ''", max_results=50_000)
            if run.info.run_id in runs and not is_whole(run.data.tags)]


def unrun_cells(study: optuna.Study, spec: SweepSpec) -> list[str]:
    """The grid's (cell, seed)s that no trial ran to an end of its own (COMPLETE, PRUNED, or FAIL with its
    reason): killed, queued, never queued, or still RUNNING (a live process elsewhere has not finished it, or a
    dead one was not yet found out). Each as `param=value ... seed=s`, and `(RUNNING)` where one runs it."""
    if spec.sampler != "grid":
        return []
    tried, unrun = _tried(study), []
    for (key, seed), params in _grid(spec):
        trials = tried.get((key, seed), [])
        if any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or t.state == TrialState.FAIL and not is_killed(t)
               for t in trials):
            continue
        running = " (RUNNING)" if any(t.state == TrialState.RUNNING for t in trials) else ""
        unrun.append(" ".join([*(f"{k}={v}" for k, v in params.items()), f"seed={seed}"]) + running)
    return unrun


def _tried(study: optuna.Study) -> dict[tuple[str, int], list[FrozenTrial]]:
    """The trials of each (condition, seed), oldest first; repeat draws are none."""
    tried: dict[tuple[str, int], list[FrozenTrial]] = defaultdict(list)
    for t in study.get_trials(deepcopy=False):
        if "config_key" in t.user_attrs and not t.user_attrs.get("spurious"):
            tried[(t.user_attrs["config_key"], t.user_attrs["seed"])].append(t)
    return tried


def _grid(spec: SweepSpec) -> list[tuple[tuple[str, int], dict[str, Any]]]:
    """Each (condition, seed) of the grid with its cell's params."""
    return [((config_key(spec.config_for(params, seed)), seed), params)
            for params in spec.grid_cells() for seed in spec.seeds]
