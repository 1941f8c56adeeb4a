"""The report, built from a small real sweep run here, checked against the MLflow numbers."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
from conftest import store_in, tiny_sweep
from mlflow.tracking import MlflowClient

from analysis.report import build_report
from study.spec import load_sweep
from study.stores.mlflow import ensure_experiment, prepare_store
from study.sweep import run_sweep
from study.tracking import RunLogger
from study.trial import run_trials

SWEEP = tiny_sweep("rep", epochs=5, extra="n_images = [4, 6]", eval_every="0",
                   pairing='["aligned", "shuffled"]').replace("n_images = 4\n", "", 1)  # swept, so not fixed


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    with store_in(folder) as uri:
        mlflow.set_tracking_uri(uri)
        (folder / "rep.toml").write_text(SWEEP)
        run_sweep(load_sweep(folder / "rep.toml"))
        client = MlflowClient(uri)
        # a trial that died before reporting any metric: the report must cope with it
        experiment_id = client.get_experiment_by_name("rep").experiment_id
        dead = client.create_run(experiment_id, run_name="trial-0099", tags={"trial": "99", "optuna.state": "FAIL"})
        client.set_terminated(dead.info.run_id, "FAILED")
        out = build_report("rep", folder / "reports" / "rep", str(folder / "mlruns" / "optuna.journal"), client)
        yield folder, client, out


def test_report_files_exist_and_every_figure_is_there(store):
    _, _, out = store
    md = (out / "report.md").read_text()
    html = (out / "index.html").read_text()
    figures = re.findall(r"\]\(([^)]+\.png)\)", md)
    assert len(figures) >= 10
    for name in figures:
        assert (out / name).stat().st_size > 1000, name
        assert f'src="{name}"' in html
    headings = re.findall(r"^## (.+)$", md, flags=re.M)
    assert headings == ["The answers", "1. The study at a glance", "2. Pair formation",
                        "3. How the pairs formed over time", "4. What decides the pairs when none is given",
                        "5. How far one G reaches", "6. Assignment pictures", "7. Parameter importance",
                        "8. Seconds per epoch against N", "9. Training curves", "10. Reproduction"]
    assert "could not be drawn" not in md
    assert "failed: 1" in md  # the dead trial is counted, not hidden


def test_report_numbers_match_mlflow(store):
    _, client, out = store
    md = (out / "report.md").read_text()
    runs = mlflow.search_runs(experiment_names=["rep"], filter_string="tags.`optuna.state` = 'COMPLETE'")
    assert len(runs) == 8
    targets = {"aligned": "pair given", "shuffled": "stored order (given a new random partner every epoch)"}
    # one row per whole condition (pairing and N both varied), named once in a legend: nothing pooled across N
    labels = dict(re.findall(r"([A-Z]) = (N=\d+, pairing=\w+)", md.split("## 3. ")[0].split("## 2. ")[1]))
    assert len(labels) == 4
    for (pairing, n), group in runs.groupby(["params.pairing", "params.n_images"]):
        label = next(k for k, v in labels.items() if v == f"N={n}, pairing={pairing}")
        f = group["metrics.pair/forward_top1"]
        cycle = group["metrics.pair/cycle_top1"].mean()
        assert re.search(rf"\| {label} \| {re.escape(targets[pairing])} \| {f.mean():.2f} \({f.min():.2f}-"
                         rf"{f.max():.2f}\) \| {1 / int(n):.2f} \|.*\| {cycle:.2f} \(chance {1 / int(n):.2f}\)", md)
    for n, group in runs.groupby("params.n_images"):
        median = round(group["metrics.time/sec_per_epoch"].median(), 4)
        assert re.search(rf"\| all runs \| {n} \| {median} \|", md), (n, median)
    assert "git commit" in md and "torch" in md


def test_report_on_missing_empty_and_single_run_experiments(store, tmp_path):
    folder, client, _ = store
    out = build_report("no-such-study", tmp_path / "missing", client=client)
    assert "There is no experiment 'no-such-study'" in (out / "report.md").read_text()
    ensure_experiment(client, "empty")
    out = build_report("empty", tmp_path / "empty", client=client)
    assert "has no trial runs yet" in (out / "report.md").read_text()
    prepare_store(client.tracking_uri)
    experiment_id = ensure_experiment(client, "single")
    logger = RunLogger.start(client, experiment_id, "run-1", tags={"study": "single"})
    from cyclelike.config import RunConfig

    run_trials([RunConfig(image_size=16, n_images=4, n_holdout=1, base_filters=8, d_filters=8, epochs=2)], [logger],
               eval_every=0, progress=False)
    logger.finish()
    out = build_report("single", tmp_path / "single", client=client)
    md = (out / "report.md").read_text()
    assert "one run only" in md and "2. Pair formation" in md and (out / "index.html").exists()


def test_report_command_says_when_the_experiment_is_missing(store, capsys, monkeypatch):
    from analysis.__main__ import main

    folder, _, _ = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlruns/mlflow.db")
    assert main(["report", "--experiment", "nope", "--out", str(folder / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no study 'nope'" in err and "studies there: " in err and "rep" in err
    assert not (folder / "nope").exists()


def test_report_reads_the_project_store_from_any_folder(store, tmp_path, monkeypatch):
    """One store for every command: started elsewhere, the report finds the study the sweep wrote."""
    from analysis.__main__ import main

    folder, _, _ = store
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")  # --store wins over it: restored after
    monkeypatch.setenv("CYCLELIKE_STORE", "")
    assert main(["report", "--store", str(folder / "mlruns"), "--experiment", "rep", "--out",
                 str(tmp_path / "rep")]) == 0
    assert "forward_top1" in (tmp_path / "rep" / "report.md").read_text()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_a_report_on_a_store_that_does_not_exist_is_one_line_and_creates_nothing(tmp_path, capsys, monkeypatch):
    from analysis.__main__ import main

    monkeypatch.setenv("CYCLELIKE_STORE", "")  # --store sets it: restored after
    assert main(["report", "--store", str(tmp_path / "none"), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"no MLflow store at {tmp_path / 'none' / 'mlflow.db'}" in err
    assert not (tmp_path / "none").exists() and not (tmp_path / "rep").exists()


def test_a_report_to_a_folder_that_cannot_be_written_is_one_line(store, capsys, monkeypatch):
    from analysis.__main__ import main

    folder, _, _ = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlruns/mlflow.db")
    assert main(["report", "--experiment", "rep", "--out", "/proc/nope/rep"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write the report to /proc/nope/rep" in err


def test_a_section_that_fails_makes_the_report_exit_non_zero(store, tmp_path, capsys, monkeypatch):
    """The page is still written, but the exit code and one line say which section is missing."""
    import analysis.report
    from analysis.__main__ import main

    def broken(*_):
        raise ValueError("'yerr' must not contain negative values")

    folder, _, _ = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlruns/mlflow.db")
    for name in dir(analysis.report):  # the others drawn as nothing: their pictures cost seconds
        if name.startswith("section_"):
            monkeypatch.setattr(analysis.report, name, broken if name == "section_scaling" else lambda *_: None)
    assert main(["report", "--experiment", "rep", "--out", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and "section(s) scaling could not be drawn" in err[-1]
    assert "could not be drawn: ValueError" in (tmp_path / "rep" / "report.md").read_text()


def test_the_store_is_anchored_to_the_project_not_the_current_folder(tmp_path, monkeypatch):
    from analysis import store

    for name in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE", "CYCLELIKE_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    project = Path(__file__).resolve().parents[1]
    assert store.tracking_uri() == f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    assert store.optuna_storage() == str(project / "mlruns" / "optuna.journal")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlruns/mlflow.db")  # relative: still the project's
    assert store.tracking_uri() == f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"


def test_shuffled_runs_are_not_labelled_as_a_given_pair():
    import numpy as np

    from analysis.figures import distance_heatmap

    D = np.random.default_rng(0).random((4, 4))
    labels = {p: [t.get_text() for t in distance_heatmap(D, D.argmin(1), np.arange(4), pairing=p).legends[0]
                  .get_texts()] for p in ("fixed", "shuffled")}
    assert "given pair (pi(i))" in labels["fixed"]
    assert not any("given pair" in t for t in labels["shuffled"])
    assert any("stored order" in t for t in labels["shuffled"])


def test_index_html_renders_in_headless_chromium(store):
    _, _, out = store
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium where it can)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={out.parent / 'chromium-profile'}", "--virtual-time-budget=10000"]
    page = (out / "index.html").as_uri()
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    assert images >= 10
    assert 'data-broken-images="0"' in dom
    assert 'data-wide-tables="0"' in dom  # every table fits the text column
    shot = out / "screenshot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2400", page], capture_output=True,
                   timeout=120)
    assert shot.exists() and shot.stat().st_size > 20000
    keep = os.environ.get("REPORT_SCREENSHOT")  # a person can look at it: REPORT_SCREENSHOT=/tmp/shot.png
    if keep:
        shutil.copy(shot, keep)


def test_wall_time_is_the_union_of_the_trials_run_times():
    """A killed and a resumed invocation: the time trials ran, not the last invocation's nor the calendar span."""
    import pandas as pd

    from analysis.runs import busy_seconds

    t0 = pd.Timestamp("2026-01-01")
    s = lambda x: t0 + pd.Timedelta(seconds=x)  # noqa: E731
    runs = pd.DataFrame({"start_time": [s(0), s(5), s(100), s(101)], "end_time": [s(10), s(20), s(130), s(110)]})
    assert busy_seconds(runs) == 20 + 30


