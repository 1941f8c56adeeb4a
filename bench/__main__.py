"""`python -m bench cpu` (what `make bench` runs) and `python -m bench device`: what the model and the harness cost on
this machine, written to bench.json. `python -m bench cpu --help` and `python -m bench device --help` say what each
measures.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from cyclelike.execution import resolve_device

from . import cpu, device
from .common import REPO

# device: the sections of bench/device.py, as one section of `make bench` (by default with CUDA only)
CPU_SECTIONS = (*cpu.SECTIONS, "device")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True, metavar="{cpu,device}")
    raw = argparse.RawDescriptionHelpFormatter
    plain = commands.add_parser("cpu", description=cpu.__doc__, formatter_class=raw,
                                help="make bench: plain against fast path, FLOP utilisation, schedules, harness "
                                     "overhead, sweep throughput, stopping, profile")
    plain.add_argument("--epochs", type=int, default=6, help="epochs per timing (the first is warm-up)")
    plain.add_argument("--only", nargs="+", choices=CPU_SECTIONS, default=None,
                       help="sections to run (default: all): paths (plain vs fast), schedules, overhead, throughput, "
                            "stopping (the default study with stop = off and stop = locked), profile (time per op "
                            "kind of one seed-workload and one default-cell epoch), device (bench/device.py: "
                            "plain, eager and replayed, each switch, fused K, trials/hour; by default with CUDA only)")
    plain.add_argument("--out", default=str(REPO / "bench.json"), help="where to write the numbers")
    ways = commands.add_parser("device", description=device.__doc__, formatter_class=raw,
                               help="every way of executing the workloads on this device (CUDA or CPU), the "
                                    "switches, fused K, utilisation, trials/hour; what cyclelike/defaults rest on")
    ways.add_argument("--quick", action="store_true", help="fewer epochs, K up to 32, the study's timing sample "
                                                           "(16 of its 48 trials): about 6 minutes on an H200")
    ways.add_argument("--out", default=str(REPO / "bench.json"), help="where to write the numbers (after each "
                                                                      "section)")
    ways.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="the device to measure")
    ways.add_argument("--only", nargs="+", choices=device.SECTIONS, default=list(device.SECTIONS),
                      help="sections to run")
    return top


def run_cpu(args: argparse.Namespace) -> int:
    only = args.only or [s for s in CPU_SECTIONS if s != "device" or torch.cuda.is_available()]
    results = cpu.run(only, args.epochs)
    if "device" in only:
        results["device"] = device.run(resolve_device("auto"), device.SETTINGS["full"],
                                       Path(args.out).with_name("bench_device.json"))
    cpu.write(results, Path(args.out), merge=args.only is not None)
    return 0


def run_device(args: argparse.Namespace, argv: list[str]) -> int:
    # the command as given, recorded in bench.json: the defaults files name the measurement they rest on
    settings = device.SETTINGS["quick" if args.quick else "full"] | {"command": shlex.join(["python", "-m", "bench",
                                                                                          *argv])}
    device.run(resolve_device(args.device), settings, Path(args.out), tuple(args.only))
    print(f"written to {args.out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    return run_cpu(args) if args.command == "cpu" else run_device(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
