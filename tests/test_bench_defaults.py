"""bench/defaults.py turns a bench.json (scripts/gpu_check.sh on a GPU) into the defaults file of its kind of
device: each key the bench measured takes the measured value and names the measurement, and replay goes on only where
the replayed pairs equal eager's, it gains, and no replayed run fell back."""

import json
import math

import pytest

from bench.defaults import derive, main
from cyclelike.execution import AUTO_KEYS, DEFAULTS, load_defaults

ID = "nvidia-h100-80gb-hbm3-abcdef0"


def bench(replay=0.5, same=3, kept=True, bf16=1.2, sections=("ways", "switches", "pairing")) -> dict:
    """A bench.json of a GPU, in s/epoch: each switch's on over off, bf16 over fp32, and the pairs compared."""
    ratios = {"fused_upsample": 1.2, "fused_adam": 0.99, "channels_last": 0.8, "replay": replay}
    workload = {s: {"on_over_off": r, "on_sec_per_epoch": r, "off_sec_per_epoch": 1.0, "on_executed": True}
                for s, r in ratios.items()}
    workload["replay"]["on_executed"] = True if kept else "fallback"
    results = {
        "machine": {"device": "NVIDIA H100 80GB HBM3", "kind": "cuda", "git_commit": "abcdef0123", "torch": "2.11",
                    "time": "2026-12-01 10:00:00"},
        "settings": {"command": "python -m bench device --quick --out /out/bench.json"},
        "ways": {n: {"rows": {"eager fp32": {"sec_per_epoch": 1.0, "precision": "fp32"},
                              "eager bf16": {"sec_per_epoch": bf16, "precision": "bf16"}}}
                 for n in ("seed", "default")},
        "switches": {"workloads": {"seed": workload, "default": workload}, "precision": "fp32"},
        "pairing": {"replay": "on", "seeds": 3, "same_seeds": same, "eager_same_seeds": 3,
                    "runs": [{"replayed": {"replay": True}}] * 3},
    }
    return {k: v for k, v in results.items() if k in ("machine", "settings", *sections)}


@pytest.mark.parametrize("change, on", [({}, True), ({"same": 2}, False), ({"replay": 0.99}, False),
                                        ({"kept": False}, False), ({"sections": ("ways", "switches")}, False)])
def test_replay_is_on_by_default_only_where_its_pairs_equal_eager_and_it_gains(change, on):
    """Pairs that differ on one seed of three, no gain beyond noise, a run that fell back, or pairs never compared:
    each keeps replay off, now on a measurement."""
    new = derive(bench(**change), DEFAULTS["cuda"])
    assert new["auto"]["replay"] is on and new["basis"]["replay"] == ID
    assert "pairs" in new["why"]["replay"]


def test_precision_and_each_switch_take_what_was_measured_faster():
    new = derive(bench(bf16=1.2), DEFAULTS["cuda"])
    assert new["auto"] | {"replay": None} == {"precision": "fp32", "fused_upsample": False, "fused_adam": False,
                                              "channels_last": True, "replay": None}  # fused_adam 0.99: no gain, off
    assert all(new["basis"][k] == ID for k in AUTO_KEYS)
    assert list(new["measurements"]) == [ID]  # what no key rests on any more leaves
    measurement = new["measurements"][ID]
    assert measurement["device"] == "NVIDIA H100 80GB HBM3" and measurement["commit"] == "abcdef0123"
    assert measurement["command"].startswith("python -m bench device")
    assert measurement["figures"]["seed"]["eager bf16"] == 1.2
    assert derive(bench(bf16=0.8), DEFAULTS["cuda"])["auto"]["precision"] == "bf16"


def test_what_a_bench_did_not_measure_keeps_its_value_and_basis():
    current = DEFAULTS["cuda"]
    results = bench(sections=("switches",))
    for workload in results["switches"]["workloads"].values():
        workload["replay"] = {"skipped": "replay captures CUDA graphs: off on this device"}
    new = derive(results, current)
    for key in ("precision", "replay"):
        assert (new["auto"][key], new["basis"][key], new["why"][key]) == \
            (current["auto"][key], current["basis"][key], current["why"][key])
    assert set(new["measurements"]) == {b for b in new["basis"].values() if b is not None}


def test_the_command_writes_a_file_that_auto_can_read(tmp_path, capsys):
    (tmp_path / "bench.json").write_text(json.dumps(bench()))
    assert main([str(tmp_path / "bench.json"), "--out", str(tmp_path / "defaults")]) == 0
    written = load_defaults("cuda", tmp_path / "defaults")
    assert written["auto"]["replay"] is True and not math.isnan(written["measurements"][ID]["figures"]["seed"]
                                                                ["replay [on, off] (fp32)"][0])
    out = capsys.readouterr().out
    assert "replay          False  -> True" in out and "written to" in out
