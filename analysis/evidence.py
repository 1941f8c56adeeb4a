"""How evidence is counted and stated, for every answer of the report: which runs were given a pair and
which were not, chance levels per N, data sets counted once (seeds of one data set are no replicates), the
Holm correction, and each finding's budget beside the original's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cyclelike.config import RunConfig

from .assignment import chance_level
from .conditions import data_set_ids, data_sets, describe

SIGNIFICANT = 0.05


def column_or(t: pd.DataFrame, name: str, default) -> pd.Series:
    return t[name] if name in t else pd.Series(default, index=t.index)


def unpaired(t: pd.DataFrame) -> pd.DataFrame:
    """Runs that were given no pair: the pairs they show formed by themselves."""
    if t.empty:
        return t
    scheme, l1 = column_or(t, "scheme", "cyclelike"), column_or(t, "lambda_l1", 10.0)
    return t[(column_or(t, "pairing", "aligned") == "shuffled") & ((scheme == "cyclegan") | (l1 == 0))]


def given(t: pd.DataFrame) -> pd.DataFrame:
    """Runs trained towards a given pair: whether G holds the pairs is a question of its range."""
    if t.empty:
        return t
    scheme, l1 = column_or(t, "scheme", "cyclelike"), column_or(t, "lambda_l1", 10.0)
    return t[column_or(t, "pairing", "aligned").isin(["aligned", "fixed"]) & (scheme != "cyclegan") & (l1 > 0)]


def reference_text(g: pd.DataFrame) -> str:
    """What forward_top1 is scored against, in the words every section uses: given a pair, given none
    (`unpaired`), or a new random partner every epoch (shuffled with an L1 target: a pair, but never the same)."""
    if len(given(g)) == len(g):
        return "the pair given"
    if len(unpaired(g)) == len(g):
        return "the stored order (given no pair)"
    return "the stored order (given a new random partner every epoch)"


ORIGINAL_EPOCHS = {10: 2000, 20: 10000}  # the original's budgets, after a 1500-epoch pre-training run


ORIGINAL_BATCH = 5


def chance_text(metric: str, g: pd.DataFrame) -> str:
    """A metric's chance level for the N of a group, one per N: never a mean over N that no run has."""
    sizes = sorted(int(n) for n in g["n_images"].dropna().unique())
    return ", ".join(f"{chance_level(metric, n):.2f}" + (f" at N = {n}" if len(sizes) > 1 else "") for n in sizes)


def count_significant(g: pd.DataFrame, column: str) -> int:
    return int((g[column] < SIGNIFICANT).sum()) if column in g else 0


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment: the family-wise error stays below alpha across the tests."""
    order = np.argsort(pvalues)
    adjusted, running = np.empty(len(pvalues)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted.tolist()


def budget_text(g: pd.DataFrame) -> str:
    """A group's budget in the original's units, beside the original's own at that N."""
    if "epochs" not in g or g["epochs"].isna().all():
        return "an unrecorded budget"
    parts = []
    for (n, epochs), h in g.groupby(["n_images", "epochs"]):
        shape = {k: h[k].iloc[0] for k in ("batch_size", "scheme", "direction_schedule") if k in h}
        steps = RunConfig(n_images=int(n), epochs=int(epochs), **shape).budget()["budget/g_steps"]
        text = f"up to {int(epochs)} epochs at N = {int(n)} ({steps} G steps)"
        if int(n) in ORIGINAL_EPOCHS:
            original = RunConfig(n_images=int(n), epochs=ORIGINAL_EPOCHS[int(n)], batch_size=ORIGINAL_BATCH).budget()
            text += (f", {100 * epochs / ORIGINAL_EPOCHS[int(n)]:.0f}% of the original's {ORIGINAL_EPOCHS[int(n)]} "
                     f"epochs ({original['budget/g_steps']} G steps)")
        parts.append(text)
    return "; ".join(parts)


def stop_text(g: pd.DataFrame) -> str:
    """How the runs of a group ended: locked (stop = locked reached its answer), stopped on a collapse (the map
    held, but with fewer distinct targets than a random map: it stopped changing without forming pairs), or at
    the end of the budget."""
    if "stop" not in g or (g["stop"].fillna("off") == "off").all():
        return f"all {len(g)} runs trained their whole budget (stop = off)"
    reasons = g["tags.stop/reason"].fillna("budget") if "tags.stop/reason" in g else pd.Series("budget", g.index)
    # runs logged before stop/reason = collapsed: told apart by their final bijectivity
    collapsed = (reasons == "collapsed") | ((reasons == "locked") & (column_or(g, "pair/bijectivity_p_collapse", 1.0)
                                                                     < SIGNIFICANT))
    locked = g[(reasons == "locked") & ~collapsed]
    text = f"{len(locked)} of {len(g)} runs locked"
    if len(locked) and "stop/epoch" in locked:
        text += f" (median epoch {locked['stop/epoch'].median():.0f})"
    if collapsed.any():
        text += f", {int(collapsed.sum())} stopped on a collapse (fewer distinct targets than a random map, p < 0.05)"
    spent = int((reasons == "budget").sum())
    if spent:
        text += f", {spent} ran out of budget (not converged)"
    return text


def significant_text(g: pd.DataFrame, column: str) -> str:
    """'k of m runs (every seed in j of d data sets)': runs at p < 0.05, and the data sets in which every seed
    is, since seeds of one data set are not independent evidence."""
    return (f"{count_significant(g, column)} of {len(g)} runs (every seed in {sets_where(g, column)} of "
            f"{data_sets(g)} data set{'s' * (data_sets(g) != 1)})")


def sets_where(g: pd.DataFrame, column: str) -> int:
    """Data sets in which every seed has p < 0.05: the count that treats seeds of one data set as one."""
    if column not in g:
        return 0
    worst = g[column].groupby(data_set_ids(g)).max()
    return int((worst < SIGNIFICANT).sum())


def who(condition: dict, g: pd.DataFrame) -> str:
    scheme = condition.get("scheme", g["scheme"].iloc[0] if "scheme" in g else "cyclelike")
    who = "the one G (lambda_l1 = 0, a new random pairing every epoch)" if scheme == "cyclelike" else \
        f"the {scheme} baseline"
    rest = {k: v for k, v in condition.items() if k != "scheme"}
    return who + (f" with {describe(rest)}" if rest else "")


def hue_of(t: pd.DataFrame) -> str | None:
    return next((k for k in ("scheme", "pairing", "arch") if k in t and t[k].nunique() > 1), None)
