"""Simulated studies of question 1: what each test says where the truth is known.

A simulated study is what a real study given no pair leaves for analysis.inference: D data sets x S seeds of N
images, each seed's learned map a, and what a is tested against: the stored order (the true partners, where a
study has a truth), seven data-only predictors' partners and each seed's untrained map. No training: the maps are
drawn, under a null or with an effect planted at strength q, the share of rows that follow what is planted (the
others go to a uniformly random y).

Nulls:
- `random`: every seed's map uniformly random, independent of everything;
- `shared map`: every seed of a data set takes ONE uniformly random map: its seeds agree, on nothing true (the
  null that a test counting seeds as replicates fails);
- `shared permutation`: the same with one random permutation: a one-to-one map, shared and wrong;
- `independent`: each seed its own random permutation (one-to-one, nothing shared: what Lu et al. describe);
- `margin`: permutations whose seeds share a data set's partners at kappa KAPPA_MARGIN, where "agrees with Lu et
  al." must stop saying yes.
Planted effects: `order` (the stored order), `explained` (the pixel predictor's partners), `share` (one random map
per data set), `collapse` (one y per seed), `one-to-one` (a random permutation per seed).
The predictors are correlated as real ones are: pixel, low-pass, edges and silhouette share most partners (one
base permutation, 30% of its rows reshuffled for each but pixel); colour, orientation and brightness do not. An
untrained G's outputs lie close together, so each seed's initial map sends its rows to three targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import inference
from .inference import ALPHA, MIN_SETS, distinct, holm, permutations
from .predictors import INITIAL, PREDICTORS

KAPPA_MARGIN = 0.2  # "no more than slight sharing" (Landis and Koch): where "agrees with Lu et al." stops
CORRELATED = ("lowpass", "edges", "silhouette")  # reshuffled copies of pixel's partners
POWER = 0.8
EFFECTS = tuple(np.round(np.arange(0.05, 1.0001, 0.05), 2))  # the strengths q a detectable effect is sought over
# permutations per simulated study: p resolves to 0.002. Fewer than a real study's (inference.DRAWS) costs a little
# power, never validity: a Monte Carlo permutation p is valid at its level for any number of draws
DRAWS = 499


@dataclass(frozen=True)
class Design:
    """What a study's tests see: data sets, seeds per data set, N, and the conditions Holm corrects over."""

    sets: int
    seeds: int
    n: int
    conditions: int = 1

    def __str__(self) -> str:
        plural = "s" * (self.sets != 1)
        return f"{self.sets} data set{plural} x {self.seeds} seeds, N = {self.n}" + \
            (f", {self.conditions} conditions" if self.conditions > 1 else "")


