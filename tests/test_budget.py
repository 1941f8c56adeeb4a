"""Answers at a stated budget, each piece of evidence counted once: the stop = locked rule, budgets in G
steps, seed agreement against the maps' own marginals, N90 per whole condition, predictors counted per data
set, and locked_epoch censored at the last evaluation."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import store_in
from mlflow.tracking import MlflowClient

from analysis import capacity, dynamics, evidence, questions
from analysis.formation import formation, is_locked
from analysis.pairing import seed_agreement
from analysis.runs import settings
from cyclelike.config import ConfigError, RunConfig
from study.stores.mlflow import ensure_experiment, prepare_store
from study.tracking import RunLogger
from study.trial import run_trials


def test_two_collapsed_maps_do_not_agree():
    """Both seeds send every x to y_3: the share of equal a(i) is 1, but the marginals alone force it."""
    out = seed_agreement(np.full(10, 3), np.full(10, 3))
    assert out["pair/seed_agreement"] == 1.0
    assert out["pair/seed_kappa"] == pytest.approx(0.0)
    nearly = np.full(10, 3)
    nearly[0] = 4
    assert abs(seed_agreement(np.full(10, 3), nearly)["pair/seed_kappa"]) < 0.05


def test_seed_kappa_is_one_for_the_same_pairing_and_near_zero_for_independent_ones():
    rng = np.random.default_rng(0)
    perm = rng.permutation(10)
    assert seed_agreement(perm, perm)["pair/seed_kappa"] == pytest.approx(1.0)
    kappas = [seed_agreement(rng.permutation(10), rng.permutation(10))["pair/seed_kappa"] for _ in range(400)]
    assert abs(np.mean(kappas)) < 0.02


def test_n90_keeps_conditions_apart():
    """Aligned pairs reach 1.0 at N = 10 and 20, fixed 0.8: pooled, fixed would read 'N90 >= 10'."""
    rows = [{"pairing": p, "scheme": "cyclelike", "lambda_l1": 10.0, "epochs": 40, "arch": "unet", "base_filters": 32,
             "n_images": n, "seed": s, "pair/forward_top1": v, "model/generator_params": 1e6}
            for p, v in (("aligned", 1.0), ("fixed", 0.8)) for n in (10, 20) for s in (0, 1)]
    table = capacity.n90_table(evidence.given(pd.DataFrame(rows))).set_index("pairing")
    assert table.loc["aligned", "N90"] == ">= 20"
    assert table.loc["fixed", "N90"] == "-"
    assert len(table) == 2


def test_n90_interval_comes_from_each_seeds_own_n90():
    rows = [{"pairing": "fixed", "arch": "unet", "lambda_l1": 10.0, "epochs": 40, "n_images": n, "seed": s,
             "pair/forward_top1": v} for s, values in ((0, (1.0, 1.0, 0.5)), (1, (1.0, 0.6, 0.4)))
            for n, v in zip((10, 20, 40), values, strict=True)]
    row = capacity.n90_table(pd.DataFrame(rows)).iloc[0]
    assert row["N90"] == "10"  # mean at N = 20 is 0.8
    assert row["N90 per seed"] == "10 to 20"


def _predictor_runs(data_seeds: list[int], seeds: list[int]) -> pd.DataFrame:
    """Every seed's map is the pixel predictor's partners of its data set; the others' partners are random."""
    rng = np.random.default_rng(0)
    rows = []
    for d in data_seeds:
        partners = {name: rng.permutation(10) for name in questions.PREDICTORS}
        rows += [{"pairing": "shuffled", "scheme": "cyclelike", "lambda_l1": 0.0, "n_images": 10, "data_seed": d,
                  "seed": s, "tags.data_hash": f"h{d}", "assignment": partners["pixel"], "partners": partners,
                  **{f"pair/agree_{name}": 0.5 for name in questions.PREDICTORS}} for s in seeds]
    return pd.DataFrame(rows)


def test_six_seeds_of_one_data_set_answer_on_its_images_never_across_data_sets():
    table = questions.predictor_table(_predictor_runs([0], [0, 1, 2, 3, 4, 5])).set_index("candidate")
    assert table.loc["pixel", "on these images"].startswith("yes (60 of 60 rows")
    assert (table["across data sets"].str.startswith("not tested (1 data set")).all()


