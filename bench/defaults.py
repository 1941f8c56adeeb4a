"""`python -m bench.defaults BENCH_JSON [--out FOLDER]`: the defaults file `cyclelike/defaults/<kind>.json` that
a bench.json of bench/device.py (`scripts/gpu_check.sh` on a GPU) sets for the kind of device it ran on.

One rule per key, applied where the bench.json holds that key's figures; a key it did not measure keeps its value and
its basis. A key the bench decided names this measurement as its basis, and the figures go in beside it.
- precision: bf16 where the eager path in bf16 beat the same path in fp32 by more than SAME (the geometric mean of
  bf16 / fp32 over the workloads), else fp32: bf16 changes the maths, so it has to pay for that.
- fused_upsample, fused_adam, channels_last: on where on beat off by more than SAME, else off. A switch runs by
  default only where it was measured faster.
- replay: on only where all three hold: every replayed run kept its graphs (no shape fell back to eager), replayed beat
  eager by more than SAME, and the pairing section found each seed's pairs, replayed, equal to eager's.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from cyclelike.config import SWITCHES
from cyclelike.execution import AUTO_KEYS, DEFAULTS, DEFAULTS_DIR, load_defaults

# a way is faster than another when its time is below the other's by more than this: the noise of one run
SAME = 0.03
PLAIN_SWITCHES = tuple(s for s in SWITCHES if s != "replay")


def geomean(ratios: list[float]) -> float:
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios))


def switch_ratios(evidence: list[dict], switch: str) -> list[float]:
    return [e[switch]["on_over_off"] for e in evidence if math.isfinite(e.get(switch, {}).get("on_over_off", math.nan))]


def suggested_row(evidence: list[dict], has: dict[str, bool]) -> dict[str, bool]:
    """The switches as their timings over several workloads suggest: on where on / off's geometric mean is below
    1 - SAME, off where it is not, as `has` where there is no timing. (Replay also needs equal pairs: derive.)"""
    return {s: geomean(r) < 1 - SAME if (r := switch_ratios(evidence, s)) else v for s, v in has.items()}


def measured_precision(results: dict) -> tuple[str, str] | None:
    """The precision the ways section found faster, eager in bf16 against eager in fp32, and why; None unmeasured."""
    ratios = {}
    for name, way in results.get("ways", {}).items():
        fp32, bf16 = (way.get("rows", {}).get(f"eager {p}", {}) for p in ("fp32", "bf16"))
        ratio = bf16.get("sec_per_epoch", math.nan) / fp32.get("sec_per_epoch", math.nan)
        if bf16.get("precision") == "bf16" and math.isfinite(ratio):
            ratios[name] = ratio
    if not ratios:
        return None
    mean = geomean(list(ratios.values()))
    text = ", ".join(f"{n} {r:.2f}" for n, r in ratios.items())
    return ("bf16" if mean < 1 - SAME else "fp32"), f"eager bf16 / fp32 s/epoch {mean:.2f} ({text})"


def replay_decision(results: dict) -> tuple[bool, str] | None:
    """Whether replay may be on by default, and why; None where the bench did not replay (a CPU, or no section)."""
    evidence = [e["replay"] for e in results.get("switches", {}).get("workloads", {}).values()
                if "on_over_off" in e.get("replay", {})]
    pairing = results.get("pairing", {})
    if not evidence and pairing.get("replay") != "on":
        return None
    ratios = switch_ratios([{"replay": e} for e in evidence], "replay")
    kept = all(e.get("on_executed") is True for e in evidence) and \
        all(run["replayed"].get("replay") is True for run in pairing.get("runs", []))
    gain = bool(ratios) and geomean(ratios) < 1 - SAME
    seeds = pairing.get("seeds", 0) if pairing.get("replay") == "on" else 0
    same = seeds > 0 and pairing.get("same_seeds") == seeds
    text = (f"replayed / eager s/epoch {geomean(ratios):.2f}" if ratios else "no timing of replay against eager") + \
        (f"; replayed pairs equal to eager on {pairing.get('same_seeds')} of {seeds} seeds" if seeds else
         "; replayed pairs not compared with eager") + ("" if kept else "; a replayed run fell back to eager")
    return kept and gain and same, text


def figures(results: dict) -> dict:
    """What decided the keys, in s/epoch: eager fp32 and bf16, each switch [on, off] (at the precision named), and
    replayed against eager pairs."""
    out: dict = {}
    for name, way in results.get("ways", {}).items():
        out.setdefault(name, {}).update({w: round(r["sec_per_epoch"], 5) for w, r in way.get("rows", {}).items()
                                         if "sec_per_epoch" in r})
    switches = results.get("switches", {})
    for name, evidence in switches.get("workloads", {}).items():
        out.setdefault(name, {}).update({f"{s} [on, off] ({switches.get('precision', 'auto')})":
                                         [round(e["on_sec_per_epoch"], 5), round(e["off_sec_per_epoch"], 5)]
                                         for s, e in evidence.items() if "on_over_off" in e})
    pairing = results.get("pairing", {})
    if "seeds" in pairing:
        out["pairing"] = {k: pairing.get(k) for k in ("replay", "seeds", "same_seeds", "eager_same_seeds",
                                                      "deterministic", "max_abs_diff")}
    return out


def measurement_id(machine: dict) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", str(machine.get("device", "device")).lower()).strip("-")
    return f"{name}-{str(machine.get('git_commit', 'unknown'))[:7]}"


def derive(results: dict, current: dict) -> dict:
    """The defaults file `results` (a bench.json) sets for its kind of device, from that kind's `current` file."""
    new = json.loads(json.dumps(current))
    machine = results.get("machine", {})
    ident = measurement_id(machine)
    decided: dict[str, tuple[object, str]] = {}
    if (precision := measured_precision(results)) is not None:
        decided["precision"] = precision
    evidence = list(results.get("switches", {}).get("workloads", {}).values())
    for switch in PLAIN_SWITCHES:
        if ratios := switch_ratios(evidence, switch):
            decided[switch] = (geomean(ratios) < 1 - SAME, f"on / off s/epoch {geomean(ratios):.2f} "
                               f"({', '.join(f'{r:.2f}' for r in ratios)} over the workloads)")
    if (replay := replay_decision(results)) is not None:
        decided["replay"] = replay
    for key, (value, why) in decided.items():
        new["auto"][key], new["basis"][key], new["why"][key] = value, ident, why
    if decided:
        new["measurements"][ident] = {
            "device": machine.get("device"), "torch": machine.get("torch"), "cuda": machine.get("cuda"),
            "commit": machine.get("git_commit"), "time": machine.get("time"),
            "command": results.get("settings", {}).get("command", "python -m bench device"),
            "figures": figures(results)}
    kept = set(new["basis"].values())
    new["measurements"] = {k: v for k, v in new["measurements"].items() if k in kept}
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.defaults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench_json", type=Path, help="a bench.json of bench/device.py (scripts/gpu_check.sh)")
    parser.add_argument("--out", type=Path, default=DEFAULTS_DIR, help="the folder to write <kind>.json into "
                                                                      "(default: cyclelike/defaults, what auto reads)")
    args = parser.parse_args(argv)
    results = json.loads(args.bench_json.read_text())
    kind = results["machine"]["kind"]
    new = derive(results, DEFAULTS[kind])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{kind}.json"
    path.write_text(json.dumps(new, indent=2) + "\n")
    load_defaults(kind, args.out)  # what auto will read must be whole
    for key in AUTO_KEYS:
        old = DEFAULTS[kind]["auto"][key], DEFAULTS[kind]["basis"][key]
        print(f"{key:15s} {old[0]!s:6s} -> {new['auto'][key]!s:6s} basis {new['basis'][key]}: {new['why'][key]}"
              + ("" if (new["auto"][key], new["basis"][key]) != old else " (unchanged)"))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
