"""Bad input ends before anything is created, in one line with exit 2: data that cannot be loaded, an N that cannot
fit, a seed the generators cannot take, a change an existing study cannot absorb. A refusal leaves the study's
parent run as it was."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import run_main, store_in, write_sweep
from mlflow.tracking import MlflowClient
from PIL import Image

from study.spec import SweepError, load_sweep, parse_sweep
from study.sweep import prepare


def _one_line_refusal(code: int, said: str, *words: str) -> None:
    last = said.strip().splitlines()[-1] if said.strip() else ""
    assert code == 2 and "Traceback" not in said and last.startswith("error:"), said[-3000:]
    assert all(w in last for w in words), last


def _pngs(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def _h5(path: Path, values: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f["train_data_raw"] = values
        f["train_data_gen"] = values
    return path


def _data(tmp: Path, case: str) -> tuple[dict, list[str]]:
    """[fixed] lines for a data source with one defect, and words the refusal names."""
    good = _pngs(tmp / "good", 6)
    if case == "missing folder":
        return {"data": "folders", "x_path": tmp / "nowhere", "y_path": good}, ["nowhere", "does not exist"]
    if case == "empty folder":
        (tmp / "empty").mkdir()
        return {"data": "folders", "x_path": tmp / "empty", "y_path": good}, ["empty", "no images"]
    if case == "too few images":
        return {"data": "folders", "x_path": _pngs(tmp / "few", 2), "y_path": good}, ["few", "has 2 images"]
    if case == "corrupt png":
        bad = _pngs(tmp / "bad", 6)
        (bad / "03.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
        return {"data": "folders", "x_path": bad, "y_path": good}, ["03.png", "cannot read image"]
    pixels = np.random.default_rng(0).uniform(0, 255, (6, 16, 16, 3))
    if case == "bad FILE:KEY":
        return {"data": "hdf5", "x_path": f"{_h5(tmp / 'd.h5', pixels)}:no_such_key"}, ["no_such_key", "no dataset"]
    pixels[2, 3, 4, 1] = np.nan
    return {"data": "hdf5", "x_path": _h5(tmp / "nan.h5", pixels)}, ["nan.h5", "NaN"]


DATA_CASES = ["missing folder", "empty folder", "too few images", "corrupt png", "bad FILE:KEY", "nan pixels"]


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_is_one_line_before_the_first_trial(tmp_path, capsys, monkeypatch, case):
    """Each ended with exit 1 after a trial and a run were created and FAILED (and retried on every invocation)."""
    fixed, words = _data(tmp_path / "data", case)
    config = write_sweep(tmp_path, "data", epochs=1, seeds="[0]", threads="1", n_holdout="0", pairing='["fixed"]')
    lines = "".join(f'{k} = "{v}"\n' for k, v in fixed.items())
    config.write_text(config.read_text().replace("[fixed]\n", f"[fixed]\n{lines}"))
    code, said = run_main("study", capsys, monkeypatch, tmp_path, "sweep", "--config", str(config))
    _one_line_refusal(code, said, *words)
    assert not (tmp_path / "mlruns").exists()  # no study, no run


def test_a_seed_too_large_for_the_generators_is_one_line(tmp_path, capsys, monkeypatch):
    """torch's generators overflowed on it: a traceback, after the run was created."""
    code, said = run_main("study", capsys, monkeypatch, tmp_path, "run", "--set", f"seed={2**64}",
                          "--set", "image_size=16")
    _one_line_refusal(code, said, f"seed={2**64}", str(2**63 - 1))
    assert not (tmp_path / "mlruns").exists()


