"""Fused seeds (cyclelike.fused): K seeds as one stacked model give each seed what it gets alone, a pruned
seed leaves the others as they were, and auto workers never put more threads on the machine than cores."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from cyclelike.checkpoint import Checkpoints
from cyclelike.config import ConfigError, RunConfig
from cyclelike.data import load_domains
from cyclelike.train import EpochStats, TrainResult, train
from study import autotune

# No dropout. In float64 a fused seed IS the seed alone (1e-10). In fp32 the grouped convolutions sum in
# another order, and 16 px images leave 2x2 feature maps whose instance norm divides by a near-zero
# variance: the rounding (~1e-7) is amplified step by step (channels_last alone drifts the same way), so
# fp32 is held to 1e-3 on the losses of the first epoch (4 steps) only.
FP32_FIRST_EPOCH = 1e-3
FP64 = 1e-10
CELL = RunConfig(image_size=16, n_images=6, n_holdout=0, base_filters=8, d_filters=8, batch_size=3, epochs=2,
                 precision="fp32", pairing="shuffled", lambda_cyc=1.0)  # 4 steps per epoch
SEEDS = (0, 1, 2)


def _gap(a, b) -> float:
    return max(abs(a.losses[k] - b.losses[k]) for k in a.losses)


def test_fused_seeds_give_each_seed_its_own_losses_in_fp32():
    data = load_domains(CELL)
    configs = [CELL.replace(seed=s, epochs=1) for s in SEEDS]
    alone, fused = [train([c], data)[0] for c in configs], train(configs, data)
    for a, f in zip(alone, fused, strict=True):
        assert a.history[0].losses.keys() == f.history[0].losses.keys()
        assert _gap(a.history[0], f.history[0]) < FP32_FIRST_EPOCH, a.config.seed
    # the check can fail: another seed's losses are far outside the tolerance
    assert _gap(alone[0].history[0], fused[1].history[0]) > 10 * FP32_FIRST_EPOCH


@pytest.fixture(scope="module")
def fp64():
    """The cell in float64 (fused Adam has no float64 kernel on every device: the plain one, same update)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        data = load_domains(CELL)
        data.x, data.y = data.x.double(), data.y.double()
        configs = [CELL.replace(seed=s, fused_adam=False) for s in SEEDS]
        runs = [train([c], data)[0] for c in configs], train(configs, data)
    finally:
        torch.set_default_dtype(old)  # now, not at the module's end: the other tests run in fp32
    return configs, data, *runs


def test_fused_seeds_are_the_seeds_alone_in_fp64(fp64):
    _, data, alone, fused = fp64
    for a, f in zip(alone, fused, strict=True):
        assert [s.epoch for s in f.history] == [1, 2]
        for sa, sf in zip(a.history, f.history, strict=True):
            assert _gap(sa, sf) < FP64, (a.config.seed, sa.epoch)
        assert (a.translator.forward(data.x) - f.translator.forward(data.x)).abs().max().item() < FP64


@pytest.mark.parametrize("change", [{"direction_schedule": "joint"}, {"direction_schedule": "interleave"},
                                    {"scheme": "pix2pix"}], ids=["joint", "interleave", "pix2pix"])
