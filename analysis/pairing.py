"""Pairing consistency of one trained translator: which x maps to which y, and how far that is from chance.

d(a, b) is the mean absolute pixel difference in [-1, 1] space. D_xy[i, j] = d(G(x_i), y_j);
a(i) = argmin_j D_xy[i, j]; D_yx and b(j) likewise for Y -> X. The tie rule, the chance levels and the nulls
are analysis.assignment's; the data-only predictors the map is compared with are analysis.predictors'.
Every function here takes tensors or arrays and returns plain values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata

from .assignment import (
    NO_MATCH,
    Share,
    assignment,
    chance_band,
    chance_level,
    distances,
    distinct_values_null,
    fixed_point_pvalue,
    matches,
    optimal_assignment,
    share,
)
from .predictors import INITIAL, agreement_pvalue, blur, chosen_rank, predictor_agreement, predictor_costs

Generator = Callable[[torch.Tensor], torch.Tensor]

COPY_FACTOR = 0.5  # mem/holdout_copy_rate: "nearer to a training target than half the median within-Y distance"
# pair/cycle_top1_lowpass blurs G(x) with sigma = side/32 before the second pass: that removes the high-frequency
# detail a cycle can hide its source in (Chu et al. 2017)
CYCLE_BLUR_PER_SIDE = 32


def top1(D: np.ndarray, target: np.ndarray) -> Share:
    n = len(D)
    return share(int(matches(assignment(D), target).sum()), n, chance_level("pair/forward_top1", n))


def partner_rank(D: np.ndarray, target: np.ndarray) -> float:
    """Mean rank (1 = best, ties averaged) of the paired target in its row; chance (N + 1) / 2."""
    D = np.asarray(D)
    ranks = rankdata(D, axis=1, method="average")
    return float(ranks[np.arange(len(D)), np.asarray(target)].mean())


@dataclass
class Distinct:
    """Bijectivity k/n against a random map: its expected share, the central 95% range of the null, and
    the one-sided p-values for fewer distinct targets (collapse) and for more (towards a permutation)."""

    k: int
    n: int
    chance: float
    null_low: float
    null_high: float
    p_collapse: float
    p_permutation: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")


def bijectivity(a: np.ndarray, n: int) -> Distinct:
    """Distinct targets / N: 1 for a permutation, 1/N for collapse onto one target; tied rows count no target."""
    a = np.asarray(a)
    k = len(np.unique(a[a != NO_MATCH]))
    pmf = np.asarray(distinct_values_null(n))
    low, high = chance_band("pair/bijectivity", n)
    return Distinct(k, n, chance_level("pair/bijectivity", n), low, high,
                    float(min(1.0, pmf[: k + 1].sum())), float(min(1.0, pmf[k:].sum())))


def mutual(a: np.ndarray, b: np.ndarray) -> Share:
    """Share of i with b(a(i)) = i: both directions agree on the pair."""
    a, b = np.asarray(a), np.asarray(b)
    n = len(a)
    back = np.where(a != NO_MATCH, b[np.where(a != NO_MATCH, a, 0)], NO_MATCH)
    return share(int(matches(back, np.arange(n)).sum()), n, chance_level("pair/mutual", n))


def margin(D: np.ndarray, eps: float = 1e-12) -> float:
    """Median over rows of (second best - best) / best: how decisively each x picks its y."""
    part = np.sort(np.asarray(D, dtype=np.float64), axis=1)[:, :2]
    return float(np.median((part[:, 1] - part[:, 0]) / (part[:, 0] + eps)))


def hungarian_agreement(D: np.ndarray) -> float:
    """Share of i whose nearest y is also its partner in the optimal one-to-one assignment."""
    return float(matches(assignment(D), optimal_assignment(D)).mean())


def seed_agreement(a1: np.ndarray, a2: np.ndarray) -> dict[str, float]:
    """Across two runs that differ only in seed: the share of i with the same a(i), and Cohen's kappa, that
    share corrected for the agreement the two maps' own marginals give by chance. Two maps that collapse onto one
    y agree everywhere and tell nothing: their kappa is 0, as it is wherever the marginals alone force the
    agreement. Tied rows never agree."""
    from sklearn.metrics import cohen_kappa_score  # lazy: only the report compares seeds, not every trial's process

    a1, a2 = np.asarray(a1), np.asarray(a2)
    if a1.shape != a2.shape:
        raise ValueError(f"assignments differ in length: {a1.shape} vs {a2.shape}")
    raw = float(matches(a1, a2).mean())
    # a tied row is a label of its own in each map, so two ties count as disagreement in kappa as in the share
    first, second = np.where(a1 == NO_MATCH, -1, a1), np.where(a2 == NO_MATCH, -2, a2)
    # one label in both maps leaves kappa 0/0 (scikit-learn answers NaN): nothing beyond the marginals, 0
    collapsed = len(np.union1d(first, second)) == 1
    kappa = 0.0 if collapsed else float(cohen_kappa_score(first, second))
    return {"pair/seed_agreement": raw, "pair/seed_kappa": kappa}


def holdout_copy_rate(outputs: torch.Tensor, targets: torch.Tensor, factor: float = COPY_FACTOR) -> float:
    """Share of held-out outputs nearer to some training target than factor x the median within-Y distance."""
    if len(outputs) == 0:
        return float("nan")
    within = distances(targets, targets)
    iu = torch.triu_indices(len(targets), len(targets), offset=1)
    threshold = factor * within[iu[0], iu[1]].median()
    return float((distances(outputs, targets).min(dim=1).values < threshold).float().mean())


@dataclass
class PairingResult:
    metrics: dict[str, float]  # every `pair/...` and `mem/...` key of the design's table
    shares: dict[str, Share]  # the k/N metrics with chance level and interval
    distinct: Distinct  # bijectivity against the random-map null
    D_xy: np.ndarray
    D_yx: np.ndarray | None
    a: np.ndarray
    b: np.ndarray | None
    pi: np.ndarray
    copy_factor: float = COPY_FACTOR
    copy_baseline: float = float("nan")  # mem/holdout_copy_rate of the mean training target
    # G's outputs on the training images that these metrics measured: G(x), and G(y), G(G(x)) with a backward
    # map. Pictures of the evaluation draw them rather than running G again; a run's history drops them.
    outputs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    pvalues: dict[str, float] = field(default_factory=dict)  # p-values not against a random permutation
    # each data-only predictor's optimal one-to-one assignment between the original images: what the claims test
    # the maps of every seed against (analysis.claims)
    partners: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def statistics(self) -> dict[str, float]:
        """Each metric's chance level and interval, bijectivity's null range and the p-values: one value a run,
        so summaries (tags), never charted as metrics. The p-values of forward_top1 and the predictor agreements
        are against the fixed points of a random permutation."""
        out: dict[str, float] = {}
        for key, s in self.shares.items():
            out |= {f"{key}_ci_low": s.low, f"{key}_ci_high": s.high, f"{key}_chance": s.chance}
            if key in self.pvalues:
                out[f"{key}_pvalue"] = self.pvalues[key]
            elif key == "pair/forward_top1" or "agree_" in key:
                out[f"{key}_pvalue"] = fixed_point_pvalue(s.k, s.n)
        d = self.distinct
        out |= {"pair/bijectivity_chance": d.chance, "pair/bijectivity_null_low": d.null_low,
                "pair/bijectivity_null_high": d.null_high, "pair/bijectivity_p_collapse": d.p_collapse,
                "pair/bijectivity_p_permutation": d.p_permutation,
                "pair/partner_rank_chance": chance_level("pair/partner_rank", len(self.a)),
                "mem/copy_factor": self.copy_factor, "mem/holdout_copy_baseline": self.copy_baseline}
        return out


def evaluate_pairing(
    forward: Generator,
    backward: Generator | None,
    x: torch.Tensor,
    y: torch.Tensor,
    pi: torch.Tensor | np.ndarray | None = None,
    x_holdout: torch.Tensor | None = None,
    copy_factor: float = COPY_FACTOR,
    initial: np.ndarray | None = None,
) -> PairingResult:
    """Every pairing metric of one trained translator. `backward` is None for one-way schemes (pix2pix):
    the metrics that need Y -> X are then NaN. For a one-generator model pass the same G twice. `initial`: the
    untrained map's assignment (epoch 0), a candidate explanation beside the data-only predictors."""
    n = len(x)
    pi_np = np.arange(n) if pi is None else np.asarray(pi)
    inverse = np.argsort(pi_np)  # y_j's partner is x_{inverse[j]}
    fx = forward(x)
    D_xy = distances(fx, y).numpy()
    a = assignment(D_xy)
    shares = {"pair/forward_top1": top1(D_xy, pi_np)}
    distinct = bijectivity(a, n)
    metrics = {
        "pair/bijectivity": distinct.value,
        "pair/partner_rank": partner_rank(D_xy, pi_np),
        "pair/margin": margin(D_xy),
        "pair/hungarian_agreement": hungarian_agreement(D_xy),
    }
    D_yx = b = None
    outputs = {"G(x)": fx}
    if backward is not None:
        outputs["G(y)"] = gy = backward(y)
        D_yx = distances(gy, x).numpy()
        b = assignment(D_yx)
        shares["pair/backward_top1"] = top1(D_yx, inverse)
        shares["pair/mutual"] = mutual(a, b)
        identity = np.arange(n)
        outputs["G(G(x))"] = gfx = backward(fx)
        shares["pair/cycle_top1"] = top1(distances(gfx, x).numpy(), identity)
        blurred = backward(blur(fx, CYCLE_BLUR_PER_SIDE))
        shares["pair/cycle_top1_lowpass"] = top1(distances(blurred, x).numpy(), identity)
    else:
        metrics.update({k: float("nan") for k in ("pair/backward_top1", "pair/mutual", "pair/cycle_top1",
                                                  "pair/cycle_top1_lowpass")})
    costs = predictor_costs(x, y)
    partners = {name: optimal_assignment(cost) for name, cost in costs.items()}
    shares.update(predictor_agreement(a, partners))
    metrics.update({f"pair/rank_{name}": chosen_rank(a, cost) for name, cost in costs.items()})
    pvalues = {}
    if initial is not None:
        key = f"pair/agree_{INITIAL}"
        shares[key] = share(int(matches(a, initial).sum()), n, chance_level(key, n))
        pvalues[key] = agreement_pvalue(a, initial)
    metrics.update({k: s.value for k, s in shares.items()})
    if x_holdout is not None and len(x_holdout) > 0:
        outputs["G(x_holdout)"] = forward(x_holdout)
        metrics["mem/holdout_copy_rate"] = holdout_copy_rate(outputs["G(x_holdout)"], y, copy_factor)
    else:
        metrics["mem/holdout_copy_rate"] = float("nan")
    # a blurred output near the mean face passes the threshold without memorising anything: its baseline is
    # the rate of the mean training target itself (0 or 1), and the rate above it is what memory explains
    baseline = holdout_copy_rate(y.float().mean(0, keepdim=True), y, copy_factor)
    metrics["mem/holdout_copy_excess"] = metrics["mem/holdout_copy_rate"] - baseline
    return PairingResult(metrics, shares, distinct, D_xy, D_yx, a, b, pi_np, copy_factor, baseline, outputs, pvalues,
                         partners)
