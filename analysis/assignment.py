"""The layer under the pairing metrics and the predictors: distances between images, the map a(i) with its tie
rule, the optimal one-to-one assignment, and what a uniformly random map scores.

The tie rule, one for every assignment metric: a row whose minimum is shared by two or more columns has no
nearest neighbour, a(i) = -1 (`NO_MATCH`). Such a row is never a hit (top-1 shares, mutual, cycle, agreement with
a predictor or with another seed) and contributes no target to bijectivity.

Chance levels come from `chance_level` alone; the report reads them from here. Shares k/N carry an exact
Clopper-Pearson interval; bijectivity is not a binomial share, so it is tested against its own null, the number
of distinct values of a uniformly random map (the occupancy distribution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.special import stirling2
from scipy.stats import binomtest

NO_MATCH = -1  # a(i) of a tied row


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


def optimal_assignment(D: np.ndarray) -> np.ndarray:
    """The one-to-one assignment of least total distance (Hungarian): partner[i] for each row."""
    rows, cols = linear_sum_assignment(np.asarray(D))
    optimal = np.empty(len(rows), dtype=int)
    optimal[rows] = cols
    return optimal


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


@lru_cache(maxsize=64)
def distinct_values_null(n: int) -> tuple[float, ...]:
    """P(a uniformly random map of n points onto n has exactly k distinct values), k = 0..n.

    Exact: C(n, k) * k! * S(n, k) / n^n with S the Stirling numbers of the second kind."""
    total = n**n
    return tuple(float(Fraction(math.comb(n, k) * math.factorial(k) * int(stirling2(n, k, exact=True)), total))
                 for k in range(n + 1))


def fixed_point_pvalue(k: int, n: int) -> float:
    """P(a random permutation of n has >= k fixed points): the p-value of forward_top1 = k/n.

    Exact: P(exactly m) = (1/m!) * sum_{j=0}^{n-m} (-1)^j / j!; for n >= 10 this is Poisson(1)."""
    def exactly(m: int) -> float:
        return sum((-1) ** j / math.factorial(j) for j in range(n - m + 1)) / math.factorial(m)

    return float(min(1.0, max(0.0, sum(exactly(m) for m in range(k, n + 1)))))
