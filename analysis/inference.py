"""The tests behind every claim of question 1, valid whatever the seeds of one data set share.

Seeds of one data set are no independent replicates: they train on the same images, and may all land on one
map. So each test keeps a data set's seeds together. To ask whether maps follow a reference (the stored order,
a predictor's partners, the untrained map), the reference is permuted ONCE per data set, the same permutation
applied to every seed of it, and the hits are summed over seeds and data sets: seeds that share one wrong map
share it under every permutation too, so their sharing cannot pass for an effect. To ask whether maps are
more (or less) one-to-one than a uniformly random map, the null draws one random map per data set for all its
seeds (exact: the distinct targets of a random map have a known distribution). Whether seeds share partners is
a permutation test of Cohen's kappa with each seed's rows shuffled (its marginals kept).

Two scopes:
- on these images: the tests above over every seed of every data set. One data set gets a real answer, scoped
  to its images (a user's own two folders are one data set);
- across data sets: the per-data-set effect with the data set as the unit, a one-sided Student t over three or
  more data sets: does the effect hold for images drawn like these.

Everything is vectorised over a leading axis of Q studies: a real study is Q = 1, analysis.simulate runs
thousands at once through these same functions. Maps are (Q, D, S, N) integer arrays (D data sets, S seed
slots, N images; a(i) = -1 for a tied row, which never matches), with `valid` (Q, D, S) marking the seeds that
exist. Monte Carlo p-values are (1 + k) / (1 + draws): valid at their level for any number of draws.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.stats import t as student_t

from .assignment import distinct_values_null

ALPHA = 0.05
DRAWS = 4999  # permutations for a real study: p resolves to 0.0002
MIN_SETS = 3  # "across data sets" needs this many: fewer give a t interval with 0 or 1 degree of freedom
# across data sets, the variance between data sets is taken no lower than this share of what the null alone gives
# one data set: effects that take few values (distinct counts of ten maps) are often equal in three data sets, and
# an estimated spread of 0 makes any mean "significant". 0.5 holds every false-positive rate at or under the level
# at the shipped designs (analysis.calibration); 0 did not (0.07 for one-to-one at 3 x 2, N = 10)
FLOOR = 0.5


@dataclass
class Test:
    """One test over Q studies: p on these images, and the per-data-set effects for the scope across them."""

    p: np.ndarray  # (Q,) on these images
    effect: np.ndarray  # (Q, D) per data set, NaN where a data set has no seed (or no usable seed pair)
    statistic: np.ndarray  # (Q,) what p was computed from, in the test's own units
    null_sd: np.ndarray  # (Q, D) the spread of a data set's effect under the test's own null

    @property
    def sets(self) -> np.ndarray:
        return (~np.isnan(self.effect)).sum(-1)

    def across(self) -> Across:
        return across_sets(self.effect, self.null_sd)


@dataclass
class Across:
    """The effect over data sets: mean, one-sided 95% lower bound and p (Student t); NaN below MIN_SETS."""

    mean: np.ndarray
    low: np.ndarray
    p: np.ndarray
    sets: np.ndarray


def across_sets(effect: np.ndarray, null_sd: np.ndarray) -> Across:
    """Student t over data sets, its variance never below FLOOR times what the null alone gives a data set."""
    known = ~np.isnan(effect)
    k = known.sum(-1)
    mean = np.where(k > 0, np.nansum(effect, -1) / np.maximum(k, 1), np.nan)
    centred = np.where(known, effect - mean[..., None], 0.0)
    variance = (centred**2).sum(-1) / np.maximum(k - 1, 1)
    floor = np.where(known, null_sd, 0.0) ** 2
    variance = np.maximum(variance, FLOOR * floor.sum(-1) / np.maximum(k, 1))
    se = np.sqrt(variance / np.maximum(k, 1))
    df = np.maximum(k - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, mean / se, np.where(mean > 0, np.inf, np.where(mean < 0, -np.inf, 0.0)))
    p = np.where(k >= MIN_SETS, student_t.sf(t, df), np.nan)
    low = np.where(k >= MIN_SETS, mean - student_t.ppf(1 - ALPHA, df) * se, np.nan)
    return Across(mean, low, p, k)


def onehot(a: np.ndarray, n: int) -> np.ndarray:
    """(..., N) -> (..., N, N): row i is 1 at column a(i); a tied row (-1) is all zeros."""
    return (a[..., None] == np.arange(n)).astype(np.float32)


def permutations(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> np.ndarray:
    """Uniformly random permutations of n, one per index of `shape`: (*shape, n)."""
    return rng.random((*shape, n)).argsort(-1)


def permutation_basis(rng: np.random.Generator, draws: int, sets: int, n: int) -> np.ndarray:
    """`draws` permutations per data set as one matrix (sets * n * n, draws): T = M.reshape(Q, -1) @ basis sums
    M[q, d, i, sigma_bd(i)] over d and i for every draw b at once."""
    return onehot(permutations(rng, (draws, sets), n), n).reshape(draws, -1).T


def _traces_per_set(M: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """T[q, b, d] = sum over i of M[q, d, i, perms[b, d, i]]."""
    q, d, n = M.shape[0], M.shape[1], M.shape[-1]
    out = np.empty((q, len(perms), d))
    for k in range(d):
        out[:, :, k] = M[:, k].reshape(q, -1) @ onehot(perms[:, k], n).reshape(len(perms), -1).T
    return out


def _pvalue(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    return (1 + (null >= observed[:, None] - 1e-7).sum(1)) / (1 + null.shape[1])


def follows(a: np.ndarray, ref: np.ndarray, valid: np.ndarray, rng: np.random.Generator,
            draws: int = DRAWS, basis: np.ndarray | None = None) -> Test:
    """Do the maps follow `ref` (same shape as a) beyond chance? Hits a_s(i) = ref_s(i), summed over seeds and
    data sets, against the same sum with each data set's reference rows permuted once for all its seeds.
    Effect per data set: its seeds' mean hit share minus what a permuted reference gives on average. `basis`:
    permutation_basis's draws, where several references are tested on the same maps (each test stays valid)."""
    n = a.shape[-1]
    q, d, s = valid.shape
    A = (onehot(a, n) * valid[..., None, None]).transpose(0, 1, 3, 2, 4).reshape(q, d, n, s * n)
    R = onehot(ref, n).transpose(0, 1, 3, 2, 4).reshape(q, d, n, s * n)
    M = A @ R.transpose(0, 1, 3, 2)  # M[q, d, i, j]: seeds with a_s(i) = ref_s(j)
    hits = np.einsum("qdii->qd", M)
    observed = hits.sum(1)
    basis = permutation_basis(rng, draws, d, n) if basis is None else basis
    null = M.reshape(q, -1) @ basis
    seeds = valid.sum(-1)
    # Hoeffding's variance of sum_i M[i, sigma(i)] over uniform permutations sigma: the null spread of a data set
    centred = M - M.mean(-1, keepdims=True) - M.mean(-2, keepdims=True) + M.mean((-1, -2), keepdims=True)
    spread = np.sqrt((centred.astype(float) ** 2).sum((-1, -2)) / max(n - 1, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        effect = np.where(seeds > 0, (hits - M.sum((-1, -2)) / n) / (seeds * n), np.nan)
        null_sd = spread / (seeds * n)
    return Test(_pvalue(observed, null), effect, observed, null_sd)


def distinct(a: np.ndarray, valid: np.ndarray, n: int) -> np.ndarray:
    """Distinct targets of each map (tied rows count none): (Q, D, S)."""
    hit = onehot(a, n).max(-2)  # (Q, D, S, N): target j taken by some row
    return np.where(valid, hit.sum(-1), np.nan)


@lru_cache(maxsize=256)
def _sum_of_distinct(n: int, sets: int) -> np.ndarray:
    """P(the distinct targets of `sets` independent random maps of n sum to k), k = 0..sets * n."""
    pmf = np.asarray(distinct_values_null(n))
    out = np.array([1.0])
    for _ in range(sets):
        out = np.convolve(out, pmf)
    return out


def one_to_one(a: np.ndarray, valid: np.ndarray, upper: bool = True) -> Test:
    """More distinct targets than a uniformly random map (upper), or fewer (a collapse), against one random map
    per data set for all its seeds: the seeds' mean distinct count summed over data sets, exact. Effect per data
    set: its seeds' mean bijectivity minus a random map's expected bijectivity (negated for a collapse)."""
    n = a.shape[-1]
    k = distinct(a, valid, n)
    seeds = valid.sum(-1)
    mean = np.where(seeds > 0, np.nansum(k, -1) / np.maximum(seeds, 1), np.nan)  # (Q, D)
    total = np.nansum(mean, -1)
    sets = (seeds > 0).sum(-1)
    expected = float(np.dot(np.arange(n + 1), distinct_values_null(n)))
    p = np.empty(len(total))
    for count in np.unique(sets):
        pmf = _sum_of_distinct(n, int(count))
        cdf, sf = np.cumsum(pmf), np.cumsum(pmf[::-1])[::-1]  # P(K <= k), P(K >= k)
        rows = sets == count
        if upper:
            at = np.clip(np.ceil(total[rows] - 1e-9).astype(int), 0, len(pmf) - 1)
            p[rows] = sf[at]
        else:
            at = np.clip(np.floor(total[rows] + 1e-9).astype(int), 0, len(pmf) - 1)
            p[rows] = cdf[at]
    effect = (mean - expected) / n * (1 if upper else -1)
    pmf = np.asarray(distinct_values_null(n))
    spread = float(np.sqrt(np.dot((np.arange(n + 1) - expected) ** 2, pmf))) / n  # one random map's
    with np.errstate(divide="ignore"):
        null_sd = np.where(seeds > 0, spread / np.sqrt(np.maximum(seeds, 1)), np.nan)  # independent seeds
    return Test(np.minimum(p, 1.0), effect, total, null_sd)


def _labels(a: np.ndarray, n: int, own: int) -> np.ndarray:
    """Marginal counts with a tied row as a label of its own (column n + own), never shared with another map."""
    counts = onehot(a, n).sum(-2)
    ties = (a < 0).sum(-1, keepdims=True)
    return np.concatenate([counts, ties * (own == 0), ties * (own == 1)], -1)


def shared(a: np.ndarray, valid: np.ndarray, rng: np.random.Generator, draws: int = DRAWS) -> Test:
    """Do the seeds of a data set pick the same partners beyond what their marginals give? Cohen's kappa per seed
    pair, averaged over a data set's pairs and then over data sets, against the same with each seed's rows
    shuffled (the first seed's kept: only relative orders matter). A pair of maps whose marginals force every
    agreement (both collapsed onto one y) is left out: its kappa is undefined, not 0. Effect: the data set's
    mean kappa."""
    # kappa by hand, not sklearn's cohen_kappa_score (seed_agreement's): that scores one pair of maps a call, and
    # this scores every study, data set and permutation draw at once (analysis.simulate: thousands of studies)
    q, d, s, n = a.shape
    perms = permutations(rng, (draws, d, s), n)
    perms[:, :, 0] = np.arange(n)
    inverse = perms.argsort(-1)
    total = np.zeros((q, d))
    null = np.zeros((q, draws, d))
    pairs = np.zeros((q, d))
    for p_, q_ in itertools.combinations(range(s), 2):
        usable = valid[..., p_] & valid[..., q_]
        expected = (_labels(a[:, :, p_], n, 0) * _labels(a[:, :, q_], n, 1)).sum(-1) / n**2
        usable &= expected < 1 - 1e-9
        M = onehot(a[:, :, p_], n) @ onehot(a[:, :, q_], n).transpose(0, 1, 3, 2)  # [i, j]: a_p(i) = a_q(j)
        # row k of seed p's shuffled map meets row sigma_q(sigma_p^-1(k)) of seed q's
        scale = np.where(usable, 1.0 - expected, 1.0)
        # counts are exact in float32; the shares are taken in float64, as the null's are, so ties stay ties
        total += np.where(usable, (np.einsum("qdii->qd", M).astype(float) / n - expected) / scale, 0.0)
        pairs += usable
        if draws:
            composed = np.take_along_axis(perms[:, :, q_], inverse[:, :, p_], -1)
            agree = _traces_per_set(M, composed) / n
            null += np.where(usable[:, None], (agree - expected[:, None]) / scale[:, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        effect = np.where(pairs > 0, total / pairs, np.nan)
        null_sets = np.where(pairs[:, None] > 0, null / pairs[:, None], np.nan)
    has = (pairs > 0).any(-1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a study without a seed pair: all NaN, p NaN below
        observed = np.nanmean(effect, -1)
        null_mean = np.nanmean(null_sets, -1)
        null_sd = np.nanstd(null_sets, 1) if draws else np.full(effect.shape, np.nan)
    p = np.where(has & (draws > 0), _pvalue(np.nan_to_num(observed), np.nan_to_num(null_mean, nan=-np.inf)), np.nan)
    return Test(p, effect, observed, null_sd)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment over the last axis (NaN: not a test of the family)."""
    p = np.asarray(p, dtype=float)
    m = (~np.isnan(p)).sum(-1, keepdims=True)
    order = np.argsort(np.where(np.isnan(p), np.inf, p), -1)
    ranked = np.take_along_axis(p, order, -1)
    steps = np.minimum(1.0, (m - np.arange(p.shape[-1])) * ranked)
    steps = np.maximum.accumulate(np.where(np.isnan(steps), 0.0, steps), -1)
    out = np.empty_like(p)
    np.put_along_axis(out, order, steps, -1)
    return np.where(np.isnan(p), np.nan, out)


def question_one(a: np.ndarray, valid: np.ndarray, refs: dict[str, np.ndarray], rng: np.random.Generator,
                 draws: int = DRAWS) -> dict[str, Test]:
    """Every test of question 1 for one condition's maps: do they follow the stored order (`order`), are they
    one-to-one or collapsed against a random map, do seeds share partners, and does each other reference (the
    data-only predictors' partners, the untrained map) explain them."""
    basis = permutation_basis(rng, draws, a.shape[1], a.shape[-1])
    out = {"order": follows(a, refs["order"], valid, rng, draws, basis), "one_to_one": one_to_one(a, valid),
           "collapse": one_to_one(a, valid, upper=False), "share": shared(a, valid, rng, draws)}
    out |= {f"explained_{name}": follows(a, ref, valid, rng, draws, basis) for name, ref in refs.items()
            if name != "order"}
    return out


def lu_codes(tests: dict[str, Test], explained_p: np.ndarray, critical: float) -> np.ndarray:
    """Lu et al.'s "a random one among many", per study: "no" when the seeds share partners or a data-only
    predictor explains them (Bonferroni over those two: each at ALPHA / 2); "yes" only where there is a one-to-one
    map to speak of, nothing explains or is shared at ALPHA, three or more data sets have a seed pair, and their
    mean kappa lies below `critical` (a true kappa at the margin passes that in 5% of studies: analysis.simulate
    calibrates it per design); "inconclusive" where the tests ran without either; "not tested" where no data set
    had two seeds. `explained_p`: (Q, candidates) Holm-adjusted p of the data-only predictors."""
    share = tests["share"]
    p_explained = np.nanmin(np.where(np.isnan(explained_p), np.inf, explained_p), -1) if explained_p.size else \
        np.full(len(share.p), np.inf)
    p_share = np.where(np.isnan(share.p), np.inf, share.p)
    tests_run = np.isfinite(p_share).astype(int) + np.isfinite(p_explained)
    bonferroni = np.minimum(1.0, np.maximum(tests_run, 1) * np.minimum(p_share, p_explained))
    disagree = bonferroni < ALPHA
    all_tested = ~np.isnan(explained_p).any(-1) if explained_p.size else np.zeros(len(share.p), bool)
    agree = (~disagree & (tests["one_to_one"].p < ALPHA) & (p_share >= ALPHA) & (p_explained >= ALPHA)
             & (share.sets >= MIN_SETS) & (share.statistic < critical) & all_tested)
    return np.select([np.isnan(share.p), disagree, agree], ["not tested", "no", "yes"], "inconclusive")
