"""The two open questions: data-only predictors on images whose answer is known, N90 and the answers'
sentences on hand-made tables, and the shipped unpaired and capacity sweeps, shrunk, producing their
report sections."""

import json
import tomllib
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import store_in
from mlflow.tracking import MlflowClient

from analysis import capacity, dynamics, evidence, questions
from analysis.assignment import chance_band
from analysis.pairing import bijectivity, evaluate_pairing
from analysis.report import build_report
from study.spec import parse_sweep
from study.sweep import run_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "study" / "configs"
PI = np.array([2, 0, 1, 5, 3, 4])


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    """Blobs in distinct places and colours: each image's layout and colours are its own."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 3, 16, 16), -0.8)
    for i in range(n):
        r, c = divmod(int(torch.randint(0, 64, (1,), generator=g)), 8)
        x[i, :, r : r + 6, c : c + 6] = torch.rand(3, 1, 1, generator=g) * 1.6 - 0.8
    return x


def _partners(x: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
    """Each predictor's partners as a trial records them (PairingResult.partners, what the claims read)."""
    return evaluate_pairing(lambda im: im, None, x, y).partners


def test_pixel_predictor_pairs_noisy_copies():
    x = _images()
    y = x[PI] + 0.02 * torch.randn(x[PI].shape, generator=torch.Generator().manual_seed(1))
    assert (_partners(x, y)["pixel"] == np.argsort(PI)).all()


def test_edge_predictor_pairs_negatives_where_pixels_cannot():
    """y_j = -x_pi(j): every colour inverted, every outline kept. Edge maps pair them all; pixel L1 cannot."""
    x = _images()
    partners = _partners(x, -x[PI])
    assert (partners["edges"] == np.argsort(PI)).all()
    assert (partners["pixel"] != np.argsort(PI)).any()


def test_lowpass_predictor_ignores_high_frequency_noise():
    """y_j = x_pi(j) under a strong checkerboard of its own phase: the blur removes it, pixel L1 does not."""
    x = _images()
    board = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1.0
    y = torch.stack([x[p] + 0.9 * board * (1 if j % 2 else -1) for j, p in enumerate(PI)])
    assert (_partners(x, y)["lowpass"] == np.argsort(PI)).all()


def test_chance_bands_are_the_random_maps_central_range():
    d = bijectivity(np.arange(10), 10)
    assert chance_band("pair/bijectivity", 10) == (d.null_low, d.null_high)
    assert chance_band("pair/forward_top1", 10) == (0.0, 0.3)  # a random permutation: >= 4 fixed points 1.9%
    assert chance_band("pair/margin", 10) is None


def _given(rows):
    return pd.DataFrame([{"pairing": "fixed", "scheme": "cyclelike", "lambda_l1": 10.0, "epochs": 40, "arch": a,
                          "base_filters": w, "n_images": n, "pair/forward_top1": v, "model/generator_params": p}
                         for a, w, n, v, p in rows])


def test_n90_is_the_largest_n_up_to_which_every_n_held():
    t = _given([("unet", 16, 10, 1.0, 2e5), ("unet", 16, 20, 0.95, 2e5), ("unet", 16, 40, 0.6, 2e5),
                # not monotone: the pass at 80 after the failure at 40 is no capacity (main said N90 = 80)
                ("unet", 16, 80, 0.92, 2e5), ("unet", 16, 160, 0.3, 2e5),
                ("unet", 64, 10, 1.0, 3e6), ("unet", 64, 20, 1.0, 3e6),
                ("encdec", 16, 10, 0.5, 1e5), ("encdec", 16, 20, 0.2, 1e5)])
    table = capacity.n90_table(evidence.given(t)).set_index(["arch", "base_filters"])
    assert table.loc[("unet", 16), "N90"] == "20" and table.loc[("unet", 16), "pairs per M params"] == 100.0
    assert "80: 0.92" in table.loc[("unet", 16), "top1 per N"]  # shown per N, not taken
    assert table.loc[("unet", 64), "N90"] == ">= 20"  # reached at the largest N tried: a lower bound
    assert table.loc[("encdec", 16), "N90"] == "-"
    sentence = capacity.capacity_answers(t)[0]
    assert "within 40 epochs" in sentence and "encdec 16 at no N tried (the smallest, N = 10, reached 0.50)" in sentence


def test_answers_name_the_part_a_study_has_no_data_for():
    t = _given([("unet", 16, 10, 1.0, 2e5), ("unet", 16, 20, 0.95, 2e5)])
    out = questions.answers(t)
    assert out[0].startswith("Question 1") and "unpaired.toml" in out[0]
    assert out[1].startswith("Given the pair (fixed pairing)")
    assert questions.answers(t.iloc[0:0])[1].startswith("Question 2")


def _shrunk(name: str, fixed: dict, space: dict, seeds: list[int]) -> object:
    raw = tomllib.loads((CONFIGS / f"{name}.toml").read_text())
    raw["fixed"] = {k: v for k, v in (raw["fixed"] | fixed).items() if k not in space}  # a key is fixed or swept
    if "epochs" in fixed:
        raw.pop("epochs_per_image", None)  # a shrunk budget: a fixed number of epochs at every N
    raw["space"] = space
    raw["seeds"] = seeds
    raw["eval_every"] = 2
    return parse_sweep(raw, f"{name}.toml (shrunk)")


