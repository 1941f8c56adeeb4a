"""bench/cpu.py and bench/common.py without measuring anything: the tables print every row of a bench.json, and the
scratch store points MLflow into itself and gives the environment back."""

import os

from bench.common import THROUGHPUT_METRICS, scratch_store
from bench.cpu import OP_KINDS, print_tables


def results() -> dict:
    """A bench.json of every section of `make bench`, with made-up figures."""
    path = {"schedule": "alternate", "reference_sec_per_epoch": 1.2, "fast_fp32_sec_per_epoch": 0.9,
            "fast_sec_per_epoch": 0.5, "speedup_same_maths": 1.33, "speedup": 2.4, "fast_precision": "bf16",
            "achieved_flops": 4e11, "peak_flops": 5e11, "flop_utilisation": 0.8, "fp32_flop_utilisation": 0.5,
            "fast_epoch_flop": 2e11, "fp32_peak_flops": 3e11}
    joint = {k: v for k, v in path.items() if "flop" not in k}
    kinds = {k: {"s": 0.1, "share": 0.1} for k, _ in OP_KINDS} | {"other": {"s": 0.0, "share": 0.0}}
    kinds["convolution"]["at_peak_s"] = 0.05
    way = {"workers": 2, "fuse": "off", "trials": 16, "wall_s": 100.0, "trials_per_hour": 576.0,
           "per_trial": {"train_s": 5.0, "eval_s": 1.0, "total_s": 6.5, "outside_trials_s": 0.3},
           "pairing": {m: 0.9 for m in THROUGHPUT_METRICS}}
    return {"seed": path, "default": path, "seed_joint": joint,
            "schedules": {"alternate": {"mean": {"sec_per_epoch": 0.1, "pair/forward_top1": 0.9}}},
            "profile": {"seed": {"precision": "bf16", "epoch_s": 1.0, "profiled_s": 0.9, "outside_ops_s": 0.1,
                                 "epoch_flop": 2e11, "peak_epoch_s": 0.4, "peak_flops": 5e11, "kinds": kinds}},
            "sweep": {"harness_overhead": 0.03, "trials": 16, "wall_s": 90.0, "setup_s": 1.0, "train_s": 60.0,
                      "eval_s": 10.0},
            "throughput": {"trials": 16, "sample": {"pairing": "fixed"}, "tuning_s": 30.0,
                           "tuning": {"workers": 2, "threads": 1, "fused_speedup": 1.5, "rates": {"1x2": 100.0}},
                           "sequential_trials_per_hour": 576.0, "sequential": way, "auto": way, "fused": way},
            "stopping": {"locked_settings": {"stop": "locked"}, "wall_ratio": 0.5, "verdict_same": 8, "conditions": 8,
                         "off": {"trials": 48, "wall_s": 10.0, "ended": {}, "median_stop_epoch": 60.0},
                         "locked": {"trials": 48, "wall_s": 5.0, "ended": {}, "median_stop_epoch": 30.0},
                         "max_abs_diff": {"pair/forward_top1": 0.01}, "verdict_differs": []}}


def test_the_tables_print_every_row_under_its_header(capsys):
    print_tables(results())
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["workload", "schedule"])
    assert [line.split()[0] for line in lines[header + 1:header + 4]] == ["seed", "default", "seed_joint"]
    assert lines[header + 3].split()[-3:] == ["-", "-", "-"]  # the joint schedule: no FLOP figures
    kinds = next(i for i, line in enumerate(lines) if line.split()[:2] == ["op", "kind"])
    assert len(lines[kinds + 1:kinds + 9]) == 8 and lines[kinds + 8].split()[0] == "other"
    ways = next(i for i, line in enumerate(lines) if line.split()[:2] == ["way", "workers"])
    assert [line.split()[0] for line in lines[ways + 1:ways + 4]] == ["sequential", "auto", "fused"]


def test_a_section_alone_prints_no_empty_table(capsys):
    print_tables({"sweep": results()["sweep"]})
    out = capsys.readouterr().out
    assert "workload" not in out and "harness overhead: 3.0%" in out


def test_the_scratch_store_points_mlflow_into_itself_and_gives_the_environment_back(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    with scratch_store() as store:
        assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{store}/mlflow.db"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db" and not store.exists()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with scratch_store():
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ
