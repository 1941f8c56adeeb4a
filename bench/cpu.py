"""`make bench` / `python -m bench cpu`: seconds per epoch of the plain and the fast path of the SAME
schedule, FLOP utilisation against a peak measured in the same run, the joint schedule as the different
algorithm it is (its own speed and pairing metrics over 3 seeds), and the sweep harness's overhead.

Like with like: `plain` and `fast fp32` run the same steps on the same batches with the same maths
(fused upsample and fused Adam compute the same function); `fast` adds precision=auto, which is bf16
where the hardware computes it natively: a change of the maths, named in its own column.
Everything is measured side by side in one run: the machine is shared and noisy, so absolute
times drift between runs while ratios hold. Results go to the terminal and to bench.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch

from cyclelike.config import RunConfig
from cyclelike.data import load_domains
from cyclelike.execution import resolve_device, resolve_precision
from cyclelike.train import train
from study import autotune
from study.spec import load_sweep

from .common import (
    DEFAULT_CELL,
    DEFAULT_SWEEP,
    REFERENCE,
    SEED,
    THROUGHPUT_METRICS,
    default_cell,
    epoch_flops,
    gemm_peak,
    machine,
    scratch_store,
    scratch_sweep,
    timing_sample,
)


def _train_seconds(values: dict) -> tuple[float, list[float]]:
    config = RunConfig.from_dict(values)
    result = train([config], load_domains(config))[0]
    return result.sec_per_epoch, [round(s.epoch_s, 4) for s in result.history]


REPEATS = 3  # trainings per timing: one training of the seed workload gave 0.95 to 1.30 s/epoch on a quiet VM


def sec_per_epoch(config: RunConfig, repeats: int = REPEATS) -> tuple[float, list[list[float]]]:
    """The median over `repeats` trainings of each one's seconds per epoch, each timed in a process of its own,
    as a study's trial is: after the plain and fp32 trainings in the same process, the seed workload's bf16 epochs
    took 1.31-1.46 s against 1.03-1.18 s alone (the allocator's and oneDNN's caches keep what ran before)."""
    import multiprocessing
    import statistics

    runs = []
    for _ in range(repeats):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            runs.append(pool.apply(_train_seconds, (config.to_dict(),)))
    return statistics.median(s for s, _ in runs), [epochs for _, epochs in runs]


def workload(name: str, config: RunConfig, epochs: int, with_flops: bool) -> dict:
    """Plain, fast fp32 and fast (precision=auto) timings of one workload and schedule, side by side."""
    # every core as torch threads, set, as a timing study's trial runs (sweep --workers auto): torch's default,
    # unset, spread 1.09 to 1.30 s/epoch over two runs of the seed workload where set it gave 1.05 to 1.07
    reference = config.replace(**REFERENCE, epochs=epochs, warmup_epochs=1, threads=autotune.cores())
    fast = config.replace(epochs=epochs, warmup_epochs=1, threads=autotune.cores())
    ref_s, ref_epochs = sec_per_epoch(reference)
    fp32_s, _ = sec_per_epoch(fast.replace(precision="fp32"))
    fast_s, fast_epochs = sec_per_epoch(fast)
    device = resolve_device(fast.device)
    out = {"schedule": config.direction_schedule, "reference_sec_per_epoch": ref_s, "fast_fp32_sec_per_epoch": fp32_s,
           "fast_sec_per_epoch": fast_s, "speedup_same_maths": ref_s / fp32_s, "speedup": ref_s / fast_s,
           "reference_epochs_s": ref_epochs, "fast_epochs_s": fast_epochs, "epochs_timed": epochs - 1,
           "trainings_per_timing": REPEATS,
           "fast_precision": resolve_precision(fast.precision, device), "config": fast.to_dict()}
    if with_flops:
        executed = epoch_flops(fast)
        model = epoch_flops(reference.replace(epochs=1))  # the unfused model's FLOPs: what the work "is"
        peak = gemm_peak(out["fast_precision"], device)
        # the fp32 fast path runs the same ops in fp32: its share of the fp32 peak, measured now as well
        fp32_peak = peak if out["fast_precision"] == "fp32" else gemm_peak("fp32", device)
        out.update({"fast_epoch_flop": executed, "reference_epoch_flop": model, "peak_flops": peak,
                    "achieved_flops": executed / fast_s, "flop_utilisation": executed / fast_s / peak,
                    "model_flops_per_s": model / fast_s, "fp32_peak_flops": fp32_peak,
                    "fp32_flop_utilisation": executed / fp32_s / fp32_peak})
    print(f"{name:8s} [{config.direction_schedule}] plain {ref_s:.3f} s/epoch  fast fp32 {fp32_s:.3f} "
          f"({ref_s / fp32_s:.2f}x)  fast {out['fast_precision']} {fast_s:.3f} ({ref_s / fast_s:.2f}x)"
          + (f"  FLOP utilisation {out['flop_utilisation']:.0%} (fp32: {out['fp32_flop_utilisation']:.0%} of "
             f"{out['fp32_peak_flops'] / 1e9:.0f} GFLOP/s)" if with_flops else ""), flush=True)
    return out


def schedule_pairing(config: RunConfig, seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """Pairing metrics and speed of one schedule over several seeds: what the schedule does to the science."""
    from analysis.pairing import evaluate_pairing

    rows = []
    for seed in seeds:
        run = config.replace(seed=seed)
        data = load_domains(run)
        result = train([run], data)[0]
        m = evaluate_pairing(result.translator.forward, result.translator.backward, data.x, data.y, data.pi).metrics
        rows.append({"seed": seed, "sec_per_epoch": result.sec_per_epoch,
                     **{k: m[k] for k in ("pair/forward_top1", "pair/bijectivity", "pair/mutual", "pair/cycle_top1")}})
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "seed"}
    print(f"{config.direction_schedule:10s} over seeds {list(seeds)}: "
          + "  ".join(f"{k}={v:.3f}" for k, v in mean.items()), flush=True)
    return {"runs": rows, "mean": mean}


# what each profiled op is, by the first pattern its name contains: the rows of `make bench --only profile`
OP_KINDS = (("convolution", ("conv", "mkldnn_convolution")), ("norm", ("batch_norm", "instance_norm", "layer_norm")),
            ("activation", ("relu", "tanh", "sigmoid", "threshold", "leaky")),
            ("loss", ("l1_loss", "binary_cross_entropy", "mse_loss", "abs", "sgn")),
            ("optimizer", ("adam", "_foreach", "lerp", "addcdiv", "addcmul", "sqrt")),
            ("cast", ("aten::to", "_to_copy", "copy_")),
            ("data movement", ("cat", "stack", "index", "clone", "contiguous", "pad", "upsample", "slice",
                               "select", "view", "reshape", "permute", "transpose", "empty", "zero", "fill")))


def op_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, patterns in OP_KINDS if any(p in lowered for p in patterns)), "other")


def profile_epoch(config: RunConfig) -> dict:
    """One epoch of `config` (after a warm-up epoch) under torch.profiler: self time per op kind, beside the
    epoch's wall time and what its convolution FLOPs would take at the GEMM peak measured now. Where the
    time goes, for whoever speeds the fast path up next."""
    from torch.profiler import ProfilerActivity, profile

    from cyclelike.nets import build
    from cyclelike.replay import Eager
    from cyclelike.steps import autocaster, gan_criterion
    from cyclelike.train import OneSeed, run_epoch

    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    data = load_domains(config).to(device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    config = config.replace(replay="off")  # an eager epoch, profiled op by op
    group = OneSeed(*build(config, device), config, device)
    gan, autocast = gan_criterion(config.gan_loss), autocaster(precision, device)
    run_epoch(group, data, config, [gen], gan, autocast, Eager())  # allocator, caches and oneDNN primitives
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:  # the epoch alone: no network building, no evaluation
        t0 = time.perf_counter()
        run_epoch(group, data, config, [gen], gan, autocast, Eager())
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    kinds: dict[str, float] = {}
    for event in prof.key_averages():
        # self time: each op's own time, without what its children take (no time is counted twice)
        kinds[op_kind(event.key)] = kinds.get(op_kind(event.key), 0.0) + event.self_cpu_time_total / 1e6
    flops = epoch_flops(config.replace(epochs=1))
    peak = gemm_peak(precision, device)
    rows = {kind: {"s": round(kinds.get(kind, 0.0), 4), "share": kinds.get(kind, 0.0) / wall}
            for kind in [k for k, _ in OP_KINDS] + ["other"]}
    rows["convolution"]["at_peak_s"] = flops / peak
    return {"precision": precision, "epoch_s": wall, "profiled_s": sum(kinds.values()), "kinds": rows,
            "epoch_flop": flops, "peak_flops": peak, "peak_epoch_s": flops / peak,
            "outside_ops_s": max(0.0, wall - sum(kinds.values())), "config": config.to_dict()}


def harness_overhead() -> dict:
    """The default sweep's timing sample in a scratch store, one worker: the workers' busy seconds against
    the trials' own work (loading images, building networks, training epochs, evaluations)."""
    from study.stores.mlflow import prepare_store
    from study.sweep import WORK_COLUMNS, run_sweep

    with scratch_store() as store:
        # a store is created once per machine, not once per sweep: its schema migration is set up here
        t0 = time.perf_counter()
        prepare_store()
        setup_s = time.perf_counter() - t0
        spec = load_sweep(DEFAULT_SWEEP, timing_sample())
        spec.name = "bench-overhead"
        table = run_sweep(spec, storage_url=str(store / "optuna.journal"), probe=False)
    done = table[table["state"] == "COMPLETE"]
    return {"trials": int(len(done)), "wall_s": table.attrs["wall_s"],
            **{column[5:]: float(done[column].sum()) for column in WORK_COLUMNS},
            "harness_overhead": table.attrs["harness_overhead"], "store_setup_s": setup_s}


