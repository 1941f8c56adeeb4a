"""Every claim's false-positive rate and power, measured by simulation at every design a shipped study runs
(analysis.calibration): a rate is held to the level plus two Monte Carlo standard errors, under independent maps
and under seeds that share one wrong map, and each design reaches power 0.8 at a stated effect."""

import math
import tomllib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from analysis import inference
from analysis.calibration import DESIGNS, NULLS, _cached_rate, _scopes, calibrate_n90
from analysis.simulate import Design, power_at
from cyclelike.execution import condition
from study.spec import parse_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "study" / "configs"
FREE = sorted({(d.sets, d.seeds, d.n) for d in DESIGNS})  # a rate at its level does not depend on the conditions


def shipped_designs(monkeypatch) -> dict[str, set[tuple[int, int, int, int]]]:
    """(data sets, seeds, N, conditions) of each question-1 family in every study/configs/*.toml: the conditions
    given no pair, and those given a new random partner every epoch (their collapse claim)."""
    monkeypatch.setenv("X_PATH", "/x")  # seed_pets_men.toml names the user's folders by variable
    monkeypatch.setenv("Y_PATH", "/y")
    out = {}
    for path in sorted(CONFIGS.glob("*.toml")):
        spec = parse_sweep(tomllib.loads(path.read_text()), path.name)
        families = defaultdict(lambda: defaultdict(set))
        for cell in spec.grid_cells():
            for seed in spec.seeds:
                c = spec.config_for(cell, seed)
                if c.pairing != "shuffled":
                    continue
                family = "unpaired" if c.lambda_l1 == 0 or c.scheme == "cyclegan" else "noisy"
                key = tuple(sorted((k, str(v)) for k, v in condition(c).items() if k != "data_seed"))
                # files of exactly N images give every data seed the same images: one data set
                families[family][key].add((c.data_seed if c.data in ("synthetic", "lfw") else 0, seed))
        out[path.name] = {(len({d for d, _ in reps}), len({s for _, s in reps}), int(dict(cond)["n_images"]),
                           len(conds)) for conds in families.values() for cond, reps in conds.items()}
    return out


def test_every_shipped_design_is_calibrated(monkeypatch):
    known = {(d.sets, d.seeds, d.n, d.conditions) for d in DESIGNS}
    for name, designs in shipped_designs(monkeypatch).items():
        assert designs <= known, f"{name}: {designs - known} is not in analysis.calibration.DESIGNS"


@pytest.mark.parametrize("sets,seeds,n", FREE, ids=[f"{a}x{b}xN{c}" for a, b, c in FREE])
def test_false_positive_rates_stay_within_two_standard_errors_of_the_level(sets, seeds, n):
    """Under independent maps and under seeds that share one wrong map (or share at the margin of "agrees"), over
    two simulation seeds of 500 studies each: each rate <= 0.05 + 2 SE (SE of a 5% rate over 1000 studies)."""
    design, studies, seeds_used = Design(sets, seeds, n), 500, (0, 1)
    bound = inference.ALPHA + 2 * math.sqrt(inference.ALPHA * (1 - inference.ALPHA) / (studies * len(seeds_used)))
    cache: dict = {}
    for claim, nulls in NULLS.items():
        for scope in _scopes(claim, design):
            for null in nulls:
                rate = np.mean([_cached_rate(cache, claim, design, null, scope, studies, s) for s in seeds_used])
                assert rate <= bound, f"{claim} ({scope}) under {null}: {rate:.3f} > {bound:.3f} at {design}"


# per design: a planted strength (the share of rows that follow what is planted) at which the claim, on these
# images, says yes in 80% of studies or more, in the claim's unit: forward_top1, bijectivity
STATED = {(3, 2, 10): {"order": 0.2, "one_to_one": 0.8}, (3, 2, 20): {"order": 0.15, "one_to_one": 0.7},
          (1, 3, 10): {"order": 0.3, "one_to_one": 0.95}, (5, 3, 10): {"order": 0.15, "one_to_one": 0.7},
          (1, 2, 5): {"order": 0.7, "collapse": 0.9}, (1, 2, 10): {"order": 0.3, "collapse": 0.6},
          (3, 3, 10): {"order": 0.15, "one_to_one": 0.7}}


@pytest.mark.parametrize("sets,seeds,n", FREE, ids=[f"{a}x{b}xN{c}" for a, b, c in FREE])
def test_each_design_has_power_at_its_stated_effect(sets, seeds, n):
    design = Design(sets, seeds, n)
    for claim, q in STATED[(sets, seeds, n)].items():
        power, effect = power_at(claim, design, q, "images", studies=300, seed=3)
        assert power >= 0.8, f"{claim} at q = {q} ({effect:.2f}): power {power:.2f} at {design}"


def test_three_data_sets_of_three_seeds_find_forward_top1_of_a_quarter():
    """The issue's target: at 3 x 3, N = 10, power 0.8 is reached at forward_top1 <= 0.25 (main's rule, every
    seed at p < 0.05 in enough data sets, needed about 0.54)."""
    power, effect = power_at("order", Design(3, 3, 10), 0.15, "images", studies=300, seed=4)
    assert power >= 0.8 and effect <= 0.25


def test_n90_at_capacity_toml_seeds_rarely_overshoots_and_finds_a_clear_break():
    seeds = len(tomllib.loads((CONFIGS / "capacity.toml").read_text())["seeds"])
    rates = calibrate_n90(seeds=seeds, studies=400)
    assert rates["overshoot (N90 > 40 where 85% hold past 40)"] <= 0.05
    assert rates["finds N* = 40 (0.5 past it)"] >= 0.95


def test_a_candidates_power_is_simulated_with_draws_that_can_pass_holm_over_eight():
    """With 199 draws the smallest p (0.005) times 8 candidates never passed 0.05 / 2: "power < 0.8 at any
    agreement" was said of a design that has it."""
    from analysis.simulate import detectable

    power, effect = detectable("explained", Design(3, 2, 10, 2), "images", inference.ALPHA / 2)
    assert power >= 0.8 and effect <= 0.35
