"""How the pairs formed over training, and the rule of stop=locked: when a run's map has held long enough to
count as its answer. Plain lists of epochs and maps in, plain values out."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Formation:
    epochs_to_90: float  # first evaluated epoch with forward_top1 >= 0.9; NaN if never
    locked_epoch: float  # the epoch from which the whole map a stays; NaN when it was not seen to stay
    flips: int  # assignment changes between consecutive evaluations, summed over i
    seconds_to_pairs: float  # training wall seconds up to epochs_to_90; NaN if never
    locked_rows: int = 0  # rows whose a(i) held at one evaluation at least after its last change
    # forward_top1 is seen only at evaluations: it reached 0.9 after this epoch (the evaluation before) and by
    # epochs_to_90, an interval censored by eval_every; 0 when the first evaluation already had it
    epochs_to_90_after: float = float("nan")


def formation(epochs: list[int], assignments: list[np.ndarray], top1: list[float],
              epoch_seconds: dict[int, float] | None = None) -> Formation:
    """How the pairs formed, from the assignment a at each evaluation (in epoch order).

    locked_epoch is the evaluation from which the WHOLE map a stays as it ended (held_since, the rule stop=locked
    reads), so a locked map's forward_top1 no longer changes: locked before reaching 0.9 and reaching it later
    cannot both be said of one run. It is right-censored: a map that changed at the last evaluation (or was
    evaluated once) has not been seen to stay, and its locked_epoch is NaN, "not locked", never the last
    epoch. locked_rows counts the rows a(i) seen to stay, each on its own."""
    if not epochs:
        return Formation(float("nan"), float("nan"), 0, float("nan"))
    stack = np.stack([np.asarray(a) for a in assignments])  # (evaluations, N)
    reached = [k for k, v in enumerate(top1) if v >= 0.9]
    to_90 = float(epochs[reached[0]]) if reached else float("nan")
    after = float(epochs[reached[0] - 1]) if reached and reached[0] > 0 else 0.0 if reached else float("nan")
    changed = stack[1:] != stack[:-1]
    flips = int(changed.sum())
    locked = []
    for i in range(stack.shape[1]):
        last_change = np.flatnonzero(changed[:, i])
        since = last_change[-1] + 1 if len(last_change) else 0  # the evaluation from which a(i) stays
        locked.append(float(epochs[since]) if since < len(epochs) - 1 else math.inf)
    since = held_since(epochs, list(stack))
    whole = float(epochs[since]) if since < len(epochs) - 1 else float("nan")
    seconds = float("nan")
    if reached and epoch_seconds is not None:
        seconds = float(sum(t for e, t in epoch_seconds.items() if e <= to_90))
    return Formation(to_90, whole, flips, seconds, int(np.isfinite(locked).sum()), after)


def held_since(epochs: list[int], *maps: list[np.ndarray]) -> int:
    """The index of the first evaluation from which every one of `maps` (a, and b for two directions) has
    been the same as at the last evaluation."""
    since = len(epochs) - 1
    while since > 0 and all(np.array_equal(m[since - 1], m[-1]) for m in maps):
        since -= 1
    return since


def is_locked(epochs: list[int], assignments: list[np.ndarray], top1: list[float], patience: int,
              patience_epochs: int, need_top1: bool, backward: list[np.ndarray] | None = None) -> bool:
    """The rule of stop=locked: how long the map has held. a (and b, where a backward map is given: an
    unpaired run has reached its answer only when both directions hold) has stayed as it is now for at least
    `patience` evaluations after the one it was first seen at AND for at least `patience_epochs` epochs;
    with a pair given, forward_top1 >= 0.9 now too. Frequent evaluations lengthen the count, never the span."""
    if not epochs:
        return False
    maps = [list(assignments)] + ([list(backward)] if backward is not None else [])
    since = held_since(epochs, *maps)
    held_evaluations, held_epochs = len(epochs) - 1 - since, epochs[-1] - epochs[since]
    return held_evaluations >= patience and held_epochs >= patience_epochs and (not need_top1 or top1[-1] >= 0.9)