def keep_some(perm: np.ndarray, keep: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Permutations that keep perm(i) where `keep`, the other rows taking the targets left over in random order."""
    index = np.broadcast_to(np.arange(perm.shape[-1]), perm.shape)
    rows = np.argsort(np.where(keep, np.inf, index), -1, kind="stable")  # free rows first, then the kept ones
    donors = np.argsort(np.where(keep, np.inf, rng.random(perm.shape)), -1, kind="stable")
    out = np.empty_like(perm)
    np.put_along_axis(out, rows, np.take_along_axis(perm, donors, -1), -1)
    return out


def draw(rng: np.random.Generator, scenario: str, design: Design, q: float = 0.0, studies: int = 1000,
         margin_q: float | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(maps, valid, references) of `studies` simulated studies, as inference.question_one takes them."""
    Q, D, S, N = studies, design.sets, design.seeds, design.n
    shape = (Q, D, S, N)
    base = permutations(rng, (Q, D, 1), N)
    refs = {"order": np.broadcast_to(np.arange(N), shape), "pixel": np.broadcast_to(base, shape)}
    for name in PREDICTORS:
        if name in CORRELATED:
            refs[name] = np.broadcast_to(keep_some(base, rng.random(base.shape) >= 0.3, rng), shape)
        elif name != "pixel":
            refs[name] = np.broadcast_to(permutations(rng, (Q, D, 1), N), shape)
    refs[INITIAL] = np.take_along_axis(rng.integers(0, N, (Q, D, S, 3)), rng.integers(0, 3, shape), -1)
    a = rng.integers(0, N, shape)
    if scenario == "shared map":
        a = np.broadcast_to(rng.integers(0, N, (Q, D, 1, N)), shape)
    elif scenario == "shared permutation":
        a = np.broadcast_to(permutations(rng, (Q, D, 1), N), shape)
    elif scenario == "independent":
        a = permutations(rng, (Q, D, S), N)
    elif scenario == "one-to-one":
        a = np.where(rng.random(shape) < q, permutations(rng, (Q, D, S), N), a)
    elif scenario == "margin":
        shared = np.broadcast_to(permutations(rng, (Q, D, 1), N), shape)
        a = keep_some(shared, rng.random(shape) < (margin_q if margin_q is not None else sharing_q(N)), rng)
    elif scenario in ("order", "explained", "share", "collapse"):
        planted = {"order": refs["order"], "explained": refs["pixel"],
                   "share": np.broadcast_to(rng.integers(0, N, (Q, D, 1, N)), shape),
                   "collapse": np.broadcast_to(rng.integers(0, N, (Q, D, S, 1)), shape)}[scenario]
        a = np.where(rng.random(shape) < q, planted, a)
    elif scenario != "random":
        raise ValueError(f"unknown scenario {scenario!r}")
    return np.ascontiguousarray(a), np.ones((Q, D, S), bool), refs


@lru_cache(maxsize=16)
def sharing_q(n: int) -> float:
    """The share of rows two seeds keep from a shared permutation where their kappa is KAPPA_MARGIN (bisection)."""
    low, high = 0.0, 1.0
    design = Design(1, 2, n)
    for step in range(14):
        q = (low + high) / 2
        a, valid, _ = draw(np.random.default_rng(step), "margin", design, studies=4000, margin_q=q)
        kappa = float(np.nanmean(inference.shared(a, valid, np.random.default_rng(0), draws=0).effect))
        low, high = (q, high) if kappa < KAPPA_MARGIN else (low, q)
    return (low + high) / 2


@lru_cache(maxsize=64)
def critical_kappa(design: Design, studies: int = 4000) -> float:
    """The mean kappa over data sets below which "agrees with Lu et al." may be said: its 5% quantile where the
    seeds truly share at KAPPA_MARGIN, at this design. NaN below MIN_SETS data sets."""
    if design.sets < MIN_SETS or design.seeds < 2:
        return float("nan")
    a, valid, _ = draw(np.random.default_rng(1), "margin", design, studies=studies)
    statistic = inference.shared(a, valid, np.random.default_rng(2), draws=0).statistic
    return float(np.quantile(statistic, ALPHA))


def simulated_tests(design: Design, scenario: str, q: float = 0.0, studies: int = 1000, seed: int = 0,
                    only: tuple[str, ...] | None = None, draws: int = DRAWS) -> tuple[dict, np.ndarray, dict]:
    """inference.question_one on simulated studies (or the tests in `only`), with the maps and references."""
    rng = np.random.default_rng(seed)
    a, valid, refs = draw(rng, scenario, design, q, studies)
    if only is None:
        return inference.question_one(a, valid, refs, rng, draws), a, refs
    tests = {}
    basis = inference.permutation_basis(rng, draws, design.sets, design.n)
    for key in only:
        if key == "share":
            tests[key] = inference.shared(a, valid, rng, draws)
        elif key in ("one_to_one", "collapse"):
            tests[key] = inference.one_to_one(a, valid, upper=key == "one_to_one")
        else:
            ref = refs["order"] if key == "order" else refs[key.removeprefix("explained_")]
            tests[key] = inference.follows(a, ref, valid, rng, draws, basis)
    return tests, a, refs


CANDIDATE_KEYS = tuple(f"explained_{name}" for name in (*PREDICTORS, INITIAL))
# each claim: the scenario that plants it, and the tests it needs
PLANTS = {"order": ("order", ("order",)), "explained": ("explained", CANDIDATE_KEYS),
          "one_to_one": ("one-to-one", ("one_to_one",)), "collapse": ("collapse", ("collapse",)),
          "share": ("share", ("share",))}
UNITS = {"order": "forward_top1", "explained": "agreement", "one_to_one": "bijectivity",
         "collapse": "bijectivity", "share": "kappa"}


def said_yes(claim: str, tests: dict, scope: str, level: float = ALPHA) -> np.ndarray:
    """Per study: did the claim say yes, on these images (`images`) or across data sets (`sets`)."""
    if claim == "explained":  # any candidate, Holm over the candidates
        p = np.stack([tests[k].p if scope == "images" else tests[k].across().p for k in CANDIDATE_KEYS], -1)
        return (holm(p) < level).any(-1)
    test = tests[claim]
    return (test.p if scope == "images" else test.across().p) < level


def effect_size(claim: str, a: np.ndarray, refs: dict, tests: dict) -> float:
    """The planted effect in the claim's own unit, as a reader of the report sees it."""
    n = a.shape[-1]
    if claim in ("order", "explained"):
        return float((a == refs["order" if claim == "order" else "pixel"]).mean())
    if claim in ("one_to_one", "collapse"):
        return float(np.nanmean(distinct(a, np.ones(a.shape[:-1], bool), n)) / n)
    return float(np.nanmean(tests["share"].effect))


@lru_cache(maxsize=512)
def power_at(claim: str, design: Design, q: float, scope: str, level: float = ALPHA, studies: int = 300,
             seed: int = 0) -> tuple[float, float]:
    """(power, effect): how often the claim says yes with its effect planted at strength q. Fewer draws than a
    real study's, since a report's "not detected" sentences are simulated while it is written, and fewer draws
    only understate power; but enough that the smallest p, times Holm's 8 candidates, can pass the level."""
    draws = 999 if claim == "explained" else 199
    scenario, needed = PLANTS[claim]
    tests, a, refs = simulated_tests(design, scenario, q, studies, seed, needed, draws)
    return float(said_yes(claim, tests, scope, level).mean()), effect_size(claim, a, refs, tests)


@lru_cache(maxsize=256)
def detectable(claim: str, design: Design, scope: str = "images", level: float = ALPHA) -> tuple[float, float]:
    """(power, effect) at the weakest planted strength with power >= POWER at this design; (power, NaN) with the
    power at the strongest where none reaches it. Across data sets needs MIN_SETS: (0, NaN) below."""
    if scope == "sets" and design.sets < MIN_SETS or claim == "share" and design.seeds < 2:
        return 0.0, float("nan")
    power = 0.0
    for q in EFFECTS:
        power, effect = power_at(claim, design, float(q), scope, level)
        if power >= POWER:
            return power, effect
    return power, float("nan")