TINY = {"image_size": 16, "epochs": 4, "base_filters": 4, "d_filters": 4, "n_holdout": 2, "batch_size": 2}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("questions")
    with store_in(folder) as uri:
        mlflow.set_tracking_uri(uri)
        run_sweep(_shrunk("unpaired", TINY, {"scheme": ["cyclelike", "cyclegan"], "n_images": [4]}, [0, 1]))
        capacity = TINY | {"epochs": 3}
        capacity.pop("base_filters")
        run_sweep(_shrunk("capacity", capacity, {"n_images": [4, 6], "base_filters": [4, 8]}, [0]))
        client = MlflowClient(uri)
        yield {name: (build_report(name, folder / "reports" / name, str(folder / "mlruns" / "optuna.journal"),
                                   client) / "report.md").read_text() for name in ("unpaired", "capacity")}, client


def test_tiny_unpaired_study_answers_question_1_first(studies):
    md = studies[0]["unpaired"]
    first = md.split("## 1. ")[0]
    assert "## The answers" in first
    assert "Conditions: A = scheme=cyclegan; B = scheme=cyclelike." in first  # each named once, in a legend
    assert "Given no pair, A (the cyclegan baseline)" in first and "B (the one G (lambda_l1 = 0" in first
    assert "Question 2 (how far one G reaches)" in first  # the part it has no data for, in a sentence
    # one data set: an answer on its images, none across data sets
    assert "2 runs on 1 data set: on these images, " in first and "across data sets not tested (1 data set" in first
    assert "kappa" in first and "How each verdict is decided" in first
    assert "What decides the pairs when none is given" in md and "predictors.png" in md
    assert "formation.png" in md and "could not be drawn" not in md


def test_tiny_capacity_study_gives_n90_with_parameter_counts(studies):
    md = studies[0]["capacity"]
    first = md.split("## 1. ")[0]
    assert "Given the pair (fixed pairing), within 3 epochs" in first and "Question 1" in first
    assert "How far one G reaches" in md and "capacity.png" in md and "holdout_" in md
    runs = mlflow.search_runs(experiment_names=["capacity"])
    runs = runs[runs["tags.summaries"].notna()].copy()  # the trials, not the study's parent run
    runs["generator_params"] = runs["tags.summaries"].map(lambda v: float(json.loads(v)["model/generator_params"]))
    params = runs.groupby("params.base_filters")["generator_params"].first()
    for width, count in params.items():
        assert f"| unet | {width} | 16 |" in md and f"{count / 1e6:.3f}" in md
    assert "could not be drawn" not in md


def test_seconds_to_pairs_is_fitted_per_series_and_counts_runs_that_never_paired():
    rows = [{"arch": arch, "n_images": n, "time/seconds_to_pairs": a + b * n, "time/sec_per_epoch": 0.01 * n}
            for arch, a, b in (("unet", 1.0, 0.5), ("encdec", 2.0, 2.0)) for n in (10, 20, 40)]
    rows.append({"arch": "unet", "n_images": 80, "time/seconds_to_pairs": float("nan"), "time/sec_per_epoch": 0.8})
    fig, fits = dynamics.seconds_to_pairs(pd.DataFrame(rows))
    assert fig is not None
    fits = fits.set_index(["quantity", "series"])
    assert fits.loc[("time/seconds_to_pairs", "unet"), "b (s per image)"] == 0.5
    assert fits.loc[("time/seconds_to_pairs", "encdec"), "a (s)"] == 2.0
    assert fits.loc[("time/seconds_to_pairs", "unet"), "runs without a value"] == 1
    assert fits.loc[("time/sec_per_epoch", "unet"), "runs"] == 4


def test_the_report_counts_killed_failed_and_orphan_trials_and_names_missing_cells():
    """It had no killed count and never mentioned a missing cell or an orphan trial."""
    from analysis.conditions import missing_cells

    t = pd.DataFrame([
        {"pairing": "aligned", "n_images": 5, "seed": 0, "state": "COMPLETE", "status": "FINISHED",
         "tags.resumes": "1"},
        {"pairing": "aligned", "n_images": 5, "seed": 1, "state": "FAIL", "status": "KILLED",
         "tags.failure": "killed: its process died while the trial was RUNNING"},
        {"pairing": "aligned", "n_images": 5, "seed": 1, "state": "COMPLETE", "status": "FINISHED"},
        {"pairing": "fixed", "n_images": 5, "seed": 0, "state": "FAIL", "status": "FAILED",
         "tags.failure": "Traceback ...\nDataError: x_path does not exist"},
        {"pairing": "fixed", "n_images": 5, "seed": 1, "state": "RUNNING", "status": "RUNNING"},
    ])
    missing = missing_cells(t, {"pairing": ["aligned", "fixed"], "n_images": [5]}, [0, 1])
    assert missing == [{"n_images": 5, "pairing": "fixed", "seed": 0}, {"n_images": 5, "pairing": "fixed", "seed": 1}]
    text = questions.ledger_text(t, missing)
    assert "1 kill(s) resumed" in text and "1 run(s) killed and not resumed" in text
    assert "1 failed (1: DataError: x_path does not exist)" in text and "1 still RUNNING" in text
    assert "2 cell(s) of the grid without a finished run: n_images=5, pairing=fixed, seed=0" in text
