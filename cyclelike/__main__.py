"""`python -m cyclelike train`: one training on its own, no tracking server, outputs in a folder.

For tracked runs and sweeps use `python -m study`; this entry point is for checking a configuration
or a data folder quickly.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from .config import ConfigError, DataError, NonFiniteLossError, RunConfig, idle_threads, parse_sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cyclelike", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one cycle-like translator and write its outputs to a folder.",
        epilog=RunConfig.keys_help())
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one run; resumes from OUT/checkpoint.pt when it exists",
                       description="Train one run; resumes from OUT/checkpoint.pt when it exists (same settings "
                                   "only, except epochs and execution keys).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  python -m cyclelike train --set pairing=fixed --set n_images=20 "
                              "--out runs/fixed20\n\n" + RunConfig.keys_help())
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a RunConfig field (repeatable), e.g. --set n_images=20")
    p.add_argument("--out", default=None, help="output folder (default runs/train-<time>)")
    args = parser.parse_args(argv)
    # torch loads only now: --help answers without it
    from .checkpoint import Checkpoints, check_resumable
    from .data import load_domains
    from .samples import SAMPLE_ROWS, labelled, sample_grid
    from .train import timed_text, train

    try:
        config = RunConfig.from_dict(parse_sets(args.sets))
        if config.threads == 0:
            config = config.replace(threads=idle_threads())
            print(f"threads: {config.threads} (the idle cores now; --set threads=K to choose)")
        data = load_domains(config)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        if (out / "checkpoint.pt").exists():
            check_resumable(out / "checkpoint.pt", config)  # before config.json is touched
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        (result,) = train([config], data, checkpoints=[Checkpoints(out / "checkpoint.pt", every=10)], progress=True)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    with open(out / "history.csv", "w", newline="") as f:
        keys = ["epoch", "epoch_s", *result.history[-1].losses]
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        for s in result.history:
            writer.writerow({"epoch": s.epoch, "epoch_s": round(s.epoch_s, 5), **s.losses})
    rows = SAMPLE_ROWS if result.translator.backward is not None else SAMPLE_ROWS[:3]
    labelled(sample_grid(result.translator, data.to(result.device)), rows).save(out / "samples.png")
    print(f"{config.scheme}/{config.arch} N={config.n_images} {config.image_size}px: "
          f"{timed_text(result.sec_per_epoch, config.warmup_epochs)}, outputs in {out}\n"
          f"pairing metrics: python -m analysis pairing {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