def test_every_schedule_fuses_in_the_order_it_runs_alone(change):
    """The fused epoch takes its batches in the schedule's order (a joint batch stacks both directions on
    the batch axis, which is axis 1 of a stacked batch): each seed is itself alone, in float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        cell = CELL.replace(fused_adam=False, **change)
        data = load_domains(cell)
        data.x, data.y = data.x.double(), data.y.double()
        configs = [cell.replace(seed=s) for s in (0, 1)]
        for config, fused in zip(configs, train(configs, data), strict=True):
            for sa, sf in zip(train([config], data)[0].history, fused.history, strict=True):
                assert _gap(sa, sf) < FP64, (change, config.seed, sa.epoch)
    finally:
        torch.set_default_dtype(old)


def test_pruning_one_seed_leaves_the_others_unchanged(fp64):
    configs, data, alone, fused = fp64
    calls = []

    def prune_at_1(stats, translator):
        calls.append(stats.epoch)
        return stats.epoch == 1

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        pruned = train(configs, data, [None, prune_at_1, None])
    finally:
        torch.set_default_dtype(old)
    # epoch 0 is the untrained map, seen once before training; pruned at epoch 1, it sees no more
    assert calls == [0, 1] and pruned[1].stopped_early and [s.epoch for s in pruned[1].history] == [1]
    for k in (0, 2):
        assert not pruned[k].stopped_early
        for sa, sp in zip(alone[k].history, pruned[k].history, strict=True):
            assert _gap(sa, sp) < FP64
        assert (alone[k].translator.forward(data.x) - pruned[k].translator.forward(data.x)).abs().max() < FP64


def test_a_diverging_seed_leaves_the_group_and_the_others_are_unchanged(fp64, monkeypatch):
    """One NaN seed raised for the whole group: every seed of it failed, and their retries fused again."""
    import cyclelike.train as engine

    configs, data, alone, _ = fp64
    real, calls = engine.epoch_losses, []

    def nan_for_seed_1_at_epoch_1(*args, **kwargs):
        calls.append(1)
        losses = real(*args, **kwargs)
        return {k: float("nan") for k in losses} if len(calls) == 2 else losses  # epoch 1, stack position 1

    monkeypatch.setattr(engine, "epoch_losses", nan_for_seed_1_at_epoch_1)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        results = train(configs, data)
    finally:
        torch.set_default_dtype(old)
    assert results[1].diverged is not None and results[1].diverged.epoch == 1
    for k in (0, 2):
        assert results[k].diverged is None and [s.epoch for s in results[k].history] == [1, 2]
        for sa, sf in zip(alone[k].history, results[k].history, strict=True):
            assert _gap(sa, sf) < FP64


def test_a_killed_group_resumes_each_seed_alone_from_its_own_checkpoint(fp64, tmp_path):
    """A fused group killed after epoch 1 leaves one checkpoint per seed in a run-alone format; train()
    resumes each seed from it and ends where that seed alone ends, in float64."""
    configs, data, alone, _ = fp64

    class Killed(Exception):
        pass

    def kill_at_2(stats, translator):
        if stats.epoch == 2:
            raise Killed

    paths = [tmp_path / f"seed{c.seed}.pt" for c in configs]
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with pytest.raises(Killed):
            train(configs, data, [None, None, kill_at_2], checkpoints=[Checkpoints(p, every=1) for p in paths])
        resumed = [train([c], data, checkpoints=[Checkpoints(p)])[0] for c, p in zip(configs, paths, strict=True)]
    finally:
        torch.set_default_dtype(old)
    for a, r in zip(alone, resumed, strict=True):
        assert r.resumed_from_epoch == 1 and [s.epoch for s in r.history] == [1, 2]
        assert [s.seeds for s in r.history] == [3, 1]  # epoch 1's time was the group's
        assert _gap(a.history[1], r.history[1]) < FP64, a.config.seed
        assert (a.translator.forward(data.x) - r.translator.forward(data.x)).abs().max().item() < FP64
    # the check can fail: a seed resumed from another seed's checkpoint is not that seed
    assert (alone[0].translator.forward(data.x) - resumed[1].translator.forward(data.x)).abs().max().item() > 1e-3


def test_only_seeds_of_one_condition_fuse():
    with pytest.raises(ConfigError, match="differ in n_images"):
        train([CELL, CELL.replace(seed=1, n_images=4)])
    with pytest.raises(ConfigError, match="norm=batch"):
        train([CELL.replace(norm="batch"), CELL.replace(norm="batch", seed=1)])


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 6, 8, 16, 64])
def test_auto_workers_never_oversubscribe(cores):
    plans = autotune.plans(cores)
    assert (1, cores) in plans and all(w * t <= cores for w, t in plans)
    # even when a measured rate favours a plan with more threads than cores (say, a cache from a bigger
    # machine), the choice stays within the cores
    rates = {p: float(p[0]) for p in plans} | {(cores, 2): 1e9, (2 * cores, 1): 1e9}
    tuning = autotune.Tuning.from_rates("m", "c", rates, 1.0, cores)
    assert tuning.workers * tuning.threads <= cores and tuning.workers == cores


def test_sweep_auto_reads_the_cached_measurement(tmp_path, monkeypatch):
    from study.autotune import plan_workers
    from study.spec import parse_sweep

    # fp32: on a CPU with native bf16, precision=auto would not fuse (cyclelike.fused.vmap_autocasts)
    spec = parse_sweep({"name": "t", "seeds": [0, 1], "fixed": {"image_size": 16, "precision": "fp32"},
                        "space": {"n_images": [4]}})
    cell = spec.config_for(spec.grid_cells()[0], 0)
    cache = tmp_path / "autotune.json"
    monkeypatch.setenv("CYCLELIKE_AUTOTUNE_CACHE", str(cache))
    monkeypatch.setattr(autotune, "cores", lambda: 4)
    entry = autotune.Tuning.from_rates(autotune.machine_key(), autotune.cell_key(cell),
                                       {(1, 4): 10.0, (2, 2): 30.0, (4, 1): 20.0}, 1.5, 4)
    cache.write_text(json.dumps({autotune.machine_key(): {autotune.cell_key(cell): vars(entry)}}))
    assert plan_workers(spec, "auto", "auto") == (2, 2, True)
    assert plan_workers(spec, "auto", "off") == (2, 2, False)
    assert plan_workers(spec, 1, "auto") == (1, 4, True)  # explicit workers; fusing still as measured
    assert plan_workers(dataclasses.replace(spec, seeds=[0]), "auto", "on")[2] is False  # one seed: nothing to fuse


def test_fused_sweep_gives_each_seed_its_own_run(tmp_path, monkeypatch):
    import mlflow

    from study.spec import parse_sweep
    from study.sweep import run_sweep

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    keys = ("image_size", "n_images", "n_holdout", "base_filters", "d_filters", "batch_size", "epochs", "precision",
            "lambda_cyc")
    spec = parse_sweep({"name": "fused", "seeds": [0, 1, 2], "eval_every": 1,
                        "fixed": {k: getattr(CELL, k) for k in keys}, "space": {"pairing": ["fixed"]}})
    table = run_sweep(spec, str(tmp_path / "mlruns" / "optuna.journal"), fuse="on", probe=False)
    assert sorted(table["state"]) == ["COMPLETE"] * 3
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["fused"])
    runs = runs[runs["tags.role"] != "study"]
    assert sorted(runs["tags.seed"].astype(int)) == [0, 1, 2] and set(runs["tags.fused_group"]) == {"3"}
    losses = runs["metrics.loss/G_total"].to_numpy()
    assert len(np.unique(np.round(losses, 6))) == 3  # each seed its own losses, not the group's
    alone = train([spec.config_for({"pairing": "fixed"}, 1)])[0]
    logged = float(runs.loc[runs["tags.seed"].astype(int) == 1, "metrics.loss/G_total"].iloc[0])
    assert abs(alone.history[-1].losses["loss/G_total"] - logged) < 0.05  # fp32 after 2 epochs: see above


def test_auto_and_the_bench_time_a_sample_that_costs_what_the_study_costs():
    """They timed the default sweep's first cells, all of them its cheapest (encdec, N = 5)."""
    from pathlib import Path

    from study.spec import load_sweep

    spec = load_sweep(Path(__file__).parents[1] / "study" / "configs" / "default.toml")
    assert list(autotune.sample_pins(spec.space)) == ["pairing"]  # the pairing does not change an epoch's cost
    configs = autotune.timing_sample(spec)
    assert {(c.arch, c.n_images, c.lambda_cyc) for c in configs} == {
        (a, n, cyc) for a in ("encdec", "unet") for n in (5, 10) for cyc in (0.0, 1.0)}
    costs = sorted(autotune.epoch_cost(c) for c in configs)
    assert costs[0] < autotune.epoch_cost(autotune.typical_cell(configs)) < costs[-1]


def test_a_run_resumed_alone_after_its_group_is_timed_by_the_kind_of_epoch_it_has_more_of():
    """Its epochs before the kill took the group's time (three seeds at once), those after its own: one
    median over both would be neither, and the run must be read in the series of the epochs it is timed by."""
    fused = [EpochStats(e, 2.0 + e, {}, seeds=3) for e in range(1, 5)]  # timed after warm-up: 4, 5, 6 s
    alone = [EpochStats(e, 0.5 + e / 10, {}) for e in range(5, 11)]  # 1.0 to 1.5 s
    config = CELL.replace(epochs=10, warmup_epochs=1)
    mostly_alone = TrainResult(config, fused + alone, {}, None, "cpu", resumed_from_epoch=4)
    assert mostly_alone.timing_seeds == 1 and mostly_alone.sec_per_epoch == pytest.approx(1.25)
    mostly_fused = TrainResult(config, fused + alone[:2], {}, None, "cpu", resumed_from_epoch=4)
    assert mostly_fused.timing_seeds == 3 and mostly_fused.sec_per_epoch == 5.0