def test_one_reliable_rule_on_hand_made_fits():
    """The same rule for every fit: a clean line passes, a poor R^2 fails, a clearly negative fixed cost
    fails, and a fixed cost a hair below zero within its own interval passes (it did not, before)."""
    import numpy as np

    from analysis.scaling import fit_scaling

    n = np.array([5, 10, 20, 40, 5, 10, 20, 40], dtype=float)
    wobble = np.array([1, -1, 1, -1, -1, 1, -1, 1]) * 0.002
    assert fit_scaling(n, 0.01 + 0.02 * n + wobble).verdict() == "yes"
    assert fit_scaling(n, -0.0005 + 0.02 * n + wobble).verdict() == "yes"  # -0.0005 s is noise here
    negative = fit_scaling(n, -0.2 + 0.02 * n + wobble / 10)
    assert "negative intercept" in negative.verdict() and negative.a_high < 0
    noisy = fit_scaling(n, 0.5 + 0.001 * n + np.array([0.3, -0.3, 0.2, -0.2, -0.3, 0.3, -0.2, 0.2]))
    assert "R^2" in noisy.verdict() and "< 0.9" in noisy.verdict()
    assert "2 distinct N fit any line" in fit_scaling(np.array([10.0, 20.0]), np.array([1.5, 2.89])).verdict()


