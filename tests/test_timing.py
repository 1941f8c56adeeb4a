"""Issue 37: a timing study times alone, its fits take only runs timed alone, and the report sets its absolute
seconds per epoch beside the original's, with the device and precision that made them."""

import pytest

from study import autotune
from study.spec import load_sweep, parse_sweep
from study.sweep import execution

SCALING = "study/configs/scaling.toml"
ALONE = 'CYCLELIKE_STORE=mlruns/alone make sweep CONFIG=study/configs/scaling.toml ARGS="--workers 1"'


def sweep(**top) -> dict:
    return {"name": "t", "fixed": {"image_size": 16}, "space": {"n_images": [4, 8]}, **top}


def test_a_timing_study_under_auto_runs_one_trial_at_a_time_with_every_thread(monkeypatch, capsys):
    """On the issue's 2-core machine auto chose 2 workers x 1 thread for the scaling study: every time per epoch was
    measured beside another trial (1.87 s at N = 10, 0.96 s alone)."""
    monkeypatch.setattr(autotune, "cores", lambda: 4)
    # what auto measured there: two workers finish the most trials per hour
    monkeypatch.setattr(autotune, "tune", lambda *a, **k: autotune.Tuning("m", "c", {"2x2": 9.0}, 0.0, 2, 2, False))
    monkeypatch.setattr(autotune, "typical_cell", lambda configs: configs[0])
    assert execution(parse_sweep(sweep()), "auto", "auto") == (2, 2, False)  # any other study fills the machine
    capsys.readouterr()
    by_objective = parse_sweep(sweep(objectives=["time/sec_per_epoch"], directions=["minimize"]))
    assert execution(by_objective, "auto", "auto") == (1, 4, False)
    by_mark = parse_sweep(sweep(timing=True))
    assert execution(by_mark, "auto", "auto") == (1, 4, False)
    assert capsys.readouterr().out == ""
    assert execution(by_mark, 2, "off") == (2, 2, False)  # asked for: run as asked, and said in one line
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and "timing study" in said and "contention" in said


def test_the_shipped_scaling_study_is_a_timing_study_whose_n10_cell_is_the_benchs_seed_workload():
    """`make bench`'s seed row and the scaling study's N = 10 must time the same work to be compared (issue 37)."""
    from study.bench import SEED

    spec = load_sweep(SCALING)
    assert spec.timing and spec.is_timing
    cell = spec.config_for({"n_images": 10}, 0)
    budget = ("epochs", "warmup_epochs")
    assert {k: v for k, v in cell.identity().items() if k not in budget} == \
        {k: v for k, v in SEED.identity().items() if k not in budget}


def test_a_timing_studys_plan_is_scaled_from_its_own_largest_n():
    """A fixed cost per epoch makes a small N's time per image several times a large N's: a plan from their median
    is off by as much, and a timing study spends most of its time at its largest N."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    from study.sweep import estimate

    study = optuna.create_study()
    for n, seconds in ((5, 0.5), (10, 0.6), (80, 2.4)):  # 0.1, 0.06 and 0.03 s per image
        study.add_trial(optuna.trial.create_trial(
            value=seconds, params={"n_images": n}, distributions={"n_images": CategoricalDistribution([5, 10, 80])},
            user_attrs={"timing": {"sec_per_epoch": seconds}, "condition": {"n_images": n, "image_size": 16}}))
    fixed = {"image_size": 16, "epochs": 4}
    timing = parse_sweep({"name": "t", "objectives": ["time/sec_per_epoch"], "directions": ["minimize"],
                          "fixed": fixed, "space": {"n_images": [40]}})
    seconds, text = estimate(study, timing, 1, threads=1, workers=1)
    assert "the 1 finished trial(s)" in text and seconds == pytest.approx(2.4 / 80 * 40 * 4 * 1.1)
    other = parse_sweep({"name": "o", "fixed": fixed, "space": {"n_images": [40]}})
    assert "the 3 finished trial(s)" in estimate(study, other, 1, threads=1, workers=1)[1]  # any other: their median
