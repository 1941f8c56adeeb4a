"""`python -m bench device [--quick] [--out bench.json]` (and `make bench`'s section `device`): the same workloads
as bench/cpu.py on THIS device, every way of executing them side by side in one run.

- ways: the seed workload and the default cell alone, plain (the reference code's stand-in: fp32, every switch
  off), eager (switches auto, replay off), replayed (whole steps as CUDA graphs), in fp32 and bf16.
- switches: each execution switch on against off from the auto setting, at the precision `ways` found faster.
- pairing: the default cell replayed against eager, the same seeds, cuDNN deterministic: the same maths gives the
  same pairs. These three sections are what the defaults file of this kind of device rests on (bench.json's
  `defaults`; `python -m bench.defaults bench.json` writes it), so they run first.
- fused: train() of K = 1..64 seeds as one stacked model, seed-epochs per second, until memory runs out.
- utilisation: FLOP/s of the seed workload alone and fused at its best K against a bf16 peak measured now.
- study: the default study with `--workers auto`, wall seconds and trials per hour.
- compiled: compile=true, its own row; last, since compiling takes minutes.

Every function takes the device and runs on CPU too (replay is off there: graphs are a CUDA feature). This runs
once on a borrowed GPU with a deadline, so each section writes bench.json as soon as it ends, and a row that fails
(out of memory, a capture the engine refuses) records its error and lets the others run.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

from bench.defaults import SAME, derive, measured_precision, suggested_row
from cyclelike.config import SWITCHES, RunConfig
from cyclelike.data import Domains, load_domains
from cyclelike.execution import AUTO, DEFAULTS, device_kind, resolve_precision
from cyclelike.fused import vmap_autocasts
from cyclelike.train import TrainResult, train
from study import autotune
from study.spec import load_sweep

from .common import (
    DEFAULT_SWEEP,
    REFERENCE,
    SEED,
    THROUGHPUT_METRICS,
    default_cell,
    epoch_flops,
    gemm_peak,
    git_commit,
    scratch_sweep,
    timing_sample,
)

# the capture of a step comes after 3 eager steps; these workloads take 4 steps an epoch (2 batches, 2 directions):
# the first two epochs hold the warm-up and the capture, the epochs after them are the replayed ones timed
WARMUP_EPOCHS = 2
PAIRING_METRICS = THROUGHPUT_METRICS[:3]  # forward_top1, bijectivity, mutual
# epochs per timing (WARMUP_EPOCHS of them untimed), epochs per fused timing, the Ks, the workloads compiled (minutes of
# compiling each) and how much of the default study runs (sample: its timing sample, 16 of its 48 trials)
SETTINGS = {
    "full": {"epochs": 20, "fused_epochs": 8, "ks": (1, 2, 4, 8, 16, 32, 64), "compile": ("seed", "default"),
             "study": "whole"},
    "quick": {"epochs": 8, "fused_epochs": 4, "ks": (1, 2, 4, 8, 16, 32), "compile": ("seed",), "study": "sample"},
}
SECTIONS = ("ways", "switches", "pairing", "fused", "utilisation", "study", "compiled")


def device_info(device: torch.device) -> dict:
    """What the figures were measured on: the device's name, the code's commit and the versions."""
    cuda = device.type == "cuda"
    info = {"device": torch.cuda.get_device_name(device) if cuda else autotune.cpu_model(), "kind": device_kind(device),
            "git_commit": git_commit(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cores": autotune.cores(),
            "precision_auto": resolve_precision("auto", device), "auto_row": AUTO[device_kind(device)],
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if cuda:
        with contextlib.suppress(RuntimeError):
            free, total = torch.cuda.mem_get_info(device)
            info |= {"free_memory_bytes": free, "total_memory_bytes": total}
    return info


def free_memory(device: torch.device) -> None:
    """Give back what a finished training held on the GPU (its graphs' pools included) before the next one
    measures. On a CPU there is no pool to give back, and a full collection of a large heap costs up to a second."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def guarded(what: str, device: torch.device, measure: Callable[[], dict]) -> dict:
    """The figures of `measure`, or the error that stopped it: one failure must not cost the rest of a run that is
    made once, on a machine lent for minutes."""
    try:
        return measure()
    except Exception as error:  # noqa: BLE001 - any failure is a result here, recorded and printed
        text = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        print(f"{what}: FAILED, {text}", flush=True)
        free_memory(device)
        return {"error": text}


def out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


def timed(config: RunConfig, data: Domains, device: torch.device) -> dict:
    """One training's seconds per epoch (the median after WARMUP_EPOCHS epochs), its precision and resolved switches."""
    result = train([config], data)[0]
    row = {"sec_per_epoch": result.sec_per_epoch, "epochs_s": [round(s.epoch_s, 5) for s in result.history],
           "precision": result.precision, "execution": result.execution}
    del result
    free_memory(device)
    return row


def prepare(config: RunConfig, device: torch.device, epochs: int) -> RunConfig:
    return config.replace(device=device.type, epochs=epochs, warmup_epochs=WARMUP_EPOCHS)


def ways(device: torch.device) -> dict[str, dict]:
    """Each way of executing one workload: the RunConfig values that make it. Replayed is eager on a CPU."""
    replay = "on" if device.type == "cuda" else "off"
    eager = {k: "auto" for k in SWITCHES} | {"replay": "off", "compile": False}
    return {"plain": dict(REFERENCE),
            "eager fp32": eager | {"precision": "fp32"},
            "replayed fp32": eager | {"precision": "fp32", "replay": replay},
            "eager bf16": eager | {"precision": "bf16"},
            "replayed bf16": eager | {"precision": "bf16", "replay": replay}}


# compile=true replays graphs itself on CUDA (mode reduce-overhead): its own row, never with replay, measured last
# since compiling takes minutes
COMPILED = {**{k: "auto" for k in SWITCHES}, "replay": "off", "compile": True, "precision": "auto"}


def workload_ways(name: str, config: RunConfig, device: torch.device, epochs: int) -> dict:
    """Seconds per epoch of one workload executed each way (ways()), side by side, and each against plain."""
    base = prepare(config, device, epochs)
    data = load_domains(base)
    rows = {}
    for way, values in ways(device).items():
        rows[way] = guarded(f"{name} {way}", device, lambda v=values: timed(base.replace(**v), data, device))
        r = rows[way]
        if "error" not in r:
            on = ",".join(k if v is True else f"{k}={v}" for k, v in r["execution"].items() if v) or "none"
            print(f"{name:7s} {way:14s} {r['sec_per_epoch']:.4f} s/epoch ({r['precision']}; switches on: {on})",
                  flush=True)
    plain = rows["plain"].get("sec_per_epoch", math.nan)
    timed_rows = {w: r["sec_per_epoch"] for w, r in rows.items() if "error" not in r}
    fastest = min(timed_rows, key=timed_rows.get) if timed_rows else None
    if fastest is not None:
        print(f"{name:7s} fastest: {fastest}, {timed_rows[fastest]:.4f} s/epoch, {plain / timed_rows[fastest]:.2f}x "
              f"plain", flush=True)
    return {"rows": rows, "speedup_vs_plain": {w: plain / s for w, s in timed_rows.items()}, "fastest": fastest,
            "config": base.to_dict()}


def compiled_row(name: str, config: RunConfig, device: torch.device, epochs: int, plain_s: float) -> dict:
    """compile=true's seconds per epoch, against the plain way's (`plain_s`, from section ways)."""
    base = prepare(config, device, epochs)
    row = guarded(f"{name} compiled", device, lambda: timed(base.replace(**COMPILED), load_domains(base), device))
    if "error" not in row:
        row["speedup_vs_plain"] = plain_s / row["sec_per_epoch"]
        print(f"{name:7s} compiled       {row['sec_per_epoch']:.4f} s/epoch ({row['precision']}), "
              f"{row['speedup_vs_plain']:.2f}x plain", flush=True)
    return row


def switch_evidence(name: str, config: RunConfig, device: torch.device, epochs: int) -> dict:
    """Each switch on against off, the others at auto (precision as the config says): which is faster, the value that
    suggests for this kind of device (on only where faster) beside the value its defaults have, and whether the run
    switched on executed that way (a replayed run may fall back to eager)."""
    base = prepare(config, device, epochs)
    data = load_domains(base)
    row = AUTO[device_kind(device)]
    out: dict = {}
    for switch in SWITCHES:
        if switch == "replay" and device.type != "cuda":
            out[switch] = {"skipped": "replay captures CUDA graphs: off on this device"}
            continue
        rows = {value: guarded(f"{name} {switch}={value}", device, lambda v={switch: value}: timed(
            base.replace(**v), data, device)) for value in ("on", "off")}
        times = {value: r.get("sec_per_epoch", math.nan) for value, r in rows.items()}
        ratio = times["on"] / times["off"]
        faster = "unknown" if not math.isfinite(ratio) else "on" if ratio < 1 - SAME else "off" if ratio > 1 + SAME \
            else "same"
        out[switch] = {"on_sec_per_epoch": times["on"], "off_sec_per_epoch": times["off"], "on_over_off": ratio,
                       "faster": faster, "has": row[switch], "suggests": row[switch] if faster == "unknown"
                       else faster == "on", "on_executed": rows["on"].get("execution", {}).get(switch)}
        print(f"{name:7s} {switch:15s} on {times['on']:.4f}  off {times['off']:.4f} s/epoch: {faster} "
              f"(AUTO has {'on' if row[switch] else 'off'})", flush=True)
    return out


def fused_seeds(name: str, config: RunConfig, device: torch.device, epochs: int, ks: tuple[int, ...]) -> dict:
    """Seed-epochs per second of K seeds trained as one stacked model (instance norm: fused refuses batch norm), beside
    the seed alone; stops at the first K that runs out of memory (or fails), and records it."""
    base = prepare(config, device, epochs).replace(norm="instance")
    if resolve_precision(base.precision, device) == "bf16" and not vmap_autocasts(device.type):
        base = base.replace(precision="fp32")  # fused seeds refuse bf16 here; alone is timed in fp32 as well
    data = load_domains(base)
    cuda = device.type == "cuda"
    alone = guarded(f"{name} alone", device, lambda: timed(base, data, device))
    out: dict = {"precision": resolve_precision(base.precision, device),
                 "alone_sec_per_epoch": alone.get("sec_per_epoch", math.nan),
                 "alone_seed_epochs_per_s": 1.0 / alone.get("sec_per_epoch", math.nan), "k": {}}
    for k in ks:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        try:
            results = train([base.replace(seed=s) for s in range(k)], data)
        except Exception as error:  # noqa: BLE001 - out of memory ends the climb; anything else is recorded too
            text = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            out["k"][k] = {"error": text, "out_of_memory": out_of_memory(error)}
            print(f"{name:7s} fused K={k}: stopped, {text}", flush=True)
            free_memory(device)
            break
        group_s = results[0].sec_per_epoch
        out["k"][k] = {"group_sec_per_epoch": group_s, "seed_epochs_per_s": k / group_s,
                       "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
                       "execution": results[0].execution}
        del results
        free_memory(device)
        print(f"{name:7s} fused K={k:3d}: {group_s:.4f} s per group epoch, {k / group_s:.1f} seed-epochs/s "
              f"(alone {out['alone_seed_epochs_per_s']:.1f})", flush=True)
    rated = {k: r["seed_epochs_per_s"] for k, r in out["k"].items() if "seed_epochs_per_s" in r}
    out["best_k"] = max(rated, key=rated.get) if rated else None
    out["config"] = base.to_dict()
    return out


def device_peak(precision: str, device: torch.device) -> float:
    """FLOP/s of the device's fastest kernel in `precision`. On CUDA an 8192^3 GEMM, the mean of 10 back-to-back runs
    after Timer's warm-up, the device synchronised before and after them (one 2048^3 GEMM takes ~20 us there: launch
    and sync would be most of it, and a low "peak" would inflate every utilisation read against it); elsewhere
    bench/common.py's gemm_peak."""
    if device.type != "cuda":
        return gemm_peak(precision, device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(8192, 8192, device=device, dtype=dtype) for _ in range(2))
    timer = Timer("a @ b", globals={"a": a, "b": b}, num_threads=torch.get_num_threads())
    return 2 * 8192**3 / timer.timeit(10).mean


def utilisation(config: RunConfig, device: torch.device, alone_s: float, fused: dict,
                peak: float | None = None) -> dict:
    """Achieved FLOP/s of the workload alone (at `alone_s` s/epoch) and fused at its best K, against the GEMM peak of
    the device's auto precision (bf16 on a GPU that has it) measured now. FLOPs are counted on an eager epoch (a
    counter cannot see inside a replayed graph; the maths is the same) and a fused epoch is K seeds' epochs."""
    precision = resolve_precision("auto", device)
    peak = peak if peak is not None else device_peak(precision, device)
    flop = epoch_flops(config.replace(device=device.type, replay="off", compile=False, epochs=1, warmup_epochs=0))
    out = {"precision": precision, "peak_flops": peak, "epoch_flop": flop, "alone_sec_per_epoch": alone_s,
           "alone_utilisation": flop / alone_s / peak}
    best = fused.get("best_k")
    if best is not None:
        group_s = fused["k"][best]["group_sec_per_epoch"]
        out |= {"fused_k": best, "fused_group_sec_per_epoch": group_s, "fused_precision": fused.get("precision"),
                "fused_utilisation": best * flop / group_s / peak}
    print(f"utilisation: one epoch is {flop / 1e9:.1f} GFLOP; {precision} peak measured now {peak / 1e12:.1f} TFLOP/s; "
          f"alone {out['alone_utilisation']:.2%}"
          + (f", fused K={best} {out['fused_utilisation']:.2%}" if best is not None else ""), flush=True)
    return out


def pairing_metrics(result: TrainResult, data: Domains) -> dict[str, float]:
    from analysis.pairing import evaluate_pairing

    m = evaluate_pairing(result.translator.forward, result.translator.backward, data.x, data.y, data.pi).metrics
    return {k: float(m[k]) for k in PAIRING_METRICS}


def replay_pairing(config: RunConfig, device: torch.device, seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """Pairing metrics of one cell replayed and eager, seed by seed (on a CPU both are eager): replay is the same
    maths, so each seed should find the same pairs both ways. cuDNN's default backward kernels are not reproducible
    (atomics) and TF32 rounds fp32 convolutions: both would blur a difference, so they are off here, and eager twice
    is the control that they were."""
    replay = "on" if device.type == "cuda" else "off"
    runs = []
    for seed in seeds:
        run = config.replace(seed=seed, device=device.type)
        data = load_domains(run)
        row: dict = {"seed": seed}
        for way, value in (("replayed", replay), ("eager", "off"), ("eager again", "off")):
            with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
                result = train([run.replace(replay=value)], data)[0]
            row[way] = pairing_metrics(result, data) | {"sec_per_epoch": result.sec_per_epoch,
                                                        "replay": result.execution["replay"]}
            del result
            free_memory(device)
        row["same"] = all(row["replayed"][k] == row["eager"][k] for k in PAIRING_METRICS)
        row["eager_same"] = all(row["eager again"][k] == row["eager"][k] for k in PAIRING_METRICS)
        runs.append(row)
        print(f"pairing seed {seed}: " + "  ".join(f"{k.removeprefix('pair/')} {row['replayed'][k]:.2f}/"
                                                  f"{row['eager'][k]:.2f}" for k in PAIRING_METRICS)
              + f"  (replayed/eager; {'same' if row['same'] else 'DIFFERENT'}; eager twice: "
              f"{'same' if row['eager_same'] else 'different'})", flush=True)
    diff = {k: max(abs(r["replayed"][k] - r["eager"][k]) for r in runs) for k in PAIRING_METRICS}
    return {"replay": replay, "runs": runs, "same_seeds": sum(r["same"] for r in runs),
            "eager_same_seeds": sum(r["eager_same"] for r in runs), "seeds": len(runs),
            "max_abs_diff": diff, "deterministic": True, "config": config.to_dict()}


def study_throughput(workers: int | str = "auto", sets: dict | None = None, trials: int = 0) -> dict:
    """The default study (`sets` pins values, `trials` caps it) as `make sweep --workers auto` runs it, in a scratch
    store: wall seconds and trials per hour. The auto measurement is made (and cached) before the clock starts, as
    bench/cpu.py's throughput does: a machine pays it once per cell."""
    from study.autotune import plan_workers

    spec = load_sweep(DEFAULT_SWEEP, sets)
    t0 = time.perf_counter()
    count, threads, fused = plan_workers(spec, workers, "auto")
    tune_s = time.perf_counter() - t0
    tuning = autotune.cached(autotune.typical_cell(autotune.timing_sample(spec))) if workers == "auto" else None
    print(f"study: {count} worker(s) x {threads} thread(s){', seeds fused' if fused else ''} (choosing took "
          f"{tune_s:.0f} s, not counted)", flush=True)
    table, runs = scratch_sweep("bench-device-study", trials, workers, "auto", sets)
    done = table[table["state"] == "COMPLETE"]
    wall = float(table.attrs["wall_s"])
    out = {"trials": int(len(done)), "planned": len(spec.grid_cells()) * len(spec.seeds), "sample": sets,
           "wall_s": wall, "trials_per_hour": 3600.0 * len(done) / wall, "workers": count, "threads": threads,
           "fused": fused, "tuning": vars(tuning) if tuning is not None else None, "tuning_s": tune_s,
           "pairing": {m: float(runs[m].mean()) for m in THROUGHPUT_METRICS if m in runs}}
    print(f"study: {out['trials']} trials in {wall:.1f} s wall: {out['trials_per_hour']:.0f} trials/h; 48 trials at "
          f"this rate: {48 * 3600.0 / out['trials_per_hour']:.0f} s", flush=True)
    return out


def targets(results: dict) -> dict[str, bool]:
    """The targets, each where the sections it needs have figures: the seed workload alone at <= 0.015
    s/epoch, the default cell at <= 0.010, the seed workload fused at >= 10% of the peak, the default study's 48
    trials in <= 60 s (at the rate measured, when a sample ran), the pairs replayed the same as eager."""
    checks: dict[str, bool] = {}
    for name, limit in (("seed", 0.015), ("default", 0.010)):
        ways = results.get("ways", {}).get(name, {})
        if ways.get("fastest"):
            checks[f"{name}_alone_le_{limit}_s_per_epoch"] = ways["rows"][ways["fastest"]]["sec_per_epoch"] <= limit
    if "fused_utilisation" in results.get("utilisation", {}):
        checks["seed_fused_ge_10pct_of_peak"] = results["utilisation"]["fused_utilisation"] >= 0.10
    if results.get("study", {}).get("trials_per_hour"):
        checks["study_48_trials_le_60_s"] = 48 * 3600.0 / results["study"]["trials_per_hour"] <= 60.0
    if "same_seeds" in results.get("pairing", {}):
        checks["pairing_replayed_same_as_eager"] = results["pairing"]["same_seeds"] == results["pairing"]["seeds"]
    return checks


def run(device: torch.device, settings: dict, out: Path | None = None, only: tuple[str, ...] = SECTIONS,
        workloads: dict[str, RunConfig] | None = None) -> dict:
    """Every section in order, the cheap and certain first; bench.json (`out`) is rewritten after each. `workloads`:
    the seed workload and the default cell (tests pass tiny ones)."""
    s = settings
    results: dict = {"machine": device_info(device), "settings": s}
    print(f"device: {results['machine']['device']} ({results['machine']['kind']}), torch {torch.__version__}, "
          f"commit {results['machine']['git_commit'][:12]}; AUTO's row: {results['machine']['auto_row']}", flush=True)
    workloads = workloads or {"seed": SEED, "default": default_cell()}

    def save(section: str, value) -> None:
        results[section] = value
        results["targets"] = targets(results)
        results["defaults"] = derive(results, DEFAULTS[device_kind(device)])  # what this kind's file would become
        if out is not None:
            out.write_text(json.dumps(results, indent=2, default=str))
            print(f"[{section} written to {out}]", flush=True)

    if "ways" in only:
        save("ways", {n: workload_ways(n, c, device, s["epochs"]) for n, c in workloads.items()})
    if "switches" in only:  # at the precision the ways section found faster, which auto will then resolve to
        precision = (measured_precision(results) or ("auto",))[0]
        evidence = {n: switch_evidence(n, c.replace(precision=precision), device, s["epochs"])
                    for n, c in workloads.items()}
        has = AUTO[device_kind(device)]
        suggests = suggested_row(list(evidence.values()), has)
        print(f"AUTO[{device_kind(device)!r}] has      {has}\nthe evidence suggests {suggests}", flush=True)
        save("switches", {"workloads": evidence, "row": device_kind(device), "has": has, "suggests": suggests,
                          "precision": precision})
    if "pairing" in only:
        save("pairing", guarded("pairing", device, lambda: replay_pairing(workloads["default"], device)))
    if "fused" in only:
        save("fused", {n: fused_seeds(n, c, device, s["fused_epochs"], s["ks"]) for n, c in workloads.items()})
    if "utilisation" in only:
        alone = results.get("ways", {}).get("seed", {})
        way = alone.get("fastest")  # the seed workload alone at its fastest way; fused at its best K
        alone_s = alone["rows"][way]["sec_per_epoch"] if way else math.nan
        fused = results.get("fused", {}).get("seed", {})
        figures = guarded("utilisation", device, lambda: utilisation(workloads["seed"], device, alone_s, fused))
        save("utilisation", figures | {"alone_way": way})
    if "study" in only:  # late: the longest, and worker processes of its own
        free_memory(device)
        sets = timing_sample() if s["study"] == "sample" else None
        save("study", guarded("study", device, lambda: study_throughput("auto", sets)))
    if "compiled" in only:
        plain = {n: results.get("ways", {}).get(n, {}).get("rows", {}).get("plain", {}).get("sec_per_epoch", math.nan)
                 for n in workloads}
        save("compiled", {n: compiled_row(n, workloads[n], device, s["epochs"], plain[n]) for n in s["compile"]})
    print(f"targets: {results.get('targets')}\nthe defaults this sets for {device_kind(device)}: "
          f"{results['defaults']['auto']} (python -m bench.defaults BENCH_JSON writes them)", flush=True)
    return results