def test_a_runs_matrix_picture_has_the_report_heatmaps_colours():
    """matrix_image keeps seaborn's mako as a table of its own (seaborn costs a sweep process a second): each
    cell the colour seaborn's map gives it, constant, NaN and float32 matrices included."""
    import numpy as np
    import seaborn as sns

    from analysis.figures import matrix_image

    mako = sns.color_palette("mako", as_cmap=True)
    rng = np.random.default_rng(0)
    nan = rng.random((5, 5))
    nan[1, 2] = np.nan
    for D in (rng.random((7, 7)), rng.random((6, 6)).astype(np.float32), np.full((3, 3), 0.4), nan,
              np.linspace(0, 1, 300).reshape(15, 20)):
        span = np.ptp(D) or 1.0
        expected = (mako((D - D.min()) / span)[..., :3] * 255).astype(np.uint8)
        assert np.array_equal(matrix_image(D, cell=1), expected)


def test_one_colour_per_pairing_in_every_panel():
    import numpy as np
    import pandas as pd
    from matplotlib.colors import to_hex

    from analysis.figures import PAIRING_COLOURS
    from analysis.study_sections import plot_metric

    rng = np.random.default_rng(0)
    t = pd.DataFrame({"pairing": np.repeat(["aligned", "fixed", "shuffled"], 4), "n_images": [5, 10] * 6,
                      "pair/forward_top1": rng.random(12)})
    fig = plot_metric(t, "pair/forward_top1", ["pairing", "n_images"])
    for ax in fig.axes:
        drawn = {to_hex(line.get_color()) for line in ax.lines if line.get_label() != "chance" and
                 to_hex(line.get_color()) != "#000000"}
        assert drawn <= {to_hex(c) for c in PAIRING_COLOURS.values()}, drawn
        assert len(drawn) == 3