def throughput() -> dict:
    """Trials per hour of the default sweep's timing sample, three ways in one run: today's (1 worker with
    every thread, seeds one after another), auto workers, and auto workers with fused seeds. The auto
    measurement (of the sample's typical cell, as `make sweep` makes it) is made and cached before the
    clock starts: a machine pays it once per cell."""
    from study.autotune import plan_workers

    sets = timing_sample()
    spec = load_sweep(DEFAULT_SWEEP, sets)
    t0 = time.perf_counter()
    plan_workers(spec, "auto", "auto")
    tune_s = time.perf_counter() - t0
    tuning = autotune.cached(autotune.typical_cell(autotune.timing_sample(spec)))
    trials = len(spec.grid_cells()) * len(spec.seeds)
    ways = {"sequential": (1, "off"), "auto": ("auto", "off"), "fused": ("auto", "on")}
    out: dict = {"trials": trials, "sample": sets, "tuning": vars(tuning), "tuning_s": tune_s}
    for way, (workers, fuse) in ways.items():
        table, runs = scratch_sweep(f"bench-{way}", 0, workers, fuse, sets)
        done = table[table["state"] == "COMPLETE"]
        wall = table.attrs["wall_s"]
        profile = {k: float(done[f"time_{k}"].mean()) for k in ("train_s", "eval_s", "total_s") if f"time_{k}" in done}
        slots = tuning.workers if workers == "auto" else workers
        # worker start (a Python with torch per process), the study's coordination, idle slots at the end
        profile["outside_trials_s"] = max(0.0, wall * slots - float(done["time_total_s"].sum())) / max(1, len(done))
        out[way] = {"workers": slots, "fuse": fuse, "trials": int(len(done)), "wall_s": wall,
                    "trials_per_hour": 3600.0 * len(done) / wall, "per_trial": profile,
                    "pairing": {m: float(runs[m].mean()) for m in THROUGHPUT_METRICS if m in runs}}
        print(f"throughput {way:10s} {len(done)} trials in {wall:.1f} s: {out[way]['trials_per_hour']:.0f} trials/h  "
              + "  ".join(f"{m.removeprefix('pair/')}={v:.3f}" for m, v in out[way]["pairing"].items()), flush=True)
    sequential = out["sequential"]["trials_per_hour"]
    out |= {"sequential_trials_per_hour": sequential, "auto_trials_per_hour": out["auto"]["trials_per_hour"],
            "fused_trials_per_hour": out["fused"]["trials_per_hour"],
            "speedup": max(out[w]["trials_per_hour"] for w in ways) / sequential}
    return out


