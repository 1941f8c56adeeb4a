"""The claims' error rates, measured: analysis.inference's tests on simulated studies (analysis.simulate) at
every design a shipped study runs.

Per design and claim, in each scope: how often the claim said yes where it is false (its false-positive rate,
under independent maps and under seeds that share one wrong map), with two Monte Carlo standard errors, and how
often it said yes where it is true (its power) at three planted strengths, in the claim's own unit, and the
effect at which the power first reaches 0.8. `python -m analysis calibrate` prints the table.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import inference
from .claims import n90
from .inference import ALPHA, MIN_SETS, holm
from .predictors import PREDICTORS
from .simulate import (
    CANDIDATE_KEYS,
    PLANTS,
    POWER,
    Design,
    critical_kappa,
    detectable,
    effect_size,
    said_yes,
    simulated_tests,
)

# every design of a study/configs/*.toml whose report makes these claims (tests/test_calibration.py holds the
# list to the files), and the 3 x 3 design the power target is stated at
DESIGNS = (Design(3, 2, 10, 2), Design(3, 2, 20, 2), Design(1, 3, 10, 2), Design(5, 3, 10, 2),
           Design(1, 2, 5, 8), Design(1, 2, 10, 8), Design(1, 3, 10, 1), Design(3, 3, 10, 1))
# where each claim's "yes" is false: independent maps, and seeds that share one wrong map
NULLS = {"order": ("random", "shared permutation"), "explained": ("random", "shared permutation"),
         "one_to_one": ("random", "shared map"), "collapse": ("random", "shared map"),
         "share": ("random", "independent"), "lu_no": ("independent", "random"), "lu_yes": ("margin",)}
STRENGTHS = {"order": (0.1, 0.2, 0.3), "explained": (0.1, 0.2, 0.3), "one_to_one": (0.3, 0.5, 0.7),
             "collapse": (0.2, 0.35, 0.5), "share": (0.3, 0.5, 0.7)}
NAMES = {"order": "the stored order's partners", "explained": "a candidate explains them (Holm over 8)",
         "one_to_one": "one-to-one (against a random map)", "collapse": "collapse (against a random map)",
         "share": "seeds share partners", "lu_no": "Lu et al.: does not agree", "lu_yes": "Lu et al.: agrees"}


def _lu(tests: dict, design: Design) -> np.ndarray:
    names = [f"explained_{name}" for name in PREDICTORS]
    return inference.lu_codes(tests, holm(np.stack([tests[k].p for k in names], -1)),
                              critical_kappa(Design(design.sets, design.seeds, design.n)))


def yes_rate(claim: str, design: Design, scenario: str, scope: str, studies: int, seed: int) -> float:
    """How often `claim` said yes in `studies` simulated studies of `scenario`, at level ALPHA per condition."""
    tests, _, _ = simulated_tests(design, scenario, studies=studies, seed=seed)
    if claim.startswith("lu_"):
        return float((_lu(tests, design) == ("no" if claim == "lu_no" else "yes")).mean())
    return float(said_yes(claim, tests, scope).mean())


def _scopes(claim: str, design: Design) -> list[str]:
    if claim.startswith("lu_"):
        return ["images"]
    if claim == "share" and design.seeds < 2:
        return []
    return ["images"] + (["sets"] if design.sets >= MIN_SETS else [])


def calibrate(designs=DESIGNS, studies: int = 1000, power_studies: int = 300, seeds=(0,)) -> pd.DataFrame:
    """One row per design, claim and scope: false-positive rates (mean over `seeds` simulation seeds of
    `studies` studies each, with 2 standard errors of that mean), power at three strengths, and the effect at
    which the power first reaches 0.8 (at the design's Holm level over its conditions)."""
    rows = []
    for design in designs:
        cache: dict[tuple, dict] = {}
        for claim, nulls in NULLS.items():
            for scope in _scopes(claim, design):
                row = {"design": str(design), "claim": NAMES[claim], "scope": scope, "level": ALPHA}
                for k, null in enumerate(nulls):
                    rates = [_cached_rate(cache, claim, design, null, scope, studies, s) for s in seeds]
                    se = math.sqrt(ALPHA * (1 - ALPHA) / (studies * len(seeds)))
                    row[f"null {k + 1}"] = null
                    row[f"false-positive rate {k + 1}"] = float(np.mean(rates))
                    row[f"2 SE {k + 1}"] = 2 * se
                level = ALPHA / design.conditions
                if claim in PLANTS:
                    for j, q in enumerate(STRENGTHS[claim]):
                        power, effect = _power(claim, design, q, scope, level, power_studies)
                        row[f"power {j + 1}"], row[f"at {j + 1}"] = power, effect
                    power, effect = detectable(claim, design, scope, level)
                    row["power 0.8 at"] = effect
                elif claim == "lu_yes":
                    row["power 1"] = yes_rate(claim, design, "independent", scope, power_studies, 7)
                    row["at 1"] = 0.0  # kappa of seeds that share nothing
                else:  # Lu et al. disagree: where the seeds share at strength q
                    for j, q in enumerate(STRENGTHS["share"]):
                        tests, a, refs = simulated_tests(design, "share", q, power_studies, 11 + j)
                        row[f"power {j + 1}"] = float((_lu(tests, design) == "no").mean())
                        row[f"at {j + 1}"] = effect_size("share", a, refs, tests)
                rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(studies=studies, power_studies=power_studies, seeds=tuple(seeds), power=POWER)
    return out


# the tests each null's studies need: those of the claims it is a null for (Lu et al.'s verdict needs them all)
NEEDED = {"shared permutation": ("order", *CANDIDATE_KEYS), "shared map": ("one_to_one", "collapse")}


def _cached_rate(cache: dict, claim: str, design: Design, null: str, scope: str, studies: int, seed: int) -> float:
    """Every claim's rate under one simulated batch: a null's studies are drawn and tested once."""
    key = (null, seed)
    if key not in cache:
        tests, _, _ = simulated_tests(design, null, studies=studies, seed=1000 + seed, only=NEEDED.get(null))
        cache[key] = {"tests": tests, "lu": _lu(tests, design) if null not in NEEDED else None}
    tests = cache[key]["tests"]
    if claim.startswith("lu_"):
        return float((cache[key]["lu"] == ("no" if claim == "lu_no" else "yes")).mean())
    return float(said_yes(claim, tests, scope).mean())


def _power(claim: str, design: Design, q: float, scope: str, level: float, studies: int) -> tuple[float, float]:
    tests, a, refs = simulated_tests(design, PLANTS[claim][0], q, studies, seed=int(q * 1000),
                                     only=PLANTS[claim][1])
    return float(said_yes(claim, tests, scope, level).mean()), effect_size(claim, a, refs, tests)


def capacity_study(rng: np.random.Generator, sizes=(10, 20, 40, 80), seeds: int = 3, break_at: int | None = 40,
                   hold: float = 0.99, after: float = 0.5) -> pd.Series:
    """Mean forward_top1 per N over seeds: each pair held with probability `hold` up to `break_at` and
    `after` beyond it; None: no capacity at all, every map uniformly random."""
    means = {}
    for n in sizes:
        if break_at is None:
            values = [float((rng.integers(0, n, n) == np.arange(n)).mean()) for _ in range(seeds)]
        else:
            values = list(rng.binomial(n, hold if n <= break_at else after, seeds) / n)
        means[n] = float(np.mean(values))
    return pd.Series(means)


def calibrate_n90(seeds: int = 3, studies: int = 1000, seed: int = 0) -> dict[str, float]:
    """N90 is an estimate (the mean over seeds against 0.9), not a test at a level: how often it overshoots a G
    that holds 85% of the pairs past N* = 40, and how often it finds N* where the break is clear (0.5 past it),
    at capacity.toml's seeds."""
    rng = np.random.default_rng(seed)
    overshoot = [n90(capacity_study(rng, seeds=seeds, after=0.85)) for _ in range(studies)]
    found = [n90(capacity_study(rng, seeds=seeds)) for _ in range(studies)]
    return {"seeds": seeds, "overshoot (N90 > 40 where 85% hold past 40)": float(np.mean(
        [v is not None and v > 40 for v in overshoot])), "finds N* = 40 (0.5 past it)": float(np.mean(
            [v == 40 for v in found]))}


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as `python -m analysis calibrate` and the README print it: a rate with its 2 SE, a power with
    the effect it was planted at."""
    rows = []
    for _, r in table.iterrows():
        row = {"claim": r["claim"], "scope": r["scope"]}
        for k in (1, 2):
            if isinstance(r.get(f"null {k}"), str):
                row[f"false positives ({k})"] = f"{r[f'false-positive rate {k}']:.3f} under {r[f'null {k}']}"
        for j in (1, 2, 3):
            if f"power {j}" in r and r[f"power {j}"] == r[f"power {j}"]:
                row[f"power {j}"] = f"{r[f'power {j}']:.2f} at {r[f'at {j}']:.2f}"
        if "power 0.8 at" in r:
            row["0.8 at"] = "-" if not r["power 0.8 at"] == r["power 0.8 at"] else f"{r['power 0.8 at']:.2f}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("")
