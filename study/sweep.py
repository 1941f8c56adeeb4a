"""Optuna sweeps: one study per sweep file, one MLflow run per trial nested under a parent run per study.

`run_sweep` reads top-down: prepare (the store, the study, its parent run, the recovery of dead owners'
trials and the queue of every (condition, seed) not yet done, under the coordinator lock), plan, run the
workers (study.workers), summarise. What makes each (condition, seed) run once is study.ledger; the
Optuna storage and what counts as an outage, study.stores.optuna.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from analysis.store import first_line
from cyclelike.config import RunConfig

from . import autotune, preflight
from .ledger import count_configs, queue_missing, recover_stale, unrun_cells
from .processes import stop_fork_server, worker_context
from .retries import is_killed, not_rerun
from .spec import SweepSpec
from .stores.mlflow import ensure_experiment, prepare_store, set_trials_view, without_retries
from .stores.optuna import (
    OUTAGE_EXIT,
    StoreOutage,
    coordinator_lock,
    is_outage,
    load_study,
    open_storage,
    outage_reason,
)
from .tracking import RunLogger, name_order, provenance
from .workers import Context, repair_hollow, worker_loop, worker_process

PARENT_ATTR = "mlflow_parent_run_id"


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
        spec.check_study(study)  # a change the study cannot absorb is refused before its parent run reopens
        if study.metric_names is None:  # optuna-dashboard then says pair/forward_top1, not "Objective 0"
            study.set_metric_names(spec.objectives)
        if "sampler" not in study.user_attrs:
            study.set_user_attr("sampler", spec.sampler)
        parent_run_id = ensure_parent_run(client, study, spec, experiment_id)
        set_trials_view(client, experiment_id, [*sorted(spec.space, key=name_order), "seed"], spec.objectives[0],
                        spec.directions[0] == "maximize")
        RunLogger(client, parent_run_id).set_tags(provenance())
        recovered = recover_stale(study, storage, client, spec.keep_checkpoints)
        repaired = repair_hollow(study, spec, client)
        queue = queue_missing(study, spec)
    if recovered:
        print(f"recovered trial(s) {recovered} left RUNNING by a dead process: marked FAILED and queued again")
    for line in repaired:
        print(f"repaired: {line}")
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
        waiting += max(0, spec.trials - count_configs(study, spec)) * len(spec.seeds)
    return min(waiting, max_trials) if max_trials else waiting


def duration(seconds: float) -> str:
    return (f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60
            else f"{seconds:.0f} s")


def estimate(study: optuna.Study, spec: SweepSpec, planned: int, threads: int,
             workers: int) -> tuple[float, str]:
    """A rough time for the planned trials, in seconds (nan where there is none) and in words. An epoch's time
    grows with N and the pixel count, so one rate per image-pixel scales to every queued condition: from the study's
    finished trials (a timing study's at its largest N: a fixed cost per epoch inflates a small N's rate), else from
    two epochs of the largest queued condition, trained here once and counted in the plan."""
    # a queued trial's condition is in its fixed_params until a worker asks for it
    queued = [spec.config_for(t.params or t.system_attrs.get("fixed_params", {}), t.user_attrs.get("seed", 0))
              for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))] or [spec.base_config()]
    work = [c.n_images * c.image_size**2 for c in queued]
    finished = [t.user_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    done = [(a["timing"]["sec_per_epoch"], a["condition"]["n_images"] * a["condition"]["image_size"] ** 2)
            for a in finished if "timing" in a and "condition" in a]
    if spec.is_timing:  # scaled from its own largest N, which takes most of its time (probed where none finished)
        done = [d for d in done if d[1] == max([w for _, w in done] + work)]
    probe_s, measured = 0.0, [s / w for s, w in done]
    if measured:
        per_unit, source = float(np.median(measured)), f"the {len(measured)} finished trial(s) of this study"
    else:
        from cyclelike.train import train

        probe = queued[work.index(max(work))].replace(epochs=2, warmup_epochs=1, threads=threads)
        try:
            started = time.perf_counter()
            per_unit = train([probe])[0].sec_per_epoch / (probe.n_images * probe.image_size**2)
            probe_s = time.perf_counter() - started  # this invocation's time too
        except Exception as err:  # bad data or settings: each trial will fail and say why; the plan stands
            return float("nan"), f"no time estimate ({type(err).__name__}: {first_line(err)})"
        source = f"2 epochs of N={probe.n_images}, {probe.image_size} px, {probe.arch}, {duration(probe_s)} of it"
    mean_epochs_work = sum(c.epochs * w for c, w in zip(queued, work, strict=True)) / len(queued)
    seconds = probe_s + per_unit * mean_epochs_work * planned / workers * 1.1  # ~10% for evaluation and logging
    text = f"about {duration(seconds)} here (rough: scaled from {source})"
    if seconds >= 3600:
        text += ("\nwarning: this is a long study on this machine; Ctrl-C stops it and the same command resumes it, "
                 "and fewer epochs, a smaller image_size or a GPU (device=cuda) shorten it")
    return seconds, text


def took(wall_s: float, planned_s: float | None) -> str:
    """How long an invocation took beside what it planned, so that a user learns how far the estimate is off
    here (other work on the machine slows a sweep after the probe that made it)."""
    if planned_s is None or not planned_s == planned_s or planned_s <= 0:
        return duration(wall_s)
    return f"{duration(wall_s)}, planned about {duration(planned_s)} ({wall_s / planned_s:.1f}x the plan)"


def overall_bar(spec: SweepSpec, storage_url: str | None, invocation: str, planned: int):
    """A bar for the whole invocation (trials done / planned, elapsed, left) above the trial's own bar; it
    follows the storage, so it counts the trials of every worker process. Returns the function that stops it."""
    if not planned:
        return lambda: None
    bar = tqdm(total=planned, desc=f"study {spec.name}", unit="trial", dynamic_ncols=True)
    stop = threading.Event()

    def follow():
        study = None
        while not stop.wait(2.0):
            with contextlib.suppress(Exception):  # a store that stops answering: the sweep itself says so, once
                study = study or load_study(spec, open_storage(storage_url))
                done = len(_ended_here(study, invocation))
                bar.update(max(0, min(planned, done) - bar.n))

    thread = threading.Thread(target=follow, daemon=True, name="overall-progress")
    thread.start()

    def close():
        stop.set()
        thread.join(timeout=5)
        bar.close()

    return close


def run_sweep(spec: SweepSpec, storage_url: str | None = None, workers: int | str = 1, max_trials: int = 0,
              probe: bool = True, fuse: str = "off") -> pd.DataFrame:
    """Run the study; returns the trials table. Raises SweepFailed, after closing everything, when the sweep
    was interrupted, a worker died, or every trial of this invocation failed."""
    preflight.check_sweep(spec, workers)  # bad data or an N that cannot fit: said before anything is created
    workers, threads, fused = autotune.plan_workers(spec, workers, fuse)
    t0 = time.time()
    client, study, experiment_id, parent_run_id = prepare(spec, storage_url, workers)
    invocation = f"{int(t0)}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ctx = Context(spec, storage_url, experiment_id, parent_run_id, threads, invocation,
                  t0 + spec.timeout_s if spec.timeout_s else 0.0, max_trials, len(study.trials), workers == 1,
                  # runs timed beside other workers on the same cores are not fitted with runs timed alone, and the
                  # report sets each time beside the original's with the CPU or GPU that made it
                  fuse=fused, provenance={**provenance(), "timing.workers": str(workers),
                                          "timing.cpu": autotune.cpu_model(), "timing.gpu": autotune.gpu_name()})
    if probe:
        print(f"execution: {workers} worker(s) x {threads} torch thread(s)"
              + (f", seeds {spec.seeds} fused into one stacked model per condition" if fused else ""), flush=True)
    planned = plan(study, spec, max_trials)
    planned_s = None
    if planned and probe:
        planned_s, text = estimate(study, spec, planned, ctx.threads, workers)
        print(f"planned: {planned} trial(s) in this invocation; {text}", flush=True)
    status, problem, survived = "FINISHED", None, False  # survived: some worker outlived a dead one
    processes = worker_context()
    counter = processes.Value("i", 0)
    busy = processes.Value("d", 0.0)  # the workers' seconds, start to last trial's end
    overall = overall_bar(spec, storage_url, invocation, planned)
    try:
        if workers == 1:
            worker_loop(ctx, counter, busy=busy)
        else:
            sweep_alive, held = processes.Pipe(duplex=False)  # `held` stays with the sweep: see die_with_sweep
            procs = [processes.Process(target=worker_process, args=(ctx, counter, k, busy, sweep_alive))
                     for k in range(workers)]
            try:
                for p in procs:
                    p.start()
                for p in procs:
                    p.join()
            except KeyboardInterrupt:
                for p in procs:  # they got the same Ctrl-C: let them close their trials
                    if p.pid is not None:
                        p.join()
                raise
            finally:
                sweep_alive.close()
                held.close()  # a worker still running (a second Ctrl-C) ends now
                stop_fork_server()
            dead = [p for p in procs if p.exitcode not in (0, 130)]
            if any(p.exitcode == 130 for p in procs):
                raise KeyboardInterrupt
            if dead and all(p.exitcode == OUTAGE_EXIT for p in dead):
                raise StoreOutage("see the workers' lines above")
            if dead:
                status = "FAILED"
                problem = SweepFailed("worker process(es) " + ", ".join(f"{p.pid} (exit code {p.exitcode})"
                                                                        for p in dead) + " died")
                survived = len(dead) < len(procs)
    except KeyboardInterrupt:
        status = "KILLED"
        problem = SweepFailed("interrupted", code=130)
    except Exception as err:
        status = "FAILED"
        number = ctx.current.get("number")
        if isinstance(err, StoreOutage) or is_outage(err):
            problem = SweepFailed(f"the store stopped answering: {outage_reason(err)}; its trials count as killed, "
                                  "not failed: the same command resumes the study once it answers", OUTAGE_EXIT)
        else:
            problem = SweepFailed(f"the worker crashed{f' during trial {number}' if number is not None else ''}: "
                                  f"{type(err).__name__}: {err}")
    finally:
        overall()
        wall = time.time() - t0
    lost = problem is not None and problem.code == OUTAGE_EXIT
    try:
        with without_retries() if lost else contextlib.nullcontext():
            study, table, overhead, mine = _close_invocation(spec, storage_url, client, parent_run_id, invocation,
                                                              status, workers, t0, wall, busy.value)
    except Exception as err:
        if not is_outage(err):
            raise
        why = "" if lost else f": {outage_reason(err)}"
        raise SweepFailed(f"{problem or 'the sweep'}; the store could not be reached to close it{why}; the next "
                          "start closes its runs", OUTAGE_EXIT) from None
    table.attrs.update(wall_s=wall, planned_s=planned_s, harness_overhead=overhead, trials_this_run=len(mine),
                       experiment_id=experiment_id)
    ended = _ended_here(study, invocation)
    stopped = [t.number for t in ended if is_killed(t)]
    if problem is not None and survived and not not_rerun(study.trials, stopped):
        # the other workers retried what the dead one was running (from its checkpoint): nothing is lost
        client.set_terminated(parent_run_id, "FINISHED")
        rerun = f"trial(s) {stopped} ran again and finished here" if stopped else "the others ran its share"
        tqdm.write(f"warning: {problem}; {rerun}", file=sys.stderr)
        problem = None
    if problem is not None:
        raise SweepFailed(f"{problem}{f'; trial(s) {stopped} stopped' if stopped else ''}; the same command "
                          "resumes the study", problem.code)
    unrun = [] if max_trials or spec.timeout_s else unrun_cells(study, spec)
    if unrun:  # whatever the workers said: a cell without a result is lost unless someone runs it
        raise SweepFailed(f"{len(unrun)} cell(s) of the grid did not run: {'; '.join(unrun[:5])}"
                          f"{' ...' if len(unrun) > 5 else ''}; the same command runs them")
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
    share of the workers' busy seconds spent outside the training runs themselves (loading their images,
    building their networks, their epochs and evaluations)."""
    storage = open_storage(storage_url)
    study = load_study(spec, storage)
    with coordinator_lock(storage_url):
        recover_stale(study, storage, client, spec.keep_checkpoints)  # a crashed worker's trial, closed now
    table = trials_table(study, spec)
    parent = RunLogger(client, parent_run_id)
    mine = table[table["invocation"] == invocation] if len(table) else table
    work = float(mine[list(WORK_COLUMNS)].sum().sum()) if len(mine) else 0.0
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