# the stopping rule the default study is compared with: the assignment unchanged over 2 evaluations 10 epochs
# apart after the one it was first seen at (and forward_top1 >= 0.9 where a pair is given)
LOCKED = {"stop": "locked", "patience": 2, "patience_epochs": 10}
VERDICT = 0.9  # a condition "holds its pairs" when its mean forward_top1 reaches this


def stopping() -> dict:
    """The whole default study twice in one run, with stop = off (its every epoch) and with stop = locked: the
    wall time of each, how the runs ended, and whether the answers differ, condition by condition (mean
    forward_top1, bijectivity and mutual over seeds, and the verdict forward_top1 >= 0.9)."""
    out: dict = {"locked_settings": LOCKED}
    tables = {}
    for way, sets in (("off", None), ("locked", LOCKED)):
        table, runs = scratch_sweep(f"bench-stop-{way}", 0, "auto", "auto", sets)
        reasons = runs["tags.stop/reason"].value_counts().to_dict() if "tags.stop/reason" in runs else {}
        stop_epochs = pd.to_numeric(runs["tags.summary.stop/epoch"], errors="coerce")
        out[way] = {"trials": int((table["state"] == "COMPLETE").sum()), "wall_s": table.attrs["wall_s"],
                    "ended": reasons, "median_stop_epoch": float(stop_epochs.median())}
        tables[way] = runs.groupby(list(DEFAULT_CELL))[list(THROUGHPUT_METRICS[:3])].mean()
        print(f"stopping {way:7s} {out[way]['trials']} trials in {out[way]['wall_s']:.1f} s; ended: {reasons}",
              flush=True)
    off, locked = tables["off"], tables["locked"].reindex(tables["off"].index)
    diff = (locked - off).abs()
    same = ((off["pair/forward_top1"] >= VERDICT) == (locked["pair/forward_top1"] >= VERDICT))
    out |= {"conditions": int(len(off)), "verdict_same": int(same.sum()),
            "verdict_differs": [dict(zip(off.index.names, k, strict=True)) for k in off.index[~same]],
            "max_abs_diff": {m: float(diff[m].max()) for m in diff},
            "wall_ratio": out["locked"]["wall_s"] / out["off"]["wall_s"]}
    return out


