"""`python -m study sweep|run`: Optuna sweeps and single tracked trainings, every run in MLflow."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from cyclelike.config import ConfigError, RunConfig, parse_sets
from cyclelike.data import DataError
from cyclelike.train import NonFiniteLossError

from .spec import SweepError, load_sweep

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.toml"


def _sweep(args) -> int:
    from .sweep import run_sweep

    spec = load_sweep(args.config, parse_sets(args.sets))
    print(f"study {spec.name}: {spec.description}".rstrip(": "))
    table = run_sweep(spec, args.storage, args.workers, args.trials)
    if len(table):
        shown = table.drop(columns=["invocation", "time_train_s", "time_eval_s", "time_total_s"])
        with pd.option_context("display.max_rows", 500, "display.width", 200, "display.float_format", "{:.3f}".format):
            print(shown.to_string(index=False))
    counts = table["state"].value_counts().to_dict() if len(table) else {}
    print(f"\n{len(table)} trials: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items()))
    print(f"this invocation: {table.attrs.get('trials_this_run', 0)} trials in {table.attrs.get('wall_s', 0):.1f} s; "
          f"harness overhead (outside train and evaluation) {table.attrs.get('harness_overhead', float('nan')):.1%}")
    print(f"\nbrowse the runs:  make ui\nread the report:  make report STUDY={spec.name}")
    return 0


def _run(args) -> int:
    from .tracking import RunLogger, ensure_experiment, prepare_store, provenance
    from .trial import run_trial

    sets = parse_sets(args.sets)
    if args.config:
        spec = load_sweep(args.config, sets)
        config, experiment, eval_every = spec.base_config(), args.experiment or spec.name, spec.eval_every
    else:
        config, experiment, eval_every = RunConfig.from_dict(sets), args.experiment or "runs", args.eval_every
    client = prepare_store()
    experiment_id = ensure_experiment(client, experiment)
    name = f"run-{config.scheme}-{config.pairing}-seed{config.seed}-{time.strftime('%H%M%S')}"
    logger = RunLogger.start(client, experiment_id, name,
                             tags={"study": experiment, "role": "single run", **provenance()})
    try:
        outcome = run_trial(config, logger, eval_every, desc=name)
    except KeyboardInterrupt:
        logger.finish("KILLED")
        raise
    except BaseException as err:
        logger.finish("FAILED", tags={"failure": f"{type(err).__name__}: {err}"})
        raise
    logger.finish("FINISHED")
    keys = ("pair/forward_top1", "pair/backward_top1", "pair/bijectivity", "pair/mutual", "pair/cycle_top1",
            "mem/holdout_copy_rate")
    print(f"{name}: " + "  ".join(f"{k}={outcome.metrics[k]:.3f}" for k in keys)
          + f"  {outcome.sec_per_epoch:.3f} s/epoch")
    print(f"run {logger.run_id} in experiment {experiment!r}; browse it with: make ui")
    return 0


def main(argv: list[str] | None = None) -> int:
    keys = "\n".join(f"  {k}: {v}" for k, v in RunConfig.field_help().items())
    parser = argparse.ArgumentParser(prog="python -m study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"RunConfig keys for --set:\n{keys}")
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", help="run (or resume) an Optuna study from a sweep file")
    sweep.add_argument("--config", default=str(DEFAULT_CONFIG), help="sweep file (TOML), default %(default)s")
    sweep.add_argument("--trials", type=int, default=0,
                       help="run at most this many trials in this invocation (0: all the file asks for)")
    sweep.add_argument("--workers", type=int, default=1, help="worker processes on the study (default 1)")
    sweep.add_argument("--storage", default=None,
                       help="Optuna storage: a journal file path (default mlruns/optuna.journal) or an RDB URL")
    run = sub.add_parser("run", help="one tracked training (the sweep file's fixed values, or defaults)")
    run.add_argument("--config", default=None, help="sweep file whose [fixed] values to use")
    run.add_argument("--experiment", default=None, help="MLflow experiment (default: the sweep name, or 'runs')")
    run.add_argument("--eval-every", type=int, default=10, help="epochs between pairing evaluations")
    for p in (sweep, run):
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a RunConfig field (repeatable), e.g. --set data=folders --set x_path=DIR")
    args = parser.parse_args(argv)
    try:
        return _sweep(args) if args.command == "sweep" else _run(args)
    except (SweepError, ConfigError, DataError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
