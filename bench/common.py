"""What the benchmarks share: the workloads they time (the seed workload, the default sweep's largest cell, the
reference settings), the default sweep run in a scratch store, FLOP counting and a GEMM peak, and the machine and
commit measured.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import patch

import torch
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

from cyclelike.config import RunConfig
from cyclelike.execution import resolve_device, resolve_precision
from cyclelike.train import train
from study import autotune
from study.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SWEEP = REPO / "study" / "configs" / "default.toml"
# what a straightforward port of the original does: fp32, NCHW, unfused; the schedule is the config's own
REFERENCE = dict(precision="fp32", channels_last="off", fused_upsample="off", fused_adam="off", replay="off",
                 compile=False)
# shared/DESIGN.md's seed workload: 128 px, N = 10 pairs, batch 5, unet 64*min(8, 2^i), lambda_l1 = 10,
# with the original's BatchNormalization (the study's default is instance norm)
SEED = RunConfig(image_size=128, n_images=10, n_holdout=0, batch_size=5, arch="unet", base_filters=64,
                 d_filters=64, norm="batch", lambda_l1=10.0, lambda_adv=1.0, lr=1e-3, scheme="cyclelike",
                 pairing="aligned")
# the largest cell of the default sweep, the one that dominates its wall time
DEFAULT_CELL = {"arch": "unet", "n_images": 10, "pairing": "fixed", "lambda_cyc": 1.0}
# the pairing metrics a sweep's runs are read by
THROUGHPUT_METRICS = ("pair/forward_top1", "pair/bijectivity", "pair/mutual", "pair/cycle_top1")


def default_cell() -> RunConfig:
    return load_sweep(DEFAULT_SWEEP).config_for(DEFAULT_CELL, 0)


def timing_sample() -> dict:
    """The --set values that cut the default sweep to its timing sample: every architecture, N and cycle
    weight (what changes an epoch's cost), one pairing (which does not)."""
    return autotune.sample_pins(load_sweep(DEFAULT_SWEEP).space)


def epoch_flops(config: RunConfig) -> float:
    """Convolution (and matmul) FLOPs of one epoch as executed, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        train([config.replace(epochs=1)])
    return float(counter.get_total_flops())


def gemm_peak(precision: str, device: torch.device, min_run_time: float = 0.2) -> float:
    """FLOP/s of the faster of two large GEMM-bound kernels: a 2048^2 matmul (MKL's GEMM for fp32 on CPU,
    oneDNN's for bf16) and a 3x3 convolution of 256 channels on 8 x 64 x 64 (oneDNN). On an AMD CPU, MKL's
    fp32 GEMM takes an AVX2 path while oneDNN's convolutions use AVX-512: the matmul alone put the fp32
    "peak" below what the training's own convolutions reach, which is no peak. Each kernel at its fastest
    call over `min_run_time` seconds (a peak, not a typical time), with the torch threads the training has
    (Timer's own default is one thread)."""
    import torch.nn.functional as F

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(2048, 2048, device=device, dtype=dtype) for _ in range(2))
    x = torch.randn(8, 256, 64, 64, device=device, dtype=dtype)
    w = torch.randn(256, 256, 3, 3, device=device, dtype=dtype)
    kernels = ((lambda: a @ b, 2 * 2048**3), (lambda: F.conv2d(x, w, padding=1), 2 * 8 * 64 * 64 * 256 * 256 * 9))
    best = 0.0
    for run, flop in kernels:
        timer = Timer("run()", globals={"run": run}, num_threads=torch.get_num_threads())
        best = max(best, flop / min(timer.blocked_autorange(min_run_time=min_run_time).times))
    return best


@contextlib.contextmanager
def scratch_store() -> Iterator[Path]:
    """A temporary mlruns/ folder for one scratch sweep's MLflow and Optuna stores, MLFLOW_TRACKING_URI pointing
    into it while it lasts. The study modules are imported by the caller before: patch.dict puts the whole
    environment back, and what they set at import must outlive the scratch store."""
    with tempfile.TemporaryDirectory() as tmp, \
            patch.dict(os.environ, {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlruns/mlflow.db"}):
        yield Path(tmp) / "mlruns"


def scratch_sweep(name: str, trials: int, workers, fuse: str, sets: dict | None = None):
    """The default sweep (`trials` of it, 0: all; `sets` pins values) in a scratch store, as `make sweep`
    would run it: the trials table and the MLflow runs (metrics and params by their own names)."""
    import mlflow

    from study.stores.mlflow import prepare_store
    from study.sweep import run_sweep

    with scratch_store() as store:
        prepare_store()  # once per machine in real use: not part of any way's time
        spec = load_sweep(DEFAULT_SWEEP, sets)
        spec.name = name
        table = run_sweep(spec, storage_url=str(store / "optuna.journal"), workers=workers, max_trials=trials,
                          probe=False, fuse=fuse)
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        runs = mlflow.search_runs(experiment_names=[name], filter_string="tags.`optuna.state` = 'COMPLETE'")
        return table, runs.rename(columns=lambda c: c.removeprefix("metrics.").removeprefix("params."))


def git_commit() -> str:
    """The commit measured, or "unknown" outside a git checkout (a device image may carry the files alone)."""
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO,
                                timeout=10).stdout.strip() or "unknown"
    return commit


def machine() -> dict:
    """The host measured on: its CPU and SIMD flags, cores, torch threads, what precision=auto resolves to, the GPU
    where there is one, the versions and the commit."""
    flags = ""
    with contextlib.suppress(OSError, StopIteration):
        flags = next(line.split(":", 1)[1] for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    simd = sorted(f for f in flags.split() if f.startswith(("avx", "amx", "fma", "sse4")))
    return {"cpu": autotune.cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_flags": simd, "native_bf16": resolve_precision("auto", torch.device("cpu")) == "bf16",
            "precision": resolve_precision("auto", resolve_device("auto")),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(), "git_commit": git_commit(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