SECTIONS = ("paths", "schedules", "overhead", "throughput", "stopping", "profile")


def run(only: list[str], epochs: int) -> dict:
    """The sections in `only`, in the order of SECTIONS; `epochs` per timing (the first is warm-up)."""
    default = default_cell()
    results = {"machine": machine()}
    print(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
          f"native bf16: {results['machine']['native_bf16']}, precision: {results['machine']['precision']}, "
          f"flags: {' '.join(results['machine']['cpu_flags'])}", flush=True)
    if "paths" in only:
        results["seed"] = workload("seed", SEED, epochs, with_flops=True)
        results["default"] = workload("default", default, max(epochs, 12), with_flops=True)
        # the joint schedule is another algorithm (half the optimizer steps): reported apart, never as a speed-up
        results["seed_joint"] = workload("seed", SEED.replace(direction_schedule="joint"), epochs, with_flops=False)
    if "schedules" in only:
        results["schedules"] = {s: schedule_pairing(default.replace(direction_schedule=s))
                                for s in ("alternate", "joint")}
    if "overhead" in only:
        results["sweep"] = harness_overhead()
    if "throughput" in only:
        results["throughput"] = throughput()
    if "stopping" in only:
        results["stopping"] = stopping()
    if "profile" in only:
        results["profile"] = {"seed": profile_epoch(SEED), "default": profile_epoch(default)}
    return results


