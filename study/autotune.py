"""`--workers auto` and `--fuse-seeds auto`: how to fill THIS machine, measured once and cached.

A 32 px trial cannot use many cores: its convolutions are too small. Several trials side by side, each
with fewer torch threads, or the seeds of a condition fused into one stacked model, may finish more
trials per hour. Which one pays depends on the CPU (or GPU), its core count and torch, so it is measured:
a few epochs of the study's typical cell (the median cost of its timing sample) under each plan (workers
x threads, never more than the cores), and the seeds fused against the same seeds one after another. The
result is cached per machine (CPU model, cores, torch version, GPU) and cell, in
~/.cache/cyclelike/autotune.json (CYCLELIKE_AUTOTUNE_CACHE moves it); `--workers N` or `--fuse-seeds on|off`
override it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cyclelike.config import RunConfig

MEASURE_EPOCHS = 3  # after one warm-up epoch: enough to rank plans whose rates differ by more than ~10%
CELL_KEYS = ("scheme", "arch", "image_size", "base_filters", "d_filters", "n_images", "batch_size", "norm",
             "direction_schedule", "precision", "device", "lambda_cyc")


def sample_pins(space: dict) -> dict:
    """The space's values that do not change what an epoch costs, pinned to their first: the cells left are a
    sample of the study that costs what the whole study costs per trial (every architecture, N, cycle weight,
    ... of it), not its first cells, which are its cheapest."""
    return {k: v[0] for k, v in space.items() if isinstance(v, list) and k not in CELL_KEYS}


def timing_sample(spec) -> list[RunConfig]:
    """A sweep's timing sample as configurations (seed: its first): the grid's cells with sample_pins' values;
    a random or TPE sweep's fixed values alone."""
    if spec.sampler != "grid":
        return [spec.config_for({}, spec.seeds[0])]
    pins = sample_pins(spec.space)
    return [spec.config_for(c, spec.seeds[0]) for c in spec.grid_cells() if all(c[k] == v for k, v in pins.items())]


def epoch_cost(config: RunConfig) -> float:
    """What an epoch costs, to rank cells: G's forward FLOPs on one image x N, twice with the cycle pass."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cyclelike.nets import define_G

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        define_G(config)(torch.zeros(1, 3, config.image_size, config.image_size))
    return counter.get_total_flops() * config.n_images * (2 if config.lambda_cyc > 0 else 1)


def typical_cell(configs: list[RunConfig]) -> RunConfig:
    """The cell of median cost among `configs`: what auto measures the machine with."""
    return sorted(configs, key=epoch_cost)[len(configs) // 2]


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cache_path() -> Path:
    return Path(os.environ.get("CYCLELIKE_AUTOTUNE_CACHE", Path.home() / ".cache" / "cyclelike" / "autotune.json"))


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_key() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_model()} | {cores()} cores | torch {torch.__version__} | {gpu}"


def cell_key(config: RunConfig) -> str:
    return ",".join(f"{k}={getattr(config, k)}" for k in CELL_KEYS)


def plans(n_cores: int) -> list[tuple[int, int]]:
    """Every (workers, threads per worker) that fills at most the cores: workers x threads <= cores."""
    return [(w, n_cores // w) for w in range(1, n_cores + 1) if n_cores % w == 0]


@dataclass
class Tuning:
    machine: str
    cell: str
    rates: dict[str, float]  # "workers x threads" -> trainings per hour (epochs of the cell, scaled)
    fused_speedup: float  # K seeds fused against the same K one after another, at the chosen threads
    workers: int
    threads: int
    fuse: bool

    @classmethod
    def from_rates(cls, machine: str, cell: str, rates: dict[tuple[int, int], float], fused_speedup: float,
                   n_cores: int) -> Tuning:
        allowed = {p: r for p, r in rates.items() if p[0] * p[1] <= n_cores}
        workers, threads = max(allowed, key=lambda p: (allowed[p], -p[0]))  # ties: fewer processes
        return cls(machine, cell, {f"{w}x{t}": r for (w, t), r in rates.items()}, fused_speedup, workers, threads,
                   fused_speedup > 1.1)  # 10%: above the drift between two timings of one run


def _train_epochs(config: RunConfig, barrier, out) -> None:
    import torch

    from cyclelike.data import load_domains
    from cyclelike.train import train

    torch.set_num_threads(config.threads)
    data = load_domains(config)
    train(config.replace(epochs=1), data)  # warm-up: allocator, oneDNN primitives
    barrier.wait()
    t0 = time.perf_counter()
    train(config, data)
    out.put(time.perf_counter() - t0)


def measure_plan(config: RunConfig, workers: int, threads: int) -> float:
    """Trainings of `config` per hour with `workers` processes of `threads` threads side by side."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    job = config.replace(threads=threads, epochs=MEASURE_EPOCHS)
    procs = [ctx.Process(target=_train_epochs, args=(job, barrier, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    seconds = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return workers * 3600.0 / max(seconds) * MEASURE_EPOCHS / config.epochs


def measure_fused(config: RunConfig, seeds: list[int], threads: int) -> float:
    """Time of the seeds one after another over time of the same seeds fused, at `threads` threads."""
    import torch

    from cyclelike.data import load_domains
    from cyclelike.fused import train_fused
    from cyclelike.train import train

    torch.set_num_threads(threads)
    configs = [config.replace(seed=s, threads=threads, epochs=MEASURE_EPOCHS) for s in seeds]
    data = load_domains(configs[0])
    train_fused([c.replace(epochs=1) for c in configs], data)  # warm-up
    t0 = time.perf_counter()
    for c in configs:
        train(c, data)
    alone = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_fused(configs, data)
    return alone / (time.perf_counter() - t0)


def cached(config: RunConfig) -> Tuning | None:
    """This machine's tuning for the cell, or None where it was never measured."""
    path = cache_path()
    entry = json.loads(path.read_text()).get(machine_key(), {}).get(cell_key(config)) if path.exists() else None
    return Tuning(**entry) if entry else None


def tune(config: RunConfig, seeds: list[int], fusable: bool, refresh: bool = False) -> Tuning:
    """The cached tuning for this machine and cell, measured (about a minute) where there is none."""
    path, machine, cell = cache_path(), machine_key(), cell_key(config)
    known = cached(config)
    if known is not None and not refresh:
        return known
    cache = json.loads(path.read_text()) if path.exists() else {}
    n = cores()
    print(f"auto: measuring workers x threads for this machine ({machine}) and cell; cached in {path}", flush=True)
    rates = {(w, t): measure_plan(config, w, t) for w, t in plans(n)}
    best = max(rates, key=rates.get)
    speedup = measure_fused(config, seeds, best[1]) if fusable and len(seeds) > 1 else 0.0
    tuning = Tuning.from_rates(machine, cell, rates, speedup, n)
    cache.setdefault(machine, {})[cell] = asdict(tuning)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    os.replace(tmp, path)
    return tuning
