"""Pairing consistency: which x maps to which y, and how far that is from chance.

d(a, b) is the mean absolute pixel difference in [-1, 1] space. D_xy[i, j] = d(G(x_i), y_j);
a(i) = argmin_j D_xy[i, j]; D_yx and b(j) likewise for Y -> X.

The tie rule, one for every assignment metric: a row whose minimum is shared by two or more columns
has no nearest neighbour, a(i) = -1 (`NO_MATCH`). Such a row is never a hit (top-1 shares, mutual,
cycle, agreement with a predictor or with another seed) and contributes no target to bijectivity.

Chance levels come from `chance_level` alone; the report reads them from here. Shares k/N carry an
exact Clopper-Pearson interval; bijectivity is not a binomial share, so it is tested against its own
null, the number of distinct values of a uniformly random map (the occupancy distribution).
Every function here takes tensors or arrays and returns plain values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.special import stirling2
from scipy.stats import binomtest, rankdata

Generator = Callable[[torch.Tensor], torch.Tensor]

COPY_FACTOR = 0.5  # mem/holdout_copy_rate: "nearer to a training target than half the median within-Y distance"
NO_MATCH = -1  # a(i) of a tied row


def chance_level(metric: str, n: int) -> float | None:
    """What a metric scores for an untrained, uniformly random map of N images; None where no chance exists.

    pair/hungarian_agreement has none here: a row's minimum is often its optimal partner in a random matrix
    too (about half the rows at N = 10), so 1/N would make chance look like a finding."""
    if metric.endswith(("_pvalue", "_ci_low", "_ci_high", "_chance")):
        return None  # statistics about a metric, not shares of N images
    if metric == "pair/bijectivity":
        return 1.0 - (1.0 - 1.0 / n) ** n  # expected share of distinct values of a random map
    if metric == "pair/partner_rank" or metric.startswith("pair/rank_"):
        return (n + 1) / 2
    if metric == "pair/seed_kappa":
        return 0.0  # Cohen's kappa: agreement beyond what the two maps' marginals give
    if metric.startswith(("pair/forward_top1", "pair/backward_top1", "pair/mutual", "pair/cycle_top1",
                          "pair/seed_agreement", "pair/agree_")):
        return 1.0 / n
    return None


def chance_band(metric: str, n: int) -> tuple[float, float] | None:
    """The central 95% range a uniformly random map of N images scores: distinct targets of a random map for
    bijectivity, the fixed points of a random permutation for the k/N hit shares; None where there is none."""
    if metric == "pair/bijectivity":
        cdf = np.cumsum(distinct_values_null(n))  # searchsorted: the smallest k with P(K <= k) >= 2.5%
    elif chance_level(metric, n) == 1.0 / n:
        tail = [fixed_point_pvalue(k, n) for k in range(n + 1)]  # P(K >= k)
        cdf = np.array([1.0 - (tail[k + 1] if k < n else 0.0) for k in range(n + 1)])
    else:
        return None
    return int(np.searchsorted(cdf, 0.025)) / n, int(np.searchsorted(cdf, 0.975)) / n


@dataclass
class Share:
    """k of n, with its chance level and an exact (Clopper-Pearson) 95% interval."""

    k: int
    n: int
    chance: float
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")


def share(k: int, n: int, chance: float) -> Share:
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="exact")
    return Share(int(k), int(n), float(chance), float(ci.low), float(ci.high))


def distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """D[i, j] = mean |a_i - b_j| over all pixels and channels."""
    a2, b2 = a.flatten(1).float().cpu(), b.flatten(1).float().cpu()
    return torch.cdist(a2, b2, p=1) / a2.shape[1]


def assignment(D: np.ndarray) -> np.ndarray:
    """a(i) = argmin_j D[i, j], or NO_MATCH where the row's minimum is tied."""
    D = np.asarray(D, dtype=np.float64)
    a = D.argmin(axis=1)
    tied = (D == D.min(axis=1, keepdims=True)).sum(axis=1) > 1
    a[tied] = NO_MATCH
    return a


def matches(a: np.ndarray, target: np.ndarray) -> np.ndarray:
    """hit[i] = a(i) == target(i), where a tied row (NO_MATCH) never matches anything, even another tie."""
    a, target = np.asarray(a), np.asarray(target)
    return (a == target) & (a != NO_MATCH)


def top1(D: np.ndarray, target: np.ndarray) -> Share:
    n = len(D)
    return share(int(matches(assignment(D), target).sum()), n, chance_level("pair/forward_top1", n))


def partner_rank(D: np.ndarray, target: np.ndarray) -> float:
    """Mean rank (1 = best, ties averaged) of the paired target in its row; chance (N + 1) / 2."""
    D = np.asarray(D)
    ranks = rankdata(D, axis=1, method="average")
    return float(ranks[np.arange(len(D)), np.asarray(target)].mean())


