"""Every claim the report makes of question 1, from the runs of the conditions given no pair.

A condition's runs become arrays (data sets x seeds x N, each seed's final map and what it is tested against) and
analysis.inference tests them; this module turns the p-values into verdicts and words. Each claim has two
scopes: "on these images" (every seed of every data set, one data set suffices) and "across data sets" (the
data set as the unit, three or more). The primary claims (stored order, one-to-one, collapse, seed sharing) are
Holm-corrected across the study's conditions, the candidate explanations across conditions and candidates.
A claim says "yes" at p < 0.05 after the correction; where its test ran without reaching that, "not
detected", with the effect this design detects with power 0.8 (analysis.simulate, at the design actually run);
"not tested" where the data cannot carry the test at all. Lu et al.'s verdict is "yes", "no", "inconclusive"
or "not tested" (inference.lu_codes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import inference, simulate
from .conditions import data_set_ids
from .inference import ALPHA, MIN_SETS
from .predictors import INITIAL, PREDICTORS

CANDIDATES = [*PREDICTORS, INITIAL]  # what may explain the pairs: the data-only predictors and the initial map
PRIMARY = ("order", "one_to_one", "collapse", "share")
UNITS = {"order": "forward_top1", "one_to_one": "bijectivity", "collapse": "bijectivity", "share": "kappa",
         "explained": "agreement"}

HOW = ("How each verdict is decided, and could have come out the other way. On these images: the maps of every seed "
       "of every data set against a reference (the stored order, a predictor's partners, the untrained map), the "
       "reference's rows permuted once per data set for all its seeds, so seeds that share one wrong map never "
       "pass for an effect; one-to-one and collapse against one uniformly random map per data set (exact); seed "
       "sharing by Cohen's kappa against each seed's rows shuffled. One data set gets an answer, about its own "
       "images. Across data sets: the effect per data set, a one-sided Student t over three or more. The four "
       "primary claims are Holm-corrected over the study's conditions, the candidate explanations over conditions "
       "and candidates, at 0.05. 'Not detected' gives the effect this design finds with power 0.8 (simulated at "
       "the design run), never 'none'. Agreeing with Lu et al. needs a one-to-one map, no sharing or explanation "
       "at 0.05, three or more data sets, and mean kappa below a critical value calibrated so that seeds sharing at "
       f"kappa {simulate.KAPPA_MARGIN} pass in 5% of studies. python -m analysis calibrate prints every claim's "
       "false-positive rate and power at every shipped design.")


@dataclass
class Verdict:
    said: str  # yes, not detected, not tested (Lu: yes, no, inconclusive, not tested)
    p: float = math.nan  # after the correction the verdict used
    detail: str = ""  # the numbers behind it, one clause

    @property
    def tested(self) -> bool:
        return self.said != "not tested"

    def __str__(self) -> str:
        return f"{self.said} ({self.detail})" if self.detail else self.said


@dataclass
class Claim:
    images: Verdict  # on these images
    sets: Verdict  # across data sets


@dataclass
class Evidence:
    """One condition's runs as the tests take them (Q = 1), and its design."""

    a: np.ndarray  # (1, D, S, N)
    valid: np.ndarray  # (1, D, S)
    refs: dict[str, np.ndarray]
    design: simulate.Design


def evidence(g: pd.DataFrame, conditions: int = 1) -> Evidence | None:
    """The maps of a condition's runs per data set (seeds of one data set together), with the stored order and
    every candidate whose partners each run logged; None where no run kept its final map."""
    if "assignment" not in g:
        return None
    runs = g[g["assignment"].map(lambda v: isinstance(v, list | np.ndarray))]
    if runs.empty:
        return None
    n = len(runs["assignment"].iloc[0])
    runs = runs[runs["assignment"].map(len) == n]
    ids = data_set_ids(runs)
    order = list(dict.fromkeys(ids))
    seeds = max(int((ids == k).sum()) for k in order)
    a = np.full((1, len(order), seeds, n), -1)
    valid = np.zeros((1, len(order), seeds), bool)
    refs = {"order": np.broadcast_to(np.arange(n), a.shape)} | {name: np.full(a.shape, -1) for name in CANDIDATES}
    complete = dict.fromkeys(CANDIDATES, True)
    for d, key in enumerate(order):
        for s, (_, row) in enumerate(runs[ids == key].iterrows()):
            a[0, d, s], valid[0, d, s] = np.asarray(row["assignment"]), True
            for name in CANDIDATES:
                ref = _reference(row, name)
                if isinstance(ref, list | np.ndarray) and len(ref) == n:
                    refs[name][0, d, s] = np.asarray(ref)
                else:
                    complete[name] = False
    refs = {k: v for k, v in refs.items() if k == "order" or complete[k]}
    return Evidence(a, valid, refs, simulate.Design(len(order), seeds, n, conditions))


