"""`--workers auto` and `--fuse-seeds auto`: how to fill THIS machine, measured once and cached.

A 32 px trial cannot use many cores: its convolutions are too small. Several trials side by side, each
with fewer torch threads, or the seeds of a condition fused into one stacked model, may finish more
trials per hour. Which one pays depends on the CPU (or GPU), its core count and torch, so it is measured:
a few epochs of the study's typical cell (the median cost of its timing sample) under each plan (workers
x threads, never more than the cores), and the seeds fused against the same seeds one after another. The
result is cached per machine (CPU model, cores, torch version, GPU) and cell, in
~/.cache/cyclelike/autotune.json (CYCLELIKE_AUTOTUNE_CACHE moves it); `--workers N` or `--fuse-seeds on|off`
override it.

On CUDA the workers share one GPU, and a small trial leaves most of it idle (kernel launches, not FLOPs). Plans are
workers x (seeds alone or fused): one worker alone and fused first, which gives the free memory and each worker's
peak; then more workers, doubling while it pays, never more than fit in MEMORY_SHARE of the free memory nor more
than the cores (each worker needs a core to launch its kernels). choose_gpu picks among the measured plans.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from cyclelike.config import ConfigError, RunConfig
from cyclelike.fused import check_fusable

from .spec import SweepError, SweepSpec

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


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


def machine_key() -> str:
    import torch

    return f"{cpu_model()} | {cores()} cores | torch {torch.__version__} | {gpu_name()}"


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
    fused_speedup: float  # K seeds fused against the same K one after another, at the chosen threads (on CUDA: the
    # best fused plan's rate over the best plan's without fusing)
    workers: int
    threads: int
    fuse: bool
    memory: dict[str, int] = field(default_factory=dict)  # CUDA: the free bytes and each worker's peak, alone and fused

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
    train([config.replace(epochs=1)], data)  # warm-up: allocator, oneDNN primitives
    barrier.wait()
    t0 = time.perf_counter()
    train([config], data)
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
    from cyclelike.train import train

    torch.set_num_threads(threads)
    configs = [config.replace(seed=s, threads=threads, epochs=MEASURE_EPOCHS) for s in seeds]
    data = load_domains(configs[0])
    train([c.replace(epochs=1) for c in configs], data)  # warm-up
    t0 = time.perf_counter()
    for c in configs:
        train([c], data)
    alone = time.perf_counter() - t0
    t0 = time.perf_counter()
    train(configs, data)
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
    if on_cuda(config):
        print(f"auto: measuring workers sharing the GPU, seeds alone and fused, for this machine ({machine}) and "
              f"cell; cached in {path}", flush=True)
        tuning = tune_gpu(config, seeds, fusable, machine, cell)
    else:
        print(f"auto: measuring workers x threads for this machine ({machine}) and cell; cached in {path}",
              flush=True)
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


# what a worker process holds on the GPU that its allocator does not count (the CUDA context, cuBLAS and cuDNN
# workspaces: about 0.5-1 GiB with CUDA 12-13), counted for each worker so that the workers fit
CONTEXT_BYTES = 1 << 30
MEMORY_SHARE = 0.8  # of the free memory: the rest for fragmentation and whatever else starts on the GPU
PLAN_TIMEOUT_S = 300  # one plan's workers answer within this, or the plan counts as failed
GAIN = 1.05  # more workers are measured while the last doubling gave at least this much more


def on_cuda(config: RunConfig) -> bool:
    from cyclelike.execution import resolve_device

    return resolve_device(config.device).type == "cuda"


def gpu_workers_fit(free_bytes: float, peak_bytes: float, n_cores: int) -> int:
    """Workers whose peaks (each with a context) fit in MEMORY_SHARE of the free memory, and no more than the cores:
    each worker needs a core of its own to launch its kernels. 0 where not even one fits."""
    return max(0, min(n_cores, int(MEMORY_SHARE * free_bytes // (peak_bytes + CONTEXT_BYTES))))


def choose_gpu(free_bytes: float, peak_alone: float, peak_fused: float, rates: dict[tuple[int, bool], float],
               n_cores: int) -> tuple[int, bool]:
    """The plan (workers, seeds fused) with the most trials per hour among `rates` (measured: 0 where it failed) that
    fit in memory and cores; ties go to fewer workers, then to seeds alone. One worker alone where nothing fits: a
    sweep must run, and one worker is what `--workers 1` would do."""
    fits = {False: gpu_workers_fit(free_bytes, peak_alone, n_cores),
            True: gpu_workers_fit(free_bytes, peak_fused, n_cores)}
    allowed = {p: r for p, r in rates.items() if p[0] <= fits[p[1]] and r > 0}
    if not allowed:
        return 1, False
    return max(allowed, key=lambda p: (allowed[p], -p[0], not p[1]))


def worker_counts(limit: int) -> list[int]:
    """The worker counts measured up to `limit`: doubling from 1, and the limit itself."""
    counts = [w for w in (1 << i for i in range(limit.bit_length())) if w <= limit]
    return counts + ([limit] if limit > 0 and counts[-1] != limit else [])


def _train_gpu(configs: list[RunConfig], barrier, out) -> None:
    """One worker of a GPU plan: warm up, wait for the plan's other workers, train `configs` (one: alone; several:
    the seeds fused) and answer (seconds, the peak memory this process held, the free memory it saw), or the error."""
    import torch

    from cyclelike.data import load_domains
    from cyclelike.train import train

    def run(epochs: int) -> None:
        jobs = [c.replace(epochs=epochs) for c in configs]
        train(jobs, data)

    try:
        free = torch.cuda.mem_get_info()[0]
        torch.set_num_threads(configs[0].threads)
        data = load_domains(configs[0])
        run(1)  # warm-up: allocator, cuDNN's choices, the graphs' memory pools
    except Exception as error:  # noqa: BLE001 - out of memory, typically: the other workers must not wait for ever
        barrier.abort()
        out.put(f"{type(error).__name__}: {str(error)[:200]}")
        return
    try:
        barrier.wait(timeout=PLAN_TIMEOUT_S)  # a worker that died without a word must not hold the others
        t0 = time.perf_counter()
        run(configs[0].epochs)
        torch.cuda.synchronize()
        # reserved, not allocated: what the caching allocator keeps is memory no other worker can have
        out.put((time.perf_counter() - t0, torch.cuda.max_memory_reserved(), free))
    except threading.BrokenBarrierError:
        out.put("another worker of this plan failed")
    except Exception as error:  # noqa: BLE001
        out.put(f"{type(error).__name__}: {str(error)[:200]}")


def measure_gpu_plan(config: RunConfig, seeds: list[int], workers: int) -> tuple[float, int, int]:
    """Trainings of `config` per hour with `workers` processes sharing the GPU, each training `seeds` (one: alone;
    several: fused), the largest peak memory a worker held and the least free memory a worker saw at its start.
    (0, 0, 0) where a worker failed (out of memory) or did not answer."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    jobs = [config.replace(seed=s, threads=max(1, cores() // workers), epochs=MEASURE_EPOCHS) for s in seeds]
    procs = [ctx.Process(target=_train_gpu, args=(jobs, barrier, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    answers: list = []
    try:
        answers += [out.get(timeout=PLAN_TIMEOUT_S) for _ in procs]
    except queue.Empty:
        answers.append(f"no answer within {PLAN_TIMEOUT_S} s")
        for p in procs:
            if p.is_alive():
                p.terminate()
    for p in procs:
        p.join()
    failed = [a for a in answers if isinstance(a, str)]
    if failed:
        print(f"auto: {workers} worker(s) x {len(seeds)} seed(s) failed: {failed[0]}", flush=True)
        return 0.0, 0, 0
    rate = workers * len(seeds) * 3600.0 / max(a[0] for a in answers) * MEASURE_EPOCHS / config.epochs
    return rate, max(a[1] for a in answers), min(a[2] for a in answers)


def tune_gpu(config: RunConfig, seeds: list[int], fusable: bool, machine: str, cell: str) -> Tuning:
    """Measure the GPU plans (module docstring) and choose among them."""
    n = cores()
    groups = [[seeds[0]]] + ([list(seeds)] if fusable and len(seeds) > 1 else [])
    rates: dict[tuple[int, bool], float] = {}
    memory: dict[str, int] = {}
    for group in groups:
        fused = len(group) > 1
        rate, peak, free = measure_gpu_plan(config, group, 1)
        rates[(1, fused)] = rate
        memory.setdefault("free_bytes", free)  # seen by the first worker, alone on the GPU
        memory["peak_fused_bytes" if fused else "peak_alone_bytes"] = peak
        fit = gpu_workers_fit(memory["free_bytes"], peak, n)
        print(f"auto: 1 worker, seeds {'fused' if fused else 'alone'}: {rate:.0f} trainings/h, peak "
              f"{peak / 2**30:.2f} GiB of {memory['free_bytes'] / 2**30:.1f} GiB free: up to {fit} worker(s) fit",
              flush=True)
        for w in worker_counts(fit)[1:] if rate > 0 else []:
            rates[(w, fused)] = measure_gpu_plan(config, group, w)[0]
            print(f"auto: {w} workers, seeds {'fused' if fused else 'alone'}: {rates[(w, fused)]:.0f} trainings/h",
                  flush=True)
            if rates[(w, fused)] < GAIN * rate:  # the GPU (or the cores) are full: more workers only queue
                break
            rate = rates[(w, fused)]
    workers, fuse = choose_gpu(memory["free_bytes"], memory["peak_alone_bytes"],
                               memory.get("peak_fused_bytes", float("inf")), rates, n)
    best = {f: max((r for (_, g), r in rates.items() if g == f), default=0.0) for f in (False, True)}
    return Tuning(machine, cell, {f"{w}x{max(1, n // w)}" + (" fused" if f else ""): r for (w, f), r in rates.items()},
                  best[True] / best[False] if best[False] > 0 else 0.0, workers, max(1, n // workers), fuse, memory)


class Plan(NamedTuple):
    workers: int  # worker processes
    threads: int  # torch threads per worker
    fuse: bool  # whether a condition's seeds train as one stacked model


def plan_workers(spec: SweepSpec, workers: int | str, fuse: str) -> Plan:
    """Worker processes, torch threads per worker and whether seeds fuse. `auto` reads this machine's cached
    measurement of the study's typical cell (measuring it once where there is none; on CUDA, workers sharing the GPU
    within its free memory), except for a timing study: one worker with every thread, seeds one after
    another; never more threads in all than cores."""
    if workers != "auto" and (not isinstance(workers, int) or workers < 1):
        raise SweepError(f"--workers {workers}: expected an integer >= 1 or auto")
    if fuse not in ("auto", "on", "off"):
        raise SweepError(f"--fuse-seeds {fuse}: expected auto, on or off")
    cell = spec.config_for(spec.grid_cells()[0] if spec.sampler == "grid" else {}, spec.seeds[0])
    if not spec.is_timing and (workers == "auto" or fuse == "auto"):  # only auto measures: ranking builds networks
        cell = typical_cell(timing_sample(spec))
    try:
        check_fusable([cell, cell.replace(seed=cell.seed + 1)])
        fusable = len(spec.seeds) > 1
    except ConfigError as why:
        fusable = False
        if fuse == "on":
            print(f"--fuse-seeds on: seeds run one by one, since {why}", flush=True)
    n = cores()
    if spec.is_timing:  # its times are what it measures: beside another trial they would time the contention too
        count = 1 if workers == "auto" else workers
        if count > 1:
            print(f"study {spec.name} is a timing study: with {count} workers its trials run side by side, so their "
                  "times include the contention between them (the report fits only runs timed alone; --workers auto "
                  "times each alone)", flush=True)
        return Plan(count, spec.base_config().threads or max(1, n // count), fusable and fuse == "on")
    tuning = None
    if workers == "auto":
        tuning = tune(cell, spec.seeds, fusable)
    elif fuse == "auto":
        tuning = cached(cell)
    count = tuning.workers if workers == "auto" else workers
    # a fixed `threads` is what every trial sets (cyclelike.train), so it is what the workers run with
    threads = spec.base_config().threads or (tuning.threads if workers == "auto" else max(1, n // count))
    fused = fusable and (fuse == "on" or (fuse == "auto" and tuning is not None and tuning.fuse))
    return Plan(count, threads, fused)