# a trial's own work, the rest of a worker's busy seconds being the harness's: its images loaded and networks
# built, its epochs, its evaluations
WORK_COLUMNS = ("time_setup_s", "time_train_s", "time_eval_s")


def trials_table(study: optuna.Study, spec: SweepSpec) -> pd.DataFrame:
    """One row per trial that ran or runs (Optuna's trials_dataframe, without queued trials and repeat
    draws): trial, state, seed, the condition's params, the objectives, timing and the invocation."""
    columns = ["trial", "state", "seed", "invocation", *WORK_COLUMNS, "time_total_s"]
    df = study.trials_dataframe(attrs=("number", "state", "values", "params", "user_attrs"))
    if df.empty:
        return pd.DataFrame(columns=columns)
    spurious = df.get("user_attrs_spurious", pd.Series(False, index=df.index)).fillna(False).astype(bool)
    df = df[(df["state"] != "WAITING") & ~spurious]
    empty = pd.Series([{}] * len(df), index=df.index, dtype=object)
    timing = df.get("user_attrs_timing", empty).apply(lambda v: v if isinstance(v, dict) else {})
    owner = df.get("user_attrs_owner", empty).apply(lambda v: v if isinstance(v, dict) else {})
    values = [c for c in df.columns if c == "value" or c.startswith("values_")]
    table = pd.DataFrame({"trial": df["number"], "state": df["state"], "seed": df.get("user_attrs_seed")})
    params = df[[c for c in df.columns if c.startswith("params_")]].rename(columns=lambda c: c[7:])
    ints = {f.name for f in dataclasses.fields(RunConfig) if f.type in ("int", int)}
    for c in params.columns.intersection(sorted(ints)):  # N = 10, not 10.0 (queued trials' gaps made floats)
        params[c] = params[c].astype("Int64")
    table = table.join(params)
    for m, c in zip(spec.objectives, values or [None] * len(spec.objectives), strict=True):
        table[m] = df[c] if c else float("nan")
    table["sec_per_epoch"] = timing.map(lambda t: t.get("sec_per_epoch", float("nan")))
    for k in ("setup_s", "train_s", "eval_s", "total_s"):
        table[f"time_{k}"] = timing.map(lambda t, k=k: t.get(k, 0.0))
    table["invocation"] = [o.get("invocation", t.get("invocation", "")) for o, t in zip(owner, timing, strict=True)]
    return table.reset_index(drop=True)