def _reference(row: pd.Series, name: str):
    """What a run's map is tested against for one candidate: its untrained map, or a predictor's partners."""
    if name == INITIAL:
        return row.get("initial")
    partners = row.get("partners")
    return partners.get(name) if isinstance(partners, dict) else None


def _not_detected(claim: str, design: simulate.Design, scope: str, level: float) -> str:
    power, effect = simulate.detectable(claim, design, scope, level)
    unit = UNITS[claim]
    if math.isnan(effect):
        return f"power < {simulate.POWER:.1f} at any {unit} this design was simulated at"
    return f"power {power:.2f} at {unit} {effect:.2f}"


def _verdict(claim: str, p: float, design: simulate.Design, scope: str, family: str, detail: str) -> Verdict:
    """Its power is simulated at the level of its first Holm step over the conditions (the candidates of
    `explained` are corrected inside the simulation)."""
    corrected = f"p = {p:.2g}" + ("" if family.startswith("1 ") else f" after Holm over {family}")
    if p < ALPHA:
        return Verdict("yes", p, f"{detail}, {corrected}")
    level = ALPHA / design.conditions
    return Verdict("not detected", p, f"{detail}, {corrected}; {_not_detected(claim, design, scope, level)}")


def _sets_text(across: inference.Across, unit: str) -> str:
    return (f"mean {unit} effect {float(across.mean[0]):+.2f} over {int(across.sets[0])} data sets, one-sided 95% "
            f"lower bound {float(across.low[0]):+.2f}")


def _untested(reason: str) -> dict[str, Claim]:
    keys = [*PRIMARY, *(f"explained_{c}" for c in CANDIDATES)]
    out = {k: Claim(Verdict("not tested", detail=reason), Verdict("not tested", detail=reason)) for k in keys}
    return out | {"lu": Verdict("not tested", detail=reason)}


def condition_claims(groups: list[pd.DataFrame], seed: int = 0) -> list[dict[str, Claim]]:
    """Every claim of each condition given no pair, corrected across the conditions (and candidates)."""
    m = len(groups)
    if m == 0:
        return []
    found = [evidence(g, m) for g in groups]
    # each condition its own draws, the same whatever else the study holds
    tests = [inference.question_one(e.a, e.valid, e.refs, np.random.default_rng([seed, c])) if e else None
             for c, e in enumerate(found)]
    out: list[dict[str, Claim]] = [{} if t else _untested("no run kept its final map") for t in tests]
    keys = [*PRIMARY, *(f"explained_{c}" for c in CANDIDATES)]
    for scope in ("images", "sets"):
        p = np.array([[_p(t, k, scope) if t else np.nan for k in keys] for t in tests]).reshape(m, len(keys))
        primary = inference.holm(p[:, : len(PRIMARY)].T).T  # each claim over the conditions
        candidates = inference.holm(p[:, len(PRIMARY):].ravel()).reshape(m, -1)  # over conditions x candidates
        adjusted = np.concatenate([primary, candidates], 1)
        tested = ~np.isnan(p)
        family = {key: f"{int(tested[:, k].sum())} conditions" if key in PRIMARY else
                  f"{int(tested[:, len(PRIMARY):].sum())} candidate tests" for k, key in enumerate(keys)}
        for c, (e, t) in enumerate(zip(found, tests, strict=True)):
            if t is None:
                continue
            for k, key in enumerate(keys):
                verdict = _scoped(key, t, e, scope, adjusted[c, k], family[key])
                claim = out[c].setdefault(key, Claim(Verdict("not tested"), Verdict("not tested")))
                setattr(claim, scope, verdict)
    for claims, e, t in zip(out, found, tests, strict=True):
        if t is None:
            continue
        claims["lu"] = lu(t, e, claims)
    return out


def _p(t: dict, key: str, scope: str) -> float:
    if key not in t:
        return np.nan
    return float(t[key].p[0] if scope == "images" else t[key].across().p[0])


