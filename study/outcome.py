"""What a trial answers and the finishing protocol's marks, below both the training (study.trial) and the
bookkeeping (study.ledger), so that the ledger never imports training."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .tracking import SUMMARY_PREFIX


@dataclass
class TrialOutcome:
    metrics: dict[str, float]
    sec_per_epoch: float
    epochs_run: int
    pruned: bool = False
    stop_reason: str = "budget"  # budget, locked, pruned, or diverged (a fused seed; a single run raises)
    timing: dict[str, float] = field(default_factory=dict)  # train_s, eval_s, log_s, total_s
    failure: Exception | None = None  # why a fused seed left its group without a result
    checkpointed: bool = False  # its run holds a checkpoint (drop_checkpoint removes it once the trial is told)
    resumed_from: int = 0  # the epoch of the checkpoint it went on from (0: trained from the start)


FAULT_ENV = "CYCLELIKE_FAULT"


def fault(instant: str) -> None:
    """One of the finishing protocol's named instants (study.ledger): with CYCLELIKE_FAULT=<instant> the process
    ends there as a kill would, without any cleanup (exit 137). The fault-injection tests kill sweeps this way."""
    if os.environ.get(FAULT_ENV) == instant:
        os.write(2, f"fault injected: {instant} ({FAULT_ENV}), exit 137\n".encode())
        os._exit(137)


def is_whole(tags: dict[str, str]) -> bool:
    """Whether a run holds everything it will hold: its closing batch (RunLogger.seal), the last write of a
    finished run, after its artifacts and every metric, carries these tags."""
    return "stop/reason" in tags and f"{SUMMARY_PREFIX}stop/epoch" in tags