def test_predictor_hits_over_independent_data_sets_are_holm_corrected():
    table = questions.predictor_table(_predictor_runs([0, 1, 2, 3], [0, 1])).set_index("candidate")
    for scope in ("on these images", "across data sets"):
        assert table.loc["pixel", scope].startswith("yes") and "after Holm over 7 candidate tests" in \
            table.loc["pixel", scope]


def test_a_row_that_changed_at_the_last_evaluation_is_not_locked():
    epochs = [10, 20, 30]
    a = [np.array([0, 1, 2]), np.array([0, 1, 2]), np.array([1, 0, 2])]
    formed = formation(epochs, a, [0.0, 0.0, 0.0])
    assert np.isnan(formed.locked_epoch)  # rows 0 and 1 changed at epoch 30: the median row is not locked
    assert formed.locked_rows == 1
    steady = formation(epochs, [a[0], a[0], a[0]], [1.0] * 3)
    assert steady.locked_epoch == 10 and steady.locked_rows == 3
    assert formation(epochs, [a[0], a[2], a[2]], [0.0] * 3).locked_epoch == 20  # the whole map, from epoch 20
    assert np.isnan(formation([10], [a[0]], [1.0]).locked_epoch)  # one evaluation confirms nothing


def test_locked_rule_needs_patience_span_and_for_given_pairs_top1():
    a = np.array([0, 1, 2])
    assert is_locked([10, 20, 30], [a, a, a], [1.0] * 3, patience=2, patience_epochs=20, need_top1=True)
    assert not is_locked([10, 20, 30], [a, a, a], [1.0] * 3, patience=2, patience_epochs=30, need_top1=True)
    assert not is_locked([10, 20], [a, a], [1.0] * 2, patience=2, patience_epochs=0, need_top1=True)
    assert not is_locked([10, 20, 30], [a, a, a], [0.5] * 3, patience=2, patience_epochs=0, need_top1=True)
    assert is_locked([10, 20, 30], [a, a, a], [0.5] * 3, patience=2, patience_epochs=0, need_top1=False)
    assert not is_locked([10, 20, 30], [a, a[::-1], a], [1.0] * 3, patience=2, patience_epochs=0, need_top1=True)


def test_budget_in_the_originals_units():
    assert RunConfig(n_images=10, epochs=2000, batch_size=5).budget()["budget/g_steps"] == 8000
    assert RunConfig(n_images=20, epochs=10000, batch_size=5).budget()["budget/g_steps"] == 80000
    assert RunConfig(n_images=10, epochs=10, scheme="pix2pix").budget()["budget/g_steps"] == 20
    assert RunConfig(n_images=10, epochs=10, direction_schedule="joint").budget()["budget/g_steps"] == 20


@pytest.mark.parametrize("key,value", [("lr", float("inf")), ("lambda_l1", float("nan")),
                                       ("lambda_cyc", float("inf"))])
def test_non_finite_numbers_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        RunConfig.from_dict({key: value})


def test_stop_locked_ends_a_tiny_paired_run_before_its_budget(tmp_path):
    config = RunConfig(image_size=16, n_images=4, n_holdout=0, batch_size=2, base_filters=8, d_filters=8,
                       epochs=300, pairing="aligned", stop="locked", patience=2, patience_epochs=10, threads=1)
    with store_in(tmp_path) as uri:
        client = prepare_store(uri)
        logger = RunLogger.start(client, ensure_experiment(client, "locked"), "locked-run")
        (outcome,) = run_trials([config], [logger], eval_every=5, progress=False)
        logger.finish()
        run = MlflowClient(uri).get_run(logger.run_id)
        mlflow.set_tracking_uri(uri)
        saved = json.loads(Path(MlflowClient(uri).download_artifacts(logger.run_id, "pairing/assignment.json",
                                                                     str(tmp_path))).read_text())
        history = Path(MlflowClient(uri).download_artifacts(logger.run_id, "pairing/history.csv", str(tmp_path)))
    # the untrained map is kept (main logged it as metrics only): a candidate explanation of the pairs
    assert len(saved["a0"]) == 4 and history.read_text().splitlines()[1].startswith("0,")
    assert 0.0 <= outcome.metrics["pair/agree_initial"] <= 1.0
    assert outcome.stop_reason == "locked" and outcome.epochs_run < 300
    assert outcome.metrics["pair/forward_top1"] >= 0.9
    assert run.data.tags["stop/reason"] == "locked"
    assert float(run.data.tags["summary.stop/epoch"]) == outcome.epochs_run
    assert settings(run)["budget/g_steps"] == str(300 * 4)
    assert json.loads(settings(run)["budget/epochs"]) == 300