@lru_cache(maxsize=64)
def distinct_values_null(n: int) -> tuple[float, ...]:
    """P(a uniformly random map of n points onto n has exactly k distinct values), k = 0..n.

    Exact: C(n, k) * k! * S(n, k) / n^n with S the Stirling numbers of the second kind."""
    total = n**n
    return tuple(float(Fraction(math.comb(n, k) * math.factorial(k) * int(stirling2(n, k, exact=True)), total))
                 for k in range(n + 1))


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


def optimal_assignment(D: np.ndarray) -> np.ndarray:
    """The one-to-one assignment of least total distance (Hungarian): partner[i] for each row."""
    rows, cols = linear_sum_assignment(np.asarray(D))
    optimal = np.empty(len(rows), dtype=int)
    optimal[rows] = cols
    return optimal


def hungarian_agreement(D: np.ndarray) -> float:
    """Share of i whose nearest y is also its partner in the optimal one-to-one assignment."""
    return float(matches(assignment(D), optimal_assignment(D)).mean())


def seed_agreement(a1: np.ndarray, a2: np.ndarray) -> dict[str, float]:
    """Across two runs that differ only in seed: the share of i with the same a(i), and Cohen's kappa, that
    share corrected for the agreement the two maps' own marginals give by chance (the definition of
    sklearn.metrics.cohen_kappa_score). Two maps that collapse onto one y agree everywhere and tell nothing:
    their kappa is 0, as it is wherever the marginals alone force the agreement. Tied rows never agree."""
    a1, a2 = np.asarray(a1), np.asarray(a2)
    if a1.shape != a2.shape:
        raise ValueError(f"assignments differ in length: {a1.shape} vs {a2.shape}")
    raw = float(matches(a1, a2).mean())
    first, second = np.where(a1 == NO_MATCH, -1, a1), np.where(a2 == NO_MATCH, -2, a2)
    labels = np.union1d(first, second)
    expected = float(sum((first == c).mean() * (second == c).mean() for c in labels))
    kappa = 0.0 if expected >= 1.0 else (raw - expected) / (1.0 - expected)
    return {"pair/seed_agreement": raw, "pair/seed_kappa": kappa}


def fixed_point_pvalue(k: int, n: int) -> float:
    """P(a random permutation of n has >= k fixed points): the p-value of forward_top1 = k/n.

    Exact: P(exactly m) = (1/m!) * sum_{j=0}^{n-m} (-1)^j / j!; for n >= 10 this is Poisson(1)."""
    def exactly(m: int) -> float:
        return sum((-1) ** j / math.factorial(j) for j in range(n - m + 1)) / math.factorial(m)

    return float(min(1.0, max(0.0, sum(exactly(m) for m in range(k, n + 1)))))


def holdout_copy_rate(outputs: torch.Tensor, targets: torch.Tensor, factor: float = COPY_FACTOR) -> float:
    """Share of held-out outputs nearer to some training target than factor x the median within-Y distance."""
    if len(outputs) == 0:
        return float("nan")
    within = distances(targets, targets)
    iu = torch.triu_indices(len(targets), len(targets), offset=1)
    threshold = factor * within[iu[0], iu[1]].median()
    return float((distances(outputs, targets).min(dim=1).values < threshold).float().mean())


def lowpass(images: torch.Tensor) -> torch.Tensor:
    """Gaussian blur scaled to the image: removes the high-frequency detail a cycle can hide the source in."""
    from torchvision.transforms.v2 import functional as TF  # lazy: torchvision's import loads torch._dynamo

    sigma = max(1.0, images.shape[-1] / 32)
    kernel = 2 * math.ceil(2 * sigma) + 1
    return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])


# ---------------------------------------------------------------- data-only predictors of the pairs


def _colour_stats(images: torch.Tensor) -> torch.Tensor:
    flat = images.flatten(2).float()
    return torch.cat([flat.mean(2), flat.std(2)], 1)  # (N, 6): mean and spread per channel


