"""Trials that survive a kill: a sweep trial sends its whole state to its run as it trains, and a retry goes on
from there in the same run, with every epoch in its history once and the same numbers as without the kill."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch
from conftest import store_in, tiny_sweep
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from analysis.runs import load_curves, summaries
from cyclelike.config import RunConfig
from cyclelike.data import load_domains
from study.storage import open_storage
from study.tracking import RunLogger, ensure_experiment, prepare_store
from study.trial import CHECKPOINT_DIR, run_trial

CELL = RunConfig(image_size=16, n_images=4, n_holdout=0, batch_size=2, base_filters=4, d_filters=4, epochs=6,
                 precision="fp32", fused_adam=False, threads=1)


class Killed(Exception):
    pass


def _kill_at(epoch: int):
    def report(at: int, metrics) -> bool:
        if at == epoch:
            raise Killed
        return False
    return report


def test_a_resumed_trial_is_the_trial_without_the_kill_in_float64(tmp_path):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        data = load_domains(CELL)
        data.x, data.y = data.x.double(), data.y.double()
        with store_in(tmp_path) as uri:
            client = prepare_store(uri)
            experiment = ensure_experiment(client, "resume")
            whole = RunLogger.start(client, experiment, "whole")
            run_trial(CELL, whole, eval_every=2, data=data, progress=False, checkpoint_s=1e-9)
            whole.finish()
            cut = RunLogger.start(client, experiment, "cut")
            with pytest.raises(Killed):  # killed at the evaluation of epoch 4, after epoch 3's checkpoint
                run_trial(CELL, cut, eval_every=2, report=_kill_at(4), data=data, progress=False, checkpoint_s=1e-9)
            cut.flush()
            resumed = RunLogger(client, cut.run_id)
            run_trial(CELL, resumed, eval_every=2, data=data, progress=False, checkpoint_s=1e-9, resume=True)
            resumed.finish()
            runs = {r.info.run_name: r for r in client.search_runs([experiment])}
            curves = load_curves(client, _ids(runs))
            leftover = client.list_artifacts(cut.run_id, CHECKPOINT_DIR)
    finally:
        torch.set_default_dtype(old)
    assert runs["cut"].data.tags["resumed_from_epoch"] == "3"
    whole_c, cut_c = (curves[curves["run_id"] == runs[n].info.run_id].set_index(["metric", "epoch"])["value"]
                      for n in ("whole", "cut"))
    assert list(cut_c.loc["loss/G_l1"].index) == [1, 2, 3, 4, 5, 6]  # every epoch, each once
    assert (whole_c - cut_c).abs().max() < 1e-10  # losses and evaluations: the same numbers
    assert list(cut_c.loc["pair/forward_top1"].index) == [0, 2, 4, 6]  # evaluations before the kill kept
    assert summaries(runs["cut"].data.tags)["pair/flips"] == summaries(runs["whole"].data.tags)["pair/flips"]
    assert not leftover  # a finished trial's checkpoint is deleted


def _ids(runs):
    import pandas as pd

    return pd.DataFrame({"run_id": [r.info.run_id for r in runs.values()]})




def test_a_trial_killed_mid_run_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL at about epoch E of 2E: the next invocation goes on from the last checkpoint, in the same run."""
    epochs = 80
    (tmp_path / "killed.toml").write_text(tiny_sweep("killed", epochs, seeds="[0]", eval_every="20", n_images="6",
                                                     n_holdout="0", threads="1", precision='"fp32"',
                                                     pairing='["fixed"]'))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns/mlflow.db", "PYTHONUNBUFFERED": "1",
           "CYCLELIKE_CHECKPOINT_S": "1"}
    cmd = [sys.executable, "-m", "study", "sweep", "--config", "killed.toml", "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    t0, killed_at = time.monotonic(), None
    while killed_at is None and time.monotonic() - t0 < 120:
        time.sleep(0.5)
        runs = _trial_runs(client)
        if runs and client.list_artifacts(runs[0].info.run_id, CHECKPOINT_DIR):
            history = client.get_metric_history(runs[0].info.run_id, "loss/G_l1")
            if history and max(m.step for m in history) >= epochs // 2:
                killed_at = max(m.step for m in history)
                os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert killed_at is not None, "the trial never reached half its epochs with a checkpoint"
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    journal = open_storage(str(tmp_path / "mlruns" / "optuna.journal"))
    trials = optuna.load_study(study_name="killed", storage=journal).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    runs = _trial_runs(client)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same run went on
    run = runs[0]
    resumed_from = int(run.data.tags["resumed_from_epoch"])
    assert 1 <= resumed_from <= killed_at
    history = client.get_metric_history(run.info.run_id, "loss/G_l1")
    assert sorted({m.step for m in history}) == list(range(1, epochs + 1))  # no gap
    print(f"SIGKILL at epoch {killed_at} of {epochs}; resumed from epoch {resumed_from}; "
          f"{len(history) - epochs} epoch(s) logged twice")
    # trained twice: only the epochs between the last checkpoint and the kill
    assert len(history) - epochs <= killed_at - resumed_from + 1
    with store_in(tmp_path):
        curves = load_curves(client, _ids({"r": run}))
    assert list(curves[curves["metric"] == "loss/G_l1"]["epoch"]) == list(range(1, epochs + 1))


def _trial_runs(client):
    experiment = client.get_experiment_by_name("killed")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "tags.trial != ''")