def write(results: dict, out: Path, merge: bool) -> None:
    """bench.json (`out`) with the targets met, then the tables. merge: one section re-run, the others stay as their
    last full run measured them (ratios are per section)."""
    if merge and out.exists():
        results = {**json.loads(out.read_text()), **results}
    results["targets"] = {k: v for k, v in {
        "seed_fast_ge_2x_plain_same_schedule": results["seed"]["speedup"] >= 2.0 if "seed" in results else None,
        "seed_bf16_ge_75pct_peak": results["seed"]["flop_utilisation"] >= 0.75
        if results.get("seed", {}).get("fast_precision") == "bf16" else None,
        "harness_overhead_le_5pct": results["sweep"]["harness_overhead"] <= 0.05 if "sweep" in results else None,
        "throughput_speedup_ge_2x": results["throughput"]["speedup"] >= 2.0 if "throughput" in results else None,
    }.items() if v is not None}
    out.write_text(json.dumps(results, indent=2))
    print_tables(results)
    print(f"targets: {results['targets']}\nwritten to {out}")


def print_tables(results: dict) -> None:
    rows = []
    for name in ("seed", "default", "seed_joint"):
        if name not in results:
            continue
        r = results[name]
        util = (f"{r['achieved_flops'] / 1e9:.0f} G", f"{r['peak_flops'] / 1e9:.0f} G",
                f"{r['flop_utilisation']:.0%}") if "achieved_flops" in r else ("-", "-", "-")
        rows.append((name, r["schedule"], f"{r['reference_sec_per_epoch']:.3f}", f"{r['fast_fp32_sec_per_epoch']:.3f}",
                     f"{r['speedup_same_maths']:.2f}x", f"{r['fast_sec_per_epoch']:.3f}", r["fast_precision"],
                     f"{r['speedup']:.2f}x", *util))
    print_table(("workload", "schedule", "plain s/epoch", "fast fp32", "same-maths speedup", "fast", "precision",
                 "speedup", "FLOP/s (fast)", "peak FLOP/s", "util"), rows)
    if "fp32_flop_utilisation" in results.get("seed", {}):
        r = results["seed"]
        print(f"seed fast path in fp32: {r['fast_epoch_flop'] / r['fast_fp32_sec_per_epoch'] / 1e9:.0f} GFLOP/s, "
              f"{r['fp32_flop_utilisation']:.0%} of the fp32 GEMM peak measured in the same run "
              f"({r['fp32_peak_flops'] / 1e9:.0f} GFLOP/s)")
    if "schedules" in results:
        print("\npairing of the default cell (32 px, 60 epochs) by schedule, mean over 3 seeds:")
        for schedule, r in results["schedules"].items():
            print(f"  {schedule:10s} " + "  ".join(f"{k}={v:.3f}" for k, v in r["mean"].items()))
    if "profile" in results:
        for name, r in results["profile"].items():
            print(f"\nprofile of one {name}-workload epoch ({r['precision']}): {r['epoch_s']:.3f} s wall, "
                  f"{r['profiled_s']:.3f} s inside ops (self time), {r['outside_ops_s']:.3f} s outside them; its "
                  f"{r['epoch_flop'] / 1e9:.1f} GFLOP of convolutions would take {r['peak_epoch_s']:.3f} s at the "
                  f"measured {r['precision']} GEMM peak ({r['peak_flops'] / 1e9:.0f} GFLOP/s)")
            print_table(("op kind", "s", "share of epoch", "at peak s"),
                        [(kind, f"{v['s']:.3f}", f"{v['share']:.0%}", f"{v['at_peak_s']:.3f}" if "at_peak_s" in v
                          else "-") for kind, v in r["kinds"].items()])
    if "sweep" in results:
        s = results["sweep"]
        work = {k: s.get(k, 0.0) for k in ("setup_s", "train_s", "eval_s")}
        print(f"\nharness overhead: {s['harness_overhead']:.1%} of the worker's busy seconds in the default sweep's "
              f"{s['trials']}-trial timing sample ({s['wall_s']:.1f} s wall; the trials' own work: "
              f"{work['setup_s']:.1f} s loading images and building networks, {work['train_s']:.1f} s of training "
              f"epochs, {work['eval_s']:.1f} s of evaluation)")
    if "throughput" in results:
        t = results["throughput"]
        print(f"\nthroughput: the default sweep's {t['trials']}-trial timing sample (pinned: {t.get('sample')}; every "
              "architecture, N and lambda_cyc), three ways in this run "
              f"(auto: {t['tuning']['workers']} worker(s) x {t['tuning']['threads']} thread(s); measured fused "
              f"speed-up {t['tuning']['fused_speedup']:.2f}x; measuring took {t['tuning_s']:.0f} s, cached, "
              "not counted)")
        print("auto's measurement, trainings of the typical cell per hour by workers x threads: "
              + ", ".join(f"{plan} = {rate:.0f}" for plan, rate in t["tuning"]["rates"].items()))
        rows = []
        for way in ("sequential", "auto", "fused"):
            r = t[way]
            rows.append((way, str(r["workers"]), r["fuse"], str(r["trials"]), f"{r['wall_s']:.1f}",
                         f"{r['trials_per_hour']:.0f}",
                         f"{r['trials_per_hour'] / t['sequential_trials_per_hour']:.2f}x",
                         *(f"{r['per_trial'].get(k, float('nan')):.2f}"
                           for k in ("train_s", "eval_s", "total_s", "outside_trials_s")),
                         *(f"{r['pairing'].get(m, float('nan')):.3f}" for m in THROUGHPUT_METRICS)))
        print_table(("way", "workers", "fuse", "trials", "wall s", "trials/hour", "ratio", "train s/trial",
                     "eval s/trial", "total s/trial", "outside s/trial",
                     *(m.removeprefix("pair/") for m in THROUGHPUT_METRICS)), rows)
    if "stopping" in results:
        s = results["stopping"]
        print(f"\nstop = locked ({', '.join(f'{k}={v}' for k, v in s['locked_settings'].items())}) against stop = off, "
              f"the whole default study each way in this run:")
        for way in ("off", "locked"):
            r = s[way]
            print(f"  {way:7s} {r['trials']} trials in {r['wall_s']:.1f} s wall; ended: {r['ended']}; median "
                  f"last epoch {r['median_stop_epoch']:.0f}")
        print(f"  wall time locked / off: {s['wall_ratio']:.2f}; verdict forward_top1 >= {VERDICT} the same in "
              f"{s['verdict_same']} of {s['conditions']} conditions; largest change of a condition's mean: "
              + ", ".join(f"{k.removeprefix('pair/')} {v:.3f}" for k, v in s["max_abs_diff"].items()))
        for condition in s["verdict_differs"]:
            print(f"  verdict differs: {condition}")
    print("original report (2018 GPU, its own schedule): 1.5 s/epoch at N = 10")


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """The rows (already formatted) under their header, after a blank line; nothing where there are none."""
    if rows:
        print("\n" + pd.DataFrame(rows, columns=list(header)).to_string(index=False))