def test_an_n_that_cannot_fit_is_refused_at_once(tmp_path):
    """n_images = 100000 on synthetic data: no check, 1.9 GB of memory and no output for 180 s, then a RUNNING run
    left behind by the timeout. A real command, so that a harness without the check fails on its timeout here."""
    config = write_sweep(tmp_path, "huge", epochs=1, seeds="[0]", threads="1", n_images="100000",
                         pairing='["fixed"]')
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"CYCLELIKE_STORE": str(tmp_path / "s")}
    try:
        done = subprocess.run([sys.executable, "-m", "study", "sweep", "--config", str(config), "--workers", "1"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("n_images=100000 was not refused within 90 s")
    _one_line_refusal(done.returncode, done.stdout + done.stderr, "n_images=100000", "GiB", "free")
    assert not (tmp_path / "s").exists()


def _kept(tmp_path: Path, top: str = "", **changes: str) -> Path:
    """The sweep file of study `kept`; `top` adds top-level lines, `changes` replace lines."""
    return write_sweep(tmp_path, "kept", epochs=1, seeds="[0]" + (f"\n{top}" if top else ""), threads="1", **changes)


@pytest.mark.parametrize(("top", "changes", "words"), [
    ("", {"objectives": '["pair/bijectivity"]'}, ["objectives=['pair/bijectivity']", "pair/forward_top1"]),
    ('sampler = "random"\ntrials = 2', {}, ["sampler='random'", "sampler='grid'"]),
    ('directions = ["minimize"]', {}, ["directions=['minimize']"]),
    ("", {"pairing": '["aligned", "shuffled"]'}, ["space.pairing", "aligned", "fixed"]),
], ids=["objective", "sampler", "directions", "space"])
def test_a_change_an_existing_study_cannot_absorb_is_refused_and_its_parent_run_stays_closed(
        tmp_path, capsys, monkeypatch, top, changes, words):
    """A changed objective ran with exit 0 (the study kept the old metric's values); a random sampler over a grid
    study added 50 spurious FAIL trials; changed space values left the parent run RUNNING."""
    with store_in(tmp_path):  # a study with a trial told, its parent run closed as a sweep's end closes it
        spec = load_sweep(_kept(tmp_path))
        client, study, _, parent = prepare(spec, None, 1)
        told = study.ask()
        spec.suggest(told)
        study.tell(told, 0.5)
        client.set_terminated(parent, "FINISHED")
    config = _kept(tmp_path, top, **changes)
    code, said = run_main("study", capsys, monkeypatch, tmp_path, "sweep", "--config", str(config))
    _one_line_refusal(code, said, *words)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert client.get_run(parent).info.status == "FINISHED"
    assert [r.info.run_id for r in client.search_runs([client.get_experiment_by_name("kept").experiment_id])] \
        == [parent]  # no trial ran


def test_a_key_in_both_fixed_and_space_is_refused():
    """`pairing` in [fixed] and in [space]: the space's values won without a word."""
    with pytest.raises(SweepError, match=r"^pairing: set in both \[fixed\] and \[space\]"):
        parse_sweep({"name": "both", "fixed": {"pairing": "fixed"}, "space": {"pairing": ["aligned", "shuffled"]}})


def test_a_nested_list_in_the_space_is_named_as_the_space():
    """It was reported as `fixed: pairing=[...]: expected str`."""
    with pytest.raises(SweepError, match=r"^space\.pairing=\[\['aligned'\]\]: expected a list of plain values"):
        parse_sweep({"name": "nested", "space": {"pairing": [["aligned"]]}})


def test_a_sweep_file_that_is_a_folder_says_so(tmp_path):
    """A folder "did not exist"."""
    with pytest.raises(SweepError, match="is a folder"):
        load_sweep(tmp_path)


def test_a_report_on_a_study_without_a_finished_run_exits_1(tmp_path, capsys, monkeypatch):
    """It wrote a page of notes and exited 0: a script took it for an answer."""
    from study.stores.mlflow import ensure_experiment, prepare_store
    from study.tracking import RunLogger

    with store_in(tmp_path) as uri:
        client = prepare_store(uri)
        run = RunLogger.start(client, ensure_experiment(client, "unfinished"), "N4-s0", tags={"trial": 0})
        run.finish("FAILED", tags={"optuna.state": "FAIL", "failure": "OSError: No space left on device"})
    code, said = run_main("analysis", capsys, monkeypatch, tmp_path, "report", "--experiment", "unfinished", "--out",
                          str(tmp_path / "report"))
    assert code == 1 and said.strip().splitlines()[-1].startswith("error: study 'unfinished' has no finished run")
    assert (tmp_path / "report" / "report.md").exists()  # the page says why, too
