"""Issue 37: a timing study times alone, its fits take only runs timed alone, and the report sets its absolute
seconds per epoch beside the original's, with the device and precision that made them."""

import pandas as pd
import pytest

from analysis import dynamics
from cyclelike.execution import identity
from study import autotune
from study.autotune import plan_workers
from study.spec import load_sweep, parse_sweep

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
    assert plan_workers(parse_sweep(sweep()), "auto", "auto") == (2, 2, False)  # any other study fills the machine
    capsys.readouterr()
    by_objective = parse_sweep(sweep(objectives=["time/sec_per_epoch"], directions=["minimize"]))
    assert plan_workers(by_objective, "auto", "auto") == (1, 4, False)
    by_mark = parse_sweep(sweep(timing=True))
    assert plan_workers(by_mark, "auto", "auto") == (1, 4, False)
    assert capsys.readouterr().out == ""
    assert plan_workers(by_mark, 2, "off") == (2, 2, False)  # asked for: run as asked, and said in one line
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and "timing study" in said and "contention" in said


def test_the_shipped_scaling_study_is_a_timing_study_whose_n10_cell_is_the_benchs_seed_workload():
    """`make bench`'s seed row and the scaling study's N = 10 must time the same work to be compared (issue 37)."""
    from bench.cpu import SEED

    spec = load_sweep(SCALING)
    assert spec.timing and spec.is_timing
    cell = spec.config_for({"n_images": 10}, 0)
    budget = ("epochs", "warmup_epochs")
    assert {k: v for k, v in identity(cell).items() if k not in budget} == \
        {k: v for k, v in identity(SEED).items() if k not in budget}


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


def runs(rows: list[dict], **tags) -> pd.DataFrame:
    base = {"image_size": 128, "batch_size": 5, "arch": "unet", "base_filters": 64, "tags.study": "scaling",
            "tags.timing.workers": "1",
            "tags.command": "python -m study sweep --config study/configs/scaling.toml --workers auto"}
    return pd.DataFrame([{**base, **tags, **r} for r in rows])


def test_a_fit_through_contended_times_is_never_called_reliable():
    """The issue's report said "every run was timed beside other workers ... reliable: yes" of one fit."""
    t = runs([{"n_images": n, "time/sec_per_epoch": 0.18 * n + 0.01 * (n % 3)} for n in (5, 10, 20, 40, 80)],
             **{"tags.timing.workers": "2"})
    text = " ".join(dynamics.scaling_answers(t))
    assert "reliable: yes" not in text and "not measured alone" in text and ALONE in text
    fitted, caveat = dynamics.fitted_runs(t)
    assert fitted.empty and "not measured alone" in caveat
    pairs = t.assign(**{"time/seconds_to_pairs": t["time/sec_per_epoch"] * 30, "pairing": "aligned"})
    _, fits = dynamics.seconds_to_pairs(pairs)
    assert not (fits.get("reliable", pd.Series(dtype=str)) == "yes").any()


def test_the_absolute_figures_stand_beside_the_originals_with_device_and_precision():
    cpu = {"tags.resolved.device": "cpu", "tags.timing.cpu": "AMD EPYC 7B13", "tags.timing.gpu": "no GPU",
           "precision": "bf16", "threads": 2}
    gpu = {"tags.resolved.device": "cuda", "tags.timing.cpu": "Intel Xeon", "tags.timing.gpu": "NVIDIA H200",
           "precision": "fp32", "threads": 16}
    t = runs([{**cpu, "n_images": 10, "time/sec_per_epoch": 0.96}, {**cpu, "n_images": 20, "time/sec_per_epoch": 1.9},
              {**cpu, "n_images": 10, "time/sec_per_epoch": 1.87, "tags.timing.workers": "2"},
              {**gpu, "n_images": 10, "time/sec_per_epoch": 0.07}, {**gpu, "n_images": 20, "time/sec_per_epoch": 0.12},
              {**cpu, "n_images": 40, "time/sec_per_epoch": 3.8}])
    sentences, table = dynamics.absolute_figures(t)
    said = sentences[0]
    assert "(1.5 s at N = 10 and 2.89 s at N = 20; 128 px, batch 5, unet 64, one GPU of 2018)" in said
    assert "AMD EPYC 7B13 (CPU, bf16, 2 threads): 0.96 s at N = 10 (0.64x the original's), 1.9 s at N = 20 " \
           "(0.66x the original's)" in said
    assert "NVIDIA H200 (GPU, fp32): 0.07 s at N = 10 (0.047x the original's), 0.12 s at N = 20 " \
           "(0.042x the original's)" in said
    assert "1.87" not in said and "(left out: 1 run(s) timed beside other workers of their sweep)" in said
    assert list(table["N"]) == [10, 20] and list(table.iloc[:, 1]) == [1.5, 2.89]
    assert list(table.columns[2:]) == ["AMD EPYC 7B13 (CPU, bf16, 2 threads)", "NVIDIA H200 (GPU, fp32)"]
    assert table.iloc[1, 3] == 0.12
    assert said in dynamics.scaling_answers(t)  # on the first screen too


def test_absolute_figures_from_contended_runs_are_not_measured_alone():
    contended = runs([{"n_images": n, "time/sec_per_epoch": 0.1 * n} for n in (10, 20)], **{"tags.timing.workers": "2"})
    sentences, table = dynamics.absolute_figures(contended)
    assert "not measured alone" in sentences[0] and ALONE in sentences[0] and table.empty
    assert "x the original's" not in sentences[0] and "1 s" not in sentences[0]  # no contended figure is set beside it


def test_absolute_figures_of_runs_that_did_not_record_their_device_say_so():
    older = runs([{"n_images": 10, "time/sec_per_epoch": 0.5, "precision": "auto"}])
    sentences, _ = dynamics.absolute_figures(older)
    assert "device not recorded (precision auto): 0.5 s at N = 10 (0.33x the original's), no run at N = 20" \
        in sentences[0]


def test_runs_of_another_workload_have_no_absolute_figures_beside_the_originals():
    for change in ({"image_size": 32}, {"batch_size": 4}, {"base_filters": 8}, {"arch": "encdec"}):
        sentences, table = dynamics.absolute_figures(runs([{"n_images": 10, "time/sec_per_epoch": 0.5}], **change))
        assert sentences == [] and table.empty
