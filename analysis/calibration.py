"""The claims' error rates, measured: analysis.claims run on simulated studies.

A simulated study is what analysis.runs would load from a study given no pair: `sets` independent data
sets x `seeds` seeds, N images, each run's assignment a and the per-run statistics the trial logs for it
(computed by analysis.pairing, as the trial computes them). No training: the maps are drawn.

Scenarios (each run's map, row by row):
- null: every seed's map uniformly random (a(i) any y), independent of everything;
- shared: each data set has its own random partner per x; every seed takes it with probability q;
- threshold: the same at q = 0.45, where the two seeds' kappa is 0.2 (the most "agrees" may allow);
- explained: the same, the partner being the `pixel` predictor's on that data set;
- true: the same, the partner being the true one (the stored order): forward_top1 beyond chance;
- one_to_one: every seed's map a uniformly random permutation (bijective, nothing shared);
- collapse: every seed's map sends each x to one of two y (G collapsed onto a few targets).
Capacity: forward_top1 per N drawn from a G that holds each pair with a probability that breaks at N*.

`calibrate` gives, per claim, how often it said "yes" under each scenario: under the null (or, for "agrees
with Lu et al.", under planted sharing) that is its false-positive rate; under its planted effect, its power.
`python -m analysis calibrate` prints the table.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from .claims import ALPHA, CANDIDATES, claims_for, n90
from .pairing import INITIAL, PREDICTORS, agreement_pvalue, bijectivity, fixed_point_pvalue

SCENARIOS = ("null", "shared", "threshold", "explained", "true", "one_to_one", "collapse")
AT_THRESHOLD = 0.45  # the share of rows that follow the shared partner where the seeds' kappa is 0.2 (N = 10)


@lru_cache(maxsize=256)
def _fixed_p(k: int, n: int) -> float:
    return fixed_point_pvalue(k, n)


def _run(a: np.ndarray, partners: dict[str, np.ndarray], initial: np.ndarray) -> dict:
    n = len(a)
    d = bijectivity(a, n)
    row = {"assignment": a, "pair/forward_top1": float((a == np.arange(n)).mean()),
           "pair/forward_top1_pvalue": _fixed_p(int((a == np.arange(n)).sum()), n),
           "pair/bijectivity": d.value, "pair/bijectivity_p_permutation": d.p_permutation,
           "pair/bijectivity_p_collapse": d.p_collapse}
    for name, partner in partners.items():
        k = int((a == partner).sum())
        row[f"pair/agree_{name}"], row[f"pair/agree_{name}_pvalue"] = k / n, _fixed_p(k, n)
    row[f"pair/agree_{INITIAL}"] = float((a == initial).mean())
    row[f"pair/agree_{INITIAL}_pvalue"] = agreement_pvalue(a, initial, draws=199, seed=int(a.sum()))
    return row


def simulate_study(rng: np.random.Generator, scenario: str, sets: int = 3, seeds: int = 2, n: int = 10,
                   q: float = 0.6) -> pd.DataFrame:
    rows = []
    for d in range(sets):
        partners = {name: rng.permutation(n) for name in PREDICTORS}
        planted = {"shared": rng.permutation(n), "threshold": rng.permutation(n), "explained": partners["pixel"],
                   "true": np.arange(n)}.get(scenario)
        share = AT_THRESHOLD if scenario == "threshold" else q
        for s in range(seeds):
            if scenario == "one_to_one":
                a = rng.permutation(n)
            elif scenario == "collapse":
                a = rng.choice(rng.choice(n, 2, replace=False), n)
            else:
                a = rng.integers(0, n, n)
                if planted is not None:
                    take = rng.random(n) < share
                    a[take] = planted[take]
            initial = rng.integers(0, n, n)  # each seed's untrained map: its own
            rows.append({"data_seed": d, "seed": s, "tags.data_hash": f"set{d}", "n_images": n,
                         **_run(a, partners, initial)})
    return pd.DataFrame(rows)


def _said(claims: dict) -> dict[str, bool]:
    return {"forward_top1 beyond chance": claims["beats_chance"].verdict == "yes",
            "one-to-one (more distinct than a random map)": claims["one_to_one"].verdict == "yes",
            "collapse (fewer distinct than a random map)": claims["collapse"].verdict == "yes",
            "a candidate explains the pairs": any(claims[f"explained_{c}"].verdict == "yes" for c in CANDIDATES),
            "seeds share partners": claims["seeds_share"].verdict == "yes",
            "Lu et al.: not random": claims["lu"].verdict == "no",
            "Lu et al.: agrees (random)": claims["lu"].verdict == "yes"}


# per claim: the scenario whose "yes" is a false positive, and the one whose "yes" is its power
TARGETS = {"forward_top1 beyond chance": ("null", "true"),
           "one-to-one (more distinct than a random map)": ("null", "one_to_one"),
           "collapse (fewer distinct than a random map)": ("null", "collapse"),
           "a candidate explains the pairs": ("null", "explained"),
           "seeds share partners": ("null", "shared"),
           "Lu et al.: not random": ("null", "shared"),
           "Lu et al.: agrees (random)": ("threshold", "null")}


def capacity_study(rng: np.random.Generator, sizes=(10, 20, 40, 80), seeds: int = 2, break_at: int | None = 40,
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


def calibrate(studies: int = 1000, power_studies: int = 300, sets: int = 3, seeds: int = 2, n: int = 10,
              q: float = 0.6, seed: int = 0) -> pd.DataFrame:
    """Per claim: its nominal level, how often it said yes where that is false (false-positive rate, over
    `studies` simulated studies of each scenario a false positive is counted under), and where it is true
    (power, over `power_studies`)."""
    rng = np.random.default_rng(seed)
    said = {scenario: [] for scenario in SCENARIOS}
    nulls = {null for null, _ in TARGETS.values()}  # a false-positive rate over `studies`, power over fewer
    for scenario in SCENARIOS:
        for _ in range(studies if scenario in nulls else power_studies):
            said[scenario].append(_said(claims_for(simulate_study(rng, scenario, sets, seeds, n, q), CANDIDATES)))
    rates = {scenario: pd.DataFrame(rows).mean() for scenario, rows in said.items()}
    table = [{"claim": claim, "level": ALPHA, "false positives under": null,
              "false-positive rate": float(rates[null][claim]),
              "power under": planted or "-",
              "power": float(rates[planted][claim]) if planted else float("nan")}
             for claim, (null, planted) in TARGETS.items()]
    # N90 is an estimate (the mean over seeds against 0.9), not a test at a level: how often it overshoots a G
    # that holds 85% of the pairs past N* = 40, and how often it finds N* where the break is clear
    capacity = [n90(capacity_study(rng)) for _ in range(power_studies)]
    overshoot = [n90(capacity_study(rng, after=0.85)) for _ in range(studies)]
    table.append({"claim": "N90 (an estimate: no level)", "level": float("nan"),
                  "false positives under": "hold 0.99 up to N* = 40, 0.85 past it: N90 > 40",
                  "false-positive rate": float(np.mean([v is not None and v > 40 for v in overshoot])),
                  "power under": "hold 0.5 past 40: N90 = 40", "power": float(np.mean([v == 40 for v in capacity]))})
    out = pd.DataFrame(table)
    out.attrs.update(studies=studies, power_studies=power_studies, sets=sets, seeds=seeds, n=n, q=q)
    return out