def test_the_answers_say_what_this_study_found(store):
    """The first screen speaks to every question the study can: collapse with a noisy pair, the time per
    epoch against N, and when the given pairs formed."""
    _, _, out = store
    first = (out / "report.md").read_text().split("## 1. ")[0]
    # one sentence for the conditions given a new random partner every epoch (N = 4 and 6), their rows below it
    assert first.count("With a new random partner every epoch as its L1 target (2 conditions, 5 epochs)") == 1
    assert "Per condition given a new random partner every epoch" in first
    assert "Seconds per epoch against N (1 is linear; the original's two timings give 0.946)" in first
    assert "log-log slope" in first and "reliable:" in first


def test_a_table_of_contents_and_links_to_each_named_run(store, tmp_path):
    _, client, out = store
    md = (out / "report.md").read_text()
    assert "- [1. The study at a glance](#1-the-study-at-a-glance)" in md
    html = (out / "index.html").read_text()
    assert '<a href="#1-the-study-at-a-glance">' in html and '<h2 id="1-the-study-at-a-glance">' in html
    assert "#/experiments/" not in md  # no UI address known: no dead links
    linked = build_report("rep", tmp_path / "linked", client=client, ui="http://127.0.0.1:5000")
    experiment = client.get_experiment_by_name("rep").experiment_id
    assert re.search(rf"\]\(http://127\.0\.0\.1:5000/#/experiments/{experiment}/runs/[0-9a-f]{{32}}"
                     r"\?workflowType=machine_learning\)",
                     (linked / "report.md").read_text())


def test_a_report_against_a_tracking_server_that_does_not_answer_is_one_line_and_exit_3(monkeypatch, capsys):
    """As a sweep's outage is: exit 3 and one line, in seconds (MLflow's own retries took minutes)."""
    from analysis.__main__ import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert main(["report", "--experiment", "rep"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot read the MLflow store http://127.0.0.1:9")


def test_runs_record_the_device_and_precision_their_times_were_made_with(store):
    """The report sets seconds per epoch beside the original's with the CPU or GPU and the precision that made them
    (issue 37), and fits a sweep's runs timed alone, one worker."""
    from analysis import dynamics
    from analysis.runs import complete, load_study_runs
    from study import autotune

    _, client, _ = store
    t = complete(load_study_runs(client, "rep").trials)
    assert (t["tags.timing.workers"] == "1").all() and (t["tags.timing.cpu"] == autotune.cpu_model()).all()
    assert (t["tags.timing.gpu"] == autotune.gpu_name()).all() and t["precision"].isin(["fp32", "bf16"]).all()
    assert not dynamics.device_label(t).str.contains("not recorded").any()
    sentence = dynamics.scaling_answers(t)[0]
    assert "log-log slope" in sentence and "not measured alone" not in sentence and "left out" not in sentence
