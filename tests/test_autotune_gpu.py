"""`--workers auto` on CUDA: workers share one GPU, so the choice is bounded by its free memory as well as the cores.
The choice is a pure function of plain numbers, tested here without a GPU; the measuring around it is faked."""

import json

import pytest
import torch

from cyclelike.config import RunConfig
from study import autotune

GiB = 2**30


def test_workers_fit_in_the_free_memory_and_the_cores():
    # 0.8 x 20 GiB = 16 GiB for workers of 3 GiB peak + 1 GiB context: 4
    assert autotune.gpu_workers_fit(20 * GiB, 3 * GiB, 16) == 4
    assert autotune.gpu_workers_fit(140 * GiB, 0.5 * GiB, 16) == 16  # the cores bind: each worker launches on one
    assert autotune.gpu_workers_fit(2 * GiB, 3 * GiB, 16) == 0


def test_the_fastest_plan_that_fits_is_chosen():
    rates = {(1, False): 100.0, (2, False): 190.0, (4, False): 300.0, (8, False): 500.0,
             (1, True): 150.0, (2, True): 280.0, (4, True): 320.0}
    # plenty of memory: the fastest plan measured
    assert autotune.choose_gpu(140 * GiB, 1 * GiB, 2 * GiB, rates, 16) == (8, False)
    # 0.8 x 20 GiB: 8 workers of 1 + 1 GiB fit alone, 5 of 2 + 1 GiB fused
    assert autotune.choose_gpu(20 * GiB, 1 * GiB, 2 * GiB, rates, 16) == (8, False)
    # 0.8 x 12 GiB: alone, 4 fit (300); fused, 3 fit: its 4-worker plan (320) is out, though faster
    assert autotune.choose_gpu(12 * GiB, 1 * GiB, 2 * GiB, rates, 16) == (4, False)
    # 4 cores: never more workers than cores, whatever the memory
    assert autotune.choose_gpu(140 * GiB, 1 * GiB, 2 * GiB, rates, 4) == (4, True)


def test_ties_go_to_fewer_workers_and_failed_plans_are_never_chosen():
    assert autotune.choose_gpu(140 * GiB, GiB, GiB, {(1, False): 10.0, (2, False): 10.0, (1, True): 10.0}, 16) \
        == (1, False)
    assert autotune.choose_gpu(140 * GiB, GiB, GiB, {(1, False): 10.0, (2, True): 0.0}, 16) == (1, False)
    # nothing fits (or every plan failed): one worker alone, as --workers 1 would run
    assert autotune.choose_gpu(GiB, 8 * GiB, 9 * GiB, {(1, False): 10.0, (1, True): 30.0}, 16) == (1, False)
    assert autotune.worker_counts(12) == [1, 2, 4, 8, 12] and autotune.worker_counts(1) == [1]
    assert autotune.worker_counts(0) == []


@pytest.fixture
def gpu(monkeypatch, tmp_path):
    """A machine with 16 cores and a GPU of 20 GiB free, whose plans measure as `rates` says."""
    monkeypatch.setenv("CYCLELIKE_AUTOTUNE_CACHE", str(tmp_path / "autotune.json"))
    monkeypatch.setattr(autotune, "cores", lambda: 16)
    monkeypatch.setattr(autotune, "on_cuda", lambda config: True)
    measured = []

    def measure(config, seeds, workers):
        measured.append((workers, len(seeds) > 1))
        fused = len(seeds) > 1
        rate = {1: 100.0, 2: 190.0, 4: 300.0, 5: 305.0, 8: 310.0, 16: 320.0}[workers] * (1.2 if fused else 1.0)
        return rate, (2 if fused else 1) * GiB, 20 * GiB

    monkeypatch.setattr(autotune, "measure_gpu_plan", measure)
    return measured


def test_auto_on_cuda_climbs_while_more_workers_pay_and_caches_the_choice(gpu, tmp_path):
    cell = RunConfig(image_size=16)
    tuning = autotune.tune(cell, [0, 1], fusable=True)
    # alone: 8 fit (1 + 1 GiB in 16); 8 workers gave < 5% over 4, so 16 was never tried. Fused: 5 fit (2 + 1 GiB)
    assert gpu == [(1, False), (2, False), (4, False), (8, False), (1, True), (2, True), (4, True), (5, True)]
    assert (tuning.workers, tuning.threads, tuning.fuse) == (5, 3, True)
    assert tuning.memory == {"free_bytes": 20 * GiB, "peak_alone_bytes": GiB, "peak_fused_bytes": 2 * GiB}
    cached = json.loads((tmp_path / "autotune.json").read_text())
    assert cached[autotune.machine_key()][autotune.cell_key(cell)]["workers"] == 5
    assert autotune.cached(cell) == tuning


def test_one_seed_is_never_fused_on_cuda(gpu):
    tuning = autotune.tune(RunConfig(image_size=16), [0], fusable=True)
    assert not tuning.fuse and all(not fused for _, fused in gpu) and tuning.fused_speedup == 0.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the probe's workers share a GPU")
def test_gpu_plan_probe_measures_on_cuda_and_a_failing_worker_fails_the_plan():
    cell = RunConfig(image_size=16, n_images=2, n_holdout=0, base_filters=4, d_filters=4, batch_size=2, epochs=60)
    rate, peak, free = autotune.measure_gpu_plan(cell, [0, 1], 2)
    assert rate > 0 and 0 < peak < free
    broken = cell.replace(data="folders", x_path="/nonexistent", y_path="/nonexistent")
    assert autotune.measure_gpu_plan(broken, [0], 2) == (0.0, 0, 0)  # no worker waits for ever
