"""bench/device.py runs once, on a GPU lent for minutes: every section is run here on tiny workloads (on CPU, and
on CUDA where there is one) and must give the fields bench.json needs, and a failure must cost one row, not the run."""

import json
import math

import pandas as pd
import pytest
import torch

from bench import device as bench_device
from cyclelike.config import SWITCHES, RunConfig
from cyclelike.execution import DEFAULTS, load_defaults

# 2 steps an epoch (one batch each way): a step is captured after 3 eager ones, so epoch 3 is replayed on CUDA
TINY = RunConfig(image_size=16, n_images=2, n_holdout=0, base_filters=4, d_filters=4, batch_size=2, threads=1,
                 arch="unet")
WORKLOADS = {"seed": TINY.replace(norm="batch"), "default": TINY.replace(pairing="fixed", lambda_cyc=1.0, epochs=2)}
SETTINGS = {"epochs": 2, "fused_epochs": 2, "ks": (1, 2), "compile": (), "study": "sample"}
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                               pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])]


@pytest.mark.parametrize("device", DEVICES)
def test_every_section_gives_the_figures_bench_json_needs(device, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_device, "WARMUP_EPOCHS", 1)  # epoch 2 timed: a smoke test, not a measurement
    monkeypatch.setattr(bench_device, "gemm_peak", lambda precision, device: 1e12)  # the real one takes seconds
    monkeypatch.setattr(bench_device, "study_throughput", lambda workers, sets: {"trials": 16, "sample": sets})
    out = tmp_path / "bench.json"
    results = bench_device.run(torch.device(device), SETTINGS, out, workloads=WORKLOADS)
    assert json.loads(out.read_text()).keys() == results.keys()
    assert results["machine"]["device"] and results["machine"]["git_commit"]
    replayed = device == "cuda"
    for name in WORKLOADS:
        rows = results["ways"][name]["rows"]
        assert set(rows) == {"plain", "eager fp32", "replayed fp32", "eager bf16", "replayed bf16"}
        assert all("error" not in r and math.isfinite(r["sec_per_epoch"]) for r in rows.values()), rows
        assert not any(rows["plain"]["execution"][k] for k in SWITCHES)
        assert rows["replayed bf16"]["execution"]["replay"] == replayed and rows["eager bf16"]["precision"] == "bf16"
        evidence = results["switches"]["workloads"][name]
        assert all(evidence[s]["faster"] in ("on", "off", "same") for s in ("fused_upsample", "fused_adam"))
        assert ("skipped" in evidence["replay"]) is not replayed
        fused = results["fused"][name]
        assert set(fused["k"]) == {1, 2} and fused["best_k"] in (1, 2) and fused["alone_seed_epochs_per_s"] > 0
    assert set(results["switches"]["suggests"]) == set(SWITCHES)
    assert results["switches"]["precision"] == bench_device.measured_precision(results)[0]  # timed as auto will run
    # the defaults file these figures set for this kind of device: whole, and replay only on a replayed measurement
    kind = results["machine"]["kind"]
    (tmp_path / "defaults").mkdir()
    (tmp_path / "defaults" / f"{kind}.json").write_text(json.dumps(results["defaults"]))
    defaults = load_defaults(kind, tmp_path / "defaults")
    assert defaults["basis"]["fused_adam"] == defaults["basis"]["precision"] != DEFAULTS[kind]["basis"]["fused_adam"]
    if not replayed:
        assert defaults["auto"]["replay"] is False and defaults["basis"]["replay"] == DEFAULTS[kind]["basis"]["replay"]
    else:
        assert all(r["replayed"]["replay"] is True for r in results["pairing"]["runs"])  # none fell back
    assert 0 < results["utilisation"]["fused_utilisation"] and 0 < results["utilisation"]["alone_utilisation"]
    pairing = results["pairing"]
    assert pairing["seeds"] == 3 and set(pairing["runs"][0]["eager"]) >= {"pair/forward_top1", "pair/mutual"}
    if not replayed:  # the same eager training twice: the same pairs
        assert pairing["same_seeds"] == 3
    assert results["study"]["trials"] == 16 and "pairing" in results["study"]["sample"]
    assert results["compiled"] == {}  # compiling takes minutes: the tiny settings compile nothing
    assert set(results["targets"]) == {"seed_alone_le_0.015_s_per_epoch", "default_alone_le_0.01_s_per_epoch",
                                       "seed_fused_ge_10pct_of_peak", "pairing_replayed_same_as_eager"}