def test_fused_runs_are_their_own_timing_series():
    """A fused run's epoch time is its group's: fitted with single runs it would double the slope."""
    rows = [{"arch": "unet", "n_images": n, "time/seconds_to_pairs": k * (1.0 + 0.5 * n),
             "time/sec_per_epoch": k * 0.01 * n, "tags.fused_group": str(k) if k > 1 else None}
            for k in (1, 2) for n in (10, 20, 40)]
    _, fits = dynamics.seconds_to_pairs(pd.DataFrame(rows))
    fits = fits.set_index(["quantity", "series"])
    assert fits.loc[("time/seconds_to_pairs", "all runs"), "b (s per image)"] == 0.5
    assert fits.loc[("time/seconds_to_pairs", "all runs, 2 seeds fused"), "b (s per image)"] == 1.0


def test_chance_levels_are_never_pooled_across_n():
    t = pd.DataFrame([{"pairing": "shuffled", "scheme": "cyclegan", "lambda_l1": 0.0, "n_images": n, "seed": s,
                       "pair/bijectivity": 0.7, "pair/forward_top1": 0.2} for n in (5, 10) for s in (0, 1)])
    text = questions.unpaired_table(t).to_string()
    assert "0.15" not in text  # the mean of 1/5 and 1/10, which no run has
    assert "chance 0.20" in text and "chance 0.10" in text


def test_a_budget_that_grows_with_n():
    from study.spec import SweepError, parse_sweep

    raw = {"name": "cap", "epochs_per_image": 25, "fixed": {"image_size": 16}, "space": {"n_images": [10, 80]}}
    spec = parse_sweep(raw, "cap.toml")
    assert [spec.config_for(c, 0).epochs for c in spec.grid_cells()] == [250, 2000]
    assert spec.config_for({"n_images": 80}, 0).budget()["budget/g_steps_per_pair"] == 800
    with pytest.raises(SweepError, match="epochs_per_image"):
        parse_sweep({**raw, "fixed": {"epochs": 30}}, "cap.toml")


def test_p_values_and_intervals_have_no_chance_level():
    from analysis.assignment import chance_level

    assert chance_level("pair/forward_top1", 10) == 0.1
    for key in ("pair/forward_top1_pvalue", "pair/agree_edges_pvalue", "pair/mutual_ci_low"):
        assert chance_level(key, 10) is None, key


def test_the_answer_sets_the_finding_beside_lu_et_al_counting_data_sets_once():
    """Three data sets whose seeds share one one-to-one map each: on these images one-to-one and shared; across
    data sets the data set is the unit, with its own interval."""
    rng = np.random.default_rng(1)
    maps = [rng.permutation(10) for _ in range(3)]
    rows = [{"pairing": "shuffled", "scheme": "cyclegan", "lambda_l1": 0.0, "n_images": 10, "data_seed": d,
             "seed": s, "tags.data_hash": f"h{d}", "pair/bijectivity": 1.0, "pair/forward_top1": 0.1,
             "assignment": maps[d]} for d in range(3) for s in range(2)]
    text = questions.unpaired_answers(pd.DataFrame(rows))[0]
    assert "Lu et al. (AAAI 2019)" in text and "of cyclegan's maps here, this study does not agree" in text
    assert "one-to-one maps formed" in text and "across data sets: one-to-one yes" in text
    table = questions.unpaired_table(pd.DataFrame(rows)).iloc[0]
    assert "over 3 data sets, one-sided 95% lower bound" in table["one-to-one, across data sets"]


def test_n90_reads_a_budget_that_grows_with_n_as_part_of_n():
    rows = [{"pairing": "fixed", "arch": "unet", "lambda_l1": 10.0, "n_images": n, "epochs": 25 * n, "seed": s,
             "pair/forward_top1": v} for s in (0, 1) for n, v in ((10, 1.0), (20, 0.95), (40, 0.5))]
    table = capacity.n90_table(pd.DataFrame(rows))
    assert len(table) == 1 and table.iloc[0]["N90"] == "20"