def _scoped(key: str, t: dict, e: Evidence, scope: str, p: float, family: str) -> Verdict:
    claim = "explained" if key.startswith("explained_") else key
    if key not in t:
        return Verdict("not tested", detail="no run logged its partners" if claim == "explained" else "")
    test = t[key]
    if scope == "sets":
        if int(test.sets[0]) < MIN_SETS:
            return Verdict("not tested", detail=f"{int(test.sets[0])} data set{'s' * (int(test.sets[0]) != 1)}; "
                                                f"this scope needs {MIN_SETS} or more")
        return _verdict(claim, p, e.design, scope, family, _sets_text(test.across(), UNITS[claim]))
    if np.isnan(p):
        return Verdict("not tested", detail="no data set has two seeds" if key == "share" else "")
    return _verdict(claim, p, e.design, scope, family, _images_text(key, test, e))


def _images_text(key: str, test: inference.Test, e: Evidence) -> str:
    if key == "share":
        sets = int(test.sets[0])
        return f"kappa {float(test.statistic[0]):.2f}" + (f" over {sets} data sets" if sets > 1 else "")
    if key in ("one_to_one", "collapse"):
        return f"bijectivity {float(test.statistic[0]) / e.design.n / max(1, e.design.sets):.2f}"
    return f"{int(test.statistic[0])} of {int(e.valid.sum()) * e.design.n} rows"


def lu(t: dict, e: Evidence, claims: dict[str, Claim]) -> Verdict:
    """Lu et al.'s "a random one among many", judged on the data-only predictors (the untrained map deciding the
    pairs would be consistent with a random one, so it is no evidence against them)."""
    names = [f"explained_{c}" for c in PREDICTORS]
    explained = np.array([[t[k].p[0] if k in t else np.nan for k in names]])
    critical = simulate.critical_kappa(simulate.Design(e.design.sets, e.design.seeds, e.design.n))
    code = str(inference.lu_codes(t, inference.holm(explained), critical)[0])
    share, kappa = t["share"], float(t["share"].statistic[0])
    margin = simulate.KAPPA_MARGIN * (1 - 1 / e.design.n) * e.design.n  # kappa's margin as rows out of N
    if code == "no":
        found = [k.removeprefix("explained_") for k in names if claims.get(k) and claims[k].images.said == "yes"]
        why = (["the seeds of a data set share their partners"] if claims["share"].images.said == "yes" or
               share.p[0] < ALPHA / 2 else []) + \
            ([f"{', '.join(found)} explain{'s' * (len(found) == 1)} them"] if found else [])
        return Verdict("no", detail="; ".join(why) or "seed sharing or a predictor at p < 0.025")
    one_to_one = claims["one_to_one"].images.said == "yes"  # after Holm over conditions, as its sentence says
    if code == "yes" and one_to_one:
        return Verdict("yes", detail=f"mean kappa {kappa:.2f} < {critical:.2f}, the critical value at which seeds "
                                     f"sharing at kappa {simulate.KAPPA_MARGIN} ({margin:.1f} of {e.design.n} rows "
                                     "beyond chance) pass in 5% of studies; one-to-one; no data-only predictor "
                                     "detected")
    if code == "not tested":
        return Verdict("not tested", detail="no data set with two seeds' maps" if e.design.seeds < 2 else
                       "every seed pair collapsed onto one y, and kappa leaves collapsed pairs out")
    reasons = []
    if not one_to_one:
        reasons.append("one-to-one not detected")
    if int(share.sets[0]) < MIN_SETS:
        reasons.append(f"{int(share.sets[0])} data set(s) with a seed pair; agreeing needs {MIN_SETS}")
    elif not kappa < critical:
        reasons.append(f"mean kappa {kappa:.2f} is not below {critical:.2f}, the critical value for sharing at kappa "
                       f"{simulate.KAPPA_MARGIN} ({margin:.1f} of {e.design.n} rows beyond chance)")
    if any(k not in t for k in names):
        reasons.append("not every data-only predictor was logged")
    return Verdict("inconclusive", detail="; ".join(reasons) or "sharing neither shown nor excluded")


def n90(by_n: pd.Series) -> int | None:
    """The largest N up to which every N tried holds (mean forward_top1 >= 0.9); None when the smallest fails.
    A pass after a failure is no capacity: questions.n90_table shows it per N."""
    held = None
    for n, value in by_n.sort_index().items():
        if not value >= 0.9:
            break
        held = int(n)
    return held
