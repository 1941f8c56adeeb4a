"""Trials that survive a kill: a sweep trial sends its whole state to its run as it trains, and a retry goes on
from there in the same run, with every epoch in its history once and the same numbers as without the kill. A
real sweep killed at each instant of the finishing protocol is tests/test_faults.py."""

import pytest
import torch
from conftest import store_in

from analysis.runs import load_curves, summaries
from cyclelike.config import RunConfig
from cyclelike.data import load_domains
from study.checkpoints import CHECKPOINT_DIR
from study.stores.mlflow import ensure_experiment, prepare_store
from study.tracking import RunLogger
from study.trial import run_trials

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
            run_trials([CELL], [whole], eval_every=2, data=data, progress=False, checkpoint_s=1e-9)
            whole.finish()
            cut = RunLogger.start(client, experiment, "cut")
            with pytest.raises(Killed):  # killed at the evaluation of epoch 4, after epoch 3's checkpoint
                run_trials([CELL], [cut], eval_every=2, reports=[_kill_at(4)], data=data, progress=False,
                           checkpoint_s=1e-9)
            cut.flush()
            resumed = RunLogger(client, cut.run_id)
            run_trials([CELL], [resumed], eval_every=2, data=data, progress=False, checkpoint_s=1e-9, resume=True)
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
