"""One tracked training: train, evaluate pairing every few epochs, log everything to one MLflow run.

Used by every sweep trial and by `python -m study run`. It knows MLflow (through RunLogger) but not
Optuna: the sweep passes `report`, which sees each evaluation and answers whether to stop (prune).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from analysis.formation import formation, is_locked
from analysis.pairing import PairingResult, evaluate_pairing
from cyclelike.checkpoint import Checkpoints
from cyclelike.config import RunConfig
from cyclelike.data import Domains, shared_domains
from cyclelike.execution import resolved_tags
from cyclelike.train import EpochStats, TrainResult, Translator, train

from .artifacts import history_csv, pairing_strip, run_inputs, write_final_artifacts
from .checkpoints import drop_checkpoint, fetch_checkpoint, store_checkpoint
from .outcome import TrialOutcome, fault
from .tracking import SUMMARY_PREFIX, RunLogger

Report = Callable[[int, dict[str, float]], bool]


def log_summaries(logger: RunLogger, values: dict[str, float]) -> None:
    logger.pending_tags.update({f"{SUMMARY_PREFIX}{k}": f"{v:.6g}" for k, v in values.items()})


def _evaluate(translator: Translator, data: Domains, initial: np.ndarray | None = None):
    return evaluate_pairing(translator.forward, translator.backward, data.x, data.y, data.pi, data.x_holdout,
                            initial=initial)


class TrackedRun:
    """One run's MLflow side: evaluations during training, final metrics and artifacts. Training happens
    elsewhere (alone or fused with other seeds); this sees each epoch through `on_epoch` and the result
    through `finish`."""

    def __init__(self, config: RunConfig, logger: RunLogger, data: Domains, eval_every: int,
                 report: Report | None, weights: bool = True, resumed: bool = False,
                 alive: Callable[[], None] | None = None):
        self.config, self.logger, self.data, self.eval_every, self.report = config, logger, data, eval_every, report
        self.alive = alive  # raises once the trial's storage is lost: asked every epoch, it costs nothing
        self.weights = weights  # the generator(s) as model/G.pt: megabytes a run, so a sweep keeps them on request
        self.eval_s, self.pruned, self.locked, self.epoch = 0.0, False, False, 0
        self.stored_checkpoints = 0  # in the run's artifacts: deleted when the trial is done
        self.history: list[tuple[int, PairingResult]] = []  # every evaluation: how the pairs formed
        self.epoch_seconds: dict[int, float] = {}
        # every artifact is written here and sent with one call at the end: each MLflow call costs milliseconds
        self.staging = tempfile.TemporaryDirectory()
        self.root = Path(self.staging.name)
        for sub in ("samples", "pairing", *(("model",) if weights else ())):
            (self.root / sub).mkdir()
        self.checkpoints = tempfile.TemporaryDirectory()  # never under root, which goes to the store at the end
        # the data set a run counts as in the report: its images, not its data_seed
        logger.pending_tags.update({"data_hash": data.content_hash(), "data_hash.x": data.content_hash("x"),
                                    "data_hash.y": data.content_hash("y")})
        if resumed:  # the run has its params and datasets from before, and the steps it logged are not logged again
            logger.skip_logged()
            return
        logger.log_config({**config.to_dict(), **config.budget()})
        logger.log_inputs(run_inputs(config, data))

    def on_epoch(self, stats: EpochStats, translator: Translator) -> bool:
        if self.alive is not None:
            self.alive()
        self.epoch = stats.epoch  # the epoch a checkpoint saved next is of
        if stats.epoch == 0:  # the untrained map: the slider opens on it and the curves start from it
            if self.eval_every:
                # kept: "the initialisation decides the pairs" is a candidate explanation (pair/agree_initial)
                self._evaluated(translator, 0, None)
            return False
        self.logger.log_metrics({**stats.losses, "time/epoch_s": stats.epoch_s}, step=stats.epoch)  # sent every 10 s
        # the seed's own share of a fused epoch: a fused group's K seeds trained in that time together
        self.epoch_seconds[stats.epoch] = stats.epoch_s / stats.seeds
        if not self.eval_every or stats.epoch % self.eval_every or stats.epoch == self.config.epochs:
            return False
        result = self._evaluated(translator, stats.epoch, self.initial)
        if self.report is not None and self.report(stats.epoch, result.metrics):
            self.pruned = True
            return True
        paired = given_pair(self.config)
        both_ways = not paired and all(r.b is not None for _, r in self.history)
        self.locked = self.config.stop == "locked" and is_locked(
            [e for e, _ in self.history], [r.a for _, r in self.history],
            [r.metrics["pair/forward_top1"] for _, r in self.history], self.config.patience,
            self.config.patience_epochs, need_top1=paired,
            backward=[r.b for _, r in self.history] if both_ways else None)
        return self.locked

    def _evaluated(self, translator: Translator, epoch: int, initial: np.ndarray | None) -> PairingResult:
        """Evaluate, and log the metrics and the strip: the run page's image slider shows the pairs forming, one
        strip per evaluation (the sample grid, the original's figure, is drawn once at the end)."""
        t0 = time.perf_counter()
        result = _evaluate(translator, self.data, initial)
        self.eval_s += time.perf_counter() - t0
        self.history.append((epoch, replace(result, outputs={})))  # images would bloat each checkpoint
        self.logger.log_metrics(result.metrics, step=epoch)
        self.logger.log_image(pairing_strip(self.data, result), "pairing/strip", epoch)
        return result

    @property
    def initial(self) -> np.ndarray | None:
        """The untrained map's assignment, where epoch 0 was evaluated."""
        return self.history[0][1].a if self.history and self.history[0][0] == 0 else None

    def state(self) -> dict:
        """What a resumed run needs besides the networks: its evaluations so far, which formation reads."""
        return {"history": self.history, "epoch_seconds": self.epoch_seconds, "eval_s": self.eval_s}

    def checkpoint_plan(self, seconds: float, keep_checkpoint: bool, path: Path | None = None) -> Checkpoints:
        """Save every `seconds` of training to this run. The end saves too where that protects enough training
        to pay for itself, or where the checkpoint is kept (to train on later): a finished trial's checkpoint
        is deleted, so a short trial skips it."""
        return Checkpoints(path or Path(self.checkpoints.name) / "checkpoint.pt", seconds=seconds, extra=self.state,
                           saved=self.checkpointed, final_after=0.0 if keep_checkpoint else seconds / 10)

    def checkpointed(self, path: Path) -> None:
        """Every epoch up to the checkpoint's goes to the store before the checkpoint does: no gap on resume."""
        self.logger.flush()
        store_checkpoint(self.logger, path, self.epoch)
        self.stored_checkpoints += 1
        fault("checkpoint")

    def resume(self) -> Path | None:
        """The run's last whole checkpoint, fetched from the store and verified (study.checkpoints), with the
        evaluations it holds; None if none (killed before its first, or every one damaged): epoch 0."""
        found = fetch_checkpoint(self.logger, self.checkpoints.name, self.config)
        if found is None:
            return None
        path, state = found
        extra = state["extra"]
        self.history, self.epoch_seconds = extra["history"], extra["epoch_seconds"]
        self.eval_s = extra["eval_s"]
        self.stored_checkpoints = 1
        return path

    @property
    def stop_reason(self) -> str:
        """pruned, locked, collapsed (locked on a map with fewer distinct targets than a random map's: it stopped
        changing without forming pairs) or budget."""
        if self.pruned:
            return "pruned"
        if self.locked:
            return "collapsed" if self.history[-1][1].distinct.p_collapse < 0.05 else "locked"
        return "budget"

    def finish(self, result: TrainResult, train_s: float, started: float, setup_s: float = 0.0) -> TrialOutcome:
        """Final evaluation, summaries and artifacts of a trained run; `train_s` is its share of training time,
        `setup_s` of loading its images and building its networks."""
        logger, data = self.logger, self.data
        epoch = result.history[-1].epoch
        t0 = time.perf_counter()
        final = _evaluate(result.translator, data, self.initial)
        self.eval_s += time.perf_counter() - t0
        metrics = {**final.metrics, "time/sec_per_epoch": result.sec_per_epoch,
                   **{f"final/{k}": v for k, v in result.history[-1].losses.items()}}
        logger.log_metrics({**final.metrics, "time/sec_per_epoch": result.sec_per_epoch}, step=epoch)
        strip = pairing_strip(data, final)
        logger.log_image(strip, "pairing/strip", epoch)
        self.history.append((epoch, replace(final, outputs={})))
        formed = formation([e for e, _ in self.history], [r.a for _, r in self.history],
                           [r.metrics["pair/forward_top1"] for _, r in self.history], self.epoch_seconds)
        (self.root / "pairing" / "history.csv").write_text(history_csv(self.history))
        # one value per run is no curve: intervals, chance levels and p-values are run-level summaries (tags),
        # so the run page charts only what changes over epochs
        log_summaries(logger, {**final.statistics, "time/train_s": train_s, "time/eval_s": self.eval_s,
                         "time/setup_s": setup_s, "pair/epochs_to_90": formed.epochs_to_90,
                         "pair/epochs_to_90_after": formed.epochs_to_90_after,
                         "pair/locked_epoch": formed.locked_epoch, "pair/locked_rows": formed.locked_rows,
                         "time/seed_train_s": result.seed_seconds,
                         # until the map took the form it kept, not until the patience window had confirmed it
                         "time/seconds_to_lock": sum(t for e, t in self.epoch_seconds.items()
                                                     if e <= formed.locked_epoch)
                         if formed.locked_epoch == formed.locked_epoch else float("nan"),
                         "pair/flips": formed.flips, "time/seconds_to_pairs": formed.seconds_to_pairs,
                         "model/generator_params": generator_params(result.nets),
                         "stop/epoch": epoch, "stop/g_steps": epoch * self.config.g_steps_per_epoch()})
        logger.pending_tags["stop/reason"] = self.stop_reason
        write_final_artifacts(self.root, result, final, strip, data, epoch, self.weights,
                               self.history[0][1] if self.initial is not None else None)
        self.close()
        timing = {"train_s": train_s, "eval_s": self.eval_s, "setup_s": setup_s, "log_s": logger.log_seconds,
                  "total_s": time.perf_counter() - started}
        log_summaries(logger, {"time/log_s": logger.log_seconds, "time/trial_s": timing["total_s"]})
        logger.pending_tags.update(resolved_tags(result.config, result.device, result.precision, result.execution))
        return TrialOutcome(metrics, result.sec_per_epoch, epoch, self.pruned, self.stop_reason, timing,
                            checkpointed=self.stored_checkpoints > 0, resumed_from=result.resumed_from_epoch)

    def close(self) -> None:
        """Send whatever exists, also when training failed half-way."""
        self.checkpoints.cleanup()
        if self.staging is not None:
            try:
                self.logger.log_dir(self.root)
            finally:
                self.staging.cleanup()
                self.staging = None


def run_trials(configs: list[RunConfig], loggers: list[RunLogger], eval_every: int = 10,
               reports: list[Report | None] | None = None, desc: str = "train", progress: bool = True,
               data: Domains | None = None, weights: bool = True, checkpoint_s: float = 0.0, resume: bool = False,
               keep_checkpoint: bool = False, drop: bool = True,
               alive: list[Callable[[], None] | None] | None = None) -> list[TrialOutcome]:
    """Train and track one MLflow run per config: one seed alone, or the K seeds of one condition as one stacked
    model (cyclelike.fused), each run with its own evaluations, pruning decision and checkpoints (each seed's alone:
    a killed group's retries resume one by one). With `checkpoint_s`, each run's whole state goes to it every so many
    seconds of training; with `resume` (one seed), the run goes on from its last whole checkpoint and logs only the
    steps it does not hold yet. Each run's train_s is the group's training time over K. The checkpoints are deleted
    at the end unless kept, or unless `drop` is false: a sweep deletes them itself, once Optuna holds the trials'
    results (study.ledger)."""
    k = len(configs)
    started = time.perf_counter()
    data = data if data is not None else shared_domains(configs[0])
    data_s = (time.perf_counter() - started) / k
    reports, alive = reports or [None] * k, alive or [None] * k
    runs: list[TrackedRun] = []
    try:
        for config, logger, report, check in zip(configs, loggers, reports, alive, strict=True):
            if k > 1:  # now, not at the end: a killed group's runs resume alone, their early epoch times the group's
                logger.set_tags({"fused_group": str(k)})
            runs.append(TrackedRun(config, logger, data, eval_every, report, weights, resumed=resume, alive=check))
        plans = [run.checkpoint_plan(checkpoint_s, keep_checkpoint, run.resume() if resume else None)
                 if checkpoint_s else None for run in runs]
        results = train(configs, data, [run.on_epoch for run in runs], plans, progress=progress, desc=desc)
        fault("trained")
        # the group's epochs (as long as its longest-lived seed), shared by its K seeds
        train_s = max(r.trained_seconds for r in results) / k
        outcomes = [_finish(run, result, train_s, started, data_s + result.build_s) if result.diverged is None
                    else _diverged(run, result) for run, result in zip(runs, results, strict=True)]
        share = (time.perf_counter() - started) / k  # each run's part of the group's wall time
        for run, outcome in zip(runs, outcomes, strict=True):
            if k > 1:
                outcome.timing["total_s"] = share
                log_summaries(run.logger, {"time/trial_s": share})
            if drop and not keep_checkpoint:
                drop_checkpoint(run.logger, outcome)
        return outcomes
    finally:
        for run in runs:
            run.close()


def _finish(run: TrackedRun, result: TrainResult, train_s: float, started: float, setup_s: float) -> TrialOutcome:
    if result.resumed_from_epoch:
        run.logger.pending_tags["resumed_from_epoch"] = result.resumed_from_epoch
        if any(s.seeds > 1 for s in result.history):  # resumed alone from its fused group's checkpoint
            # the series its time is read in (analysis.dynamics) follows the epochs time/sec_per_epoch is of
            run.logger.pending_tags["fused_group"] = result.timing_seeds
    return run.finish(result, train_s, started, setup_s)


def _diverged(run: TrackedRun, result: TrainResult) -> TrialOutcome:
    """A fused seed whose losses went non-finite: tagged as a diverged single run is, and failed alone."""
    error = result.diverged
    run.logger.pending_tags.update({"stop/reason": "diverged", f"{SUMMARY_PREFIX}stop/epoch": error.epoch})
    return TrialOutcome({}, float("nan"), error.epoch, stop_reason="diverged", failure=error,
                        checkpointed=run.stored_checkpoints > 0)


def given_pair(config: RunConfig) -> bool:
    """Whether G trains towards a given partner: only then must a locked run also reach forward_top1 >= 0.9."""
    return config.pairing != "shuffled" and config.scheme != "cyclegan" and config.lambda_l1 > 0


def generator_params(nets) -> int:
    """Parameters of the translator(s): the one G of cyclelike and pix2pix, G and F of cyclegan. The range of
    one G (how many pairs it holds) is read against this number."""
    return sum(p.numel() for name in ("G", "F") if name in nets for p in nets[name].parameters())