def _edges(images: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the grey image (scikit-image's): where the outlines are, whatever their colours."""
    from skimage.filters import sobel

    grey = _grey(images).cpu().numpy()
    return torch.from_numpy(np.stack([sobel(g) for g in grey]))[:, None].float()


def coarse(images: torch.Tensor) -> torch.Tensor:
    """A strong blur (sigma = side/16): the layout of the image, not its detail."""
    from torchvision.transforms.v2 import functional as TF

    sigma = max(1.0, images.shape[-1] / 16)
    kernel = 2 * math.ceil(2 * sigma) + 1
    return TF.gaussian_blur(images.float(), [kernel, kernel], [sigma, sigma])


def _grey(images: torch.Tensor) -> torch.Tensor:
    return images.float().mean(1)  # (N, H, W) in [-1, 1]


def _foreground(images: torch.Tensor) -> torch.Tensor:
    """The silhouette: pixels whose colour differs from the background's (the median of the border pixels) by
    more than a tenth of the range. A photograph's subject, an edge map's strokes, whatever their colours."""
    im = images.float()
    border = torch.cat([im[..., 0, :], im[..., -1, :], im[..., :, 0], im[..., :, -1]], dim=-1)  # (N, C, 4S)
    background = border.median(dim=-1).values[..., None, None]
    return ((im - background).abs().mean(1) > 0.2).float()  # (N, H, W)


def _silhouette(images: torch.Tensor) -> torch.Tensor:
    return _foreground(images)[:, None]


def _orientation(images: torch.Tensor) -> torch.Tensor:
    """Where the silhouette lies and which way it points, from its image moments: centroid, and the axis of
    least inertia as (cos 2theta, sin 2theta) scaled by the elongation (a disc has no orientation)."""
    mask = _foreground(images)
    n, h, w = mask.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    mass = mask.sum((1, 2)).clamp(min=1.0)
    cx, cy = (mask * xs).sum((1, 2)) / mass, (mask * ys).sum((1, 2)) / mass
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    mu20, mu02 = (mask * dx**2).sum((1, 2)) / mass, (mask * dy**2).sum((1, 2)) / mass
    mu11 = (mask * dx * dy).sum((1, 2)) / mass
    spread = torch.sqrt((mu20 - mu02) ** 2 + 4 * mu11**2)
    elongation = spread / (mu20 + mu02).clamp(min=1e-6)
    theta2 = torch.atan2(2 * mu11, mu20 - mu02)
    return torch.stack([cx, cy, elongation * torch.cos(theta2), elongation * torch.sin(theta2)], 1)


def _brightness(images: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """The grey-level histogram (shares of pixels in 16 bins): how light or dark, whatever the layout."""
    grey = ((_grey(images) + 1) / 2).clamp(0, 1).flatten(1)
    index = (grey * bins).long().clamp(max=bins - 1)
    return torch.nn.functional.one_hot(index, bins).float().mean(1)


PREDICTORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "pixel": lambda im: im.float(), "lowpass": coarse, "colour": _colour_stats, "edges": _edges,
    "silhouette": _silhouette, "orientation": _orientation, "brightness": _brightness,
}
# not data-only: the untrained G's own assignment at epoch 0, the candidate "the initialisation decides"
INITIAL = "initial"


def predictor_costs(x: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
    """For each data-only predictor, the distance between every ORIGINAL x_i and y_j on that predictor's
    feature: the cost of Lu et al.'s transport view of the pairing."""
    return {name: distances(feature(x.cpu()), feature(y.cpu())).numpy() for name, feature in PREDICTORS.items()}


def predictor_partners(x: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
    """For each data-only predictor, the optimal one-to-one assignment (Hungarian) of the ORIGINAL x_i to
    the y_j on that predictor's distance: what the pairs would be if that were all they were based on."""
    return {name: optimal_assignment(cost) for name, cost in predictor_costs(x, y).items()}


def predictor_agreement(a: np.ndarray, partners: dict[str, np.ndarray]) -> dict[str, Share]:
    """pair/agree_<predictor>: share of i whose learned a(i) is that predictor's partner, chance 1/N."""
    n = len(a)
    return {f"pair/agree_{name}": share(int(matches(a, p).sum()), n, chance_level("pair/agree_", n))
            for name, p in partners.items()}


def chosen_rank(a: np.ndarray, cost: np.ndarray) -> float:
    """pair/rank_<predictor>: where the learned partner a(i) ranks in x_i's row of the predictor's cost (1 =
    the nearest y on that predictor; ties averaged), mean over the rows with a partner; chance (N + 1) / 2.
    Top-1 agreement misses a predictor whose second choice the map keeps taking; the rank does not."""
    a = np.asarray(a)
    ranks = rankdata(np.asarray(cost), axis=1, method="average")
    rows = np.flatnonzero(a != NO_MATCH)
    return float(ranks[rows, a[rows]].mean()) if len(rows) else float("nan")


def agreement_pvalue(a: np.ndarray, other: np.ndarray, draws: int = 999, seed: int = 0) -> float:
    """P(as many i with a(i) = other(i) when other's rows are shuffled): a permutation test that keeps both
    maps' marginals, so two maps that collapse onto the same y do not agree beyond chance."""
    a, other = np.asarray(a), np.asarray(other)
    observed = int(matches(a, other).sum())
    shuffled = np.random.default_rng(seed).permuted(np.tile(other, (draws, 1)), axis=1)
    null = ((shuffled == a) & (a != NO_MATCH)).sum(1)
    return float((1 + (null >= observed).sum()) / (1 + draws))


# ---------------------------------------------------------------- formation over time


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
        shares["pair/cycle_top1_lowpass"] = top1(distances(backward(lowpass(fx)), x).numpy(), identity)
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