def test_the_compiled_row_asks_for_compile_and_compares_with_plain(monkeypatch):
    real, asked = bench_device.train, []

    def train(configs, data):  # torch.compile itself takes too long for a test
        asked.extend((c.compile, c.replay) for c in configs)
        return real([c.replace(compile=False) for c in configs], data)

    monkeypatch.setattr(bench_device, "train", train)
    row = bench_device.compiled_row("t", TINY, torch.device("cpu"), 3, plain_s=1.0)
    assert asked == [(True, "off")] and row["speedup_vs_plain"] == 1.0 / row["sec_per_epoch"]


def test_fused_climb_stops_at_the_first_k_out_of_memory(monkeypatch):
    calls = []

    real = bench_device.train

    def fused(configs, data):
        calls.append(len(configs))
        if len(calls) > 1:  # the seed alone, timed first, trains; the climb's first K runs out of memory
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(configs, data)

    monkeypatch.setattr(bench_device, "train", fused)
    out = bench_device.fused_seeds("t", TINY, torch.device("cpu"), 3, (1, 2, 4))
    assert calls == [1, 1] and out["k"][1]["out_of_memory"] and out["best_k"] is None


def test_a_failing_row_is_recorded_and_the_others_run(monkeypatch):
    real = bench_device.train

    def train(configs, data):
        if configs[0].precision == "bf16":
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        return real(configs, data)

    monkeypatch.setattr(bench_device, "train", train)
    out = bench_device.workload_ways("t", TINY, torch.device("cpu"), 3)
    assert "operation not permitted" in out["rows"]["eager bf16"]["error"]
    assert math.isfinite(out["rows"]["replayed fp32"]["sec_per_epoch"]) and "eager bf16" not in out["speedup_vs_plain"]


def test_the_suggested_auto_row_follows_the_evidence_of_every_workload():
    """On where on beat off over the workloads, off where it did not (fused_adam, 0.99: no gain beyond noise), as the
    row has it where nothing was timed."""
    has = {"fused_upsample": True, "fused_adam": True, "channels_last": False, "replay": True}
    evidence = [{"fused_upsample": {"on_over_off": 1.3}, "fused_adam": {"on_over_off": 0.99},
                 "channels_last": {"on_over_off": 0.8}, "replay": {"on_over_off": 0.2}},
                {"fused_upsample": {"on_over_off": 1.2}, "fused_adam": {"on_over_off": math.nan},
                 "channels_last": {"on_over_off": 1.1}, "replay": {"skipped": "cpu"}}]
    assert bench_device.suggested_row(evidence, has) == {"fused_upsample": False, "fused_adam": False,
                                                       "channels_last": True, "replay": True}


def test_study_throughput_reads_the_scratch_sweep(monkeypatch):
    table = pd.DataFrame({"state": ["COMPLETE"] * 3 + ["FAIL"]})
    table.attrs["wall_s"] = 6.0
    runs = pd.DataFrame({"pair/forward_top1": [0.5, 1.0, 0.0], "pair/mutual": [1.0, 1.0, 1.0]})
    monkeypatch.setattr(bench_device, "scratch_sweep", lambda *args: (table, runs))
    monkeypatch.setattr("study.autotune.plan_workers", lambda spec, workers, fuse: (1, 2, False))  # it ranks 8 cells
    out = bench_device.study_throughput(1, {"pairing": "aligned"})
    assert out["trials"] == 3 and out["trials_per_hour"] == 1800.0 and out["workers"] == 1 and out["threads"] == 2
    assert out["planned"] == 16 and out["pairing"]["pair/forward_top1"] == 0.5


def test_make_bench_runs_the_device_section_when_asked_and_writes_it_as_it_goes(tmp_path, monkeypatch):
    """The device section writes its own file after each of its sections (a GPU lent for minutes may be taken back
    before the end), and bench.json holds it at the end."""
    from bench.__main__ import main

    seen = {}
    monkeypatch.setattr(bench_device, "run",
                        lambda device, settings, out: seen.update(out=out) or {"device": str(device)})
    assert main(["cpu", "--only", "device", "--out", str(tmp_path / "bench.json")]) == 0
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["device"] == {"device": "cpu"} and "machine" in written
    assert seen["out"] == tmp_path / "bench_device.json"
