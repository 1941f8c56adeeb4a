"""`python -m study sweep|run`: Optuna sweeps and single tracked trainings, every run in MLflow."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from analysis.store import use_store
from cyclelike.config import ConfigError, DataError, NonFiniteLossError, RunConfig, idle_threads, parse_sets

from .spec import SweepError, load_sweep

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.toml"


def _sweep(args) -> int:
    spec = load_sweep(args.config, parse_sets(args.sets))
    _check_device(spec.base_config())
    import pandas as pd  # the harness's imports take seconds: a bad sweep file is said before them

    from .sweep import WORK_COLUMNS, SweepFailed, run_sweep, took

    print(f"study {spec.name}: {spec.description}".rstrip(": "))
    try:
        table = run_sweep(spec, args.storage, args.workers, args.trials, fuse=args.fuse_seeds)
    except SweepFailed as err:
        print(f"error: study {spec.name}: {err}", file=sys.stderr)
        return err.code
    if len(table):
        shown = table.drop(columns=["invocation", *WORK_COLUMNS, "time_total_s"])
        with pd.option_context("display.max_rows", 500, "display.width", 200, "display.float_format", "{:.3f}".format):
            print(shown.to_string(index=False))
    counts = table["state"].value_counts().to_dict() if len(table) else {}
    print(f"\n{len(table)} trials: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items()))
    if table.attrs.get("trials_this_run", 0):
        print(f"this invocation: {table.attrs['trials_this_run']} trials in "
              f"{took(table.attrs.get('wall_s', 0), table.attrs.get('planned_s'))}; "
              f"harness overhead {table.attrs.get('harness_overhead', 0.0):.1%} (the workers' busy seconds outside "
              "loading images, building networks, training and evaluation)")
    else:
        print("this invocation: no trial left to run; the study is as the table shows")
    from analysis.store import DEFAULT_UI, trials_page

    from .stores.mlflow import disk_use

    print(f"disk: {disk_use(spec.name)}")
    if table.attrs.get("experiment_id"):
        page = trials_page(DEFAULT_UI, table.attrs["experiment_id"])
        print(f"\nbrowse the runs:  make ui, then {page}")
    print(f"read the report:  make report STUDY={spec.name}")
    return 0


def _check_device(config: RunConfig) -> None:
    """device=cuda on a machine without one: one line before any store or run is created."""
    if config.device == "cuda":
        from cyclelike.execution import resolve_device

        resolve_device(config.device)


def _reproduced(client, source: str):
    """The exact RunConfig (seed and threads included) of a finished run, from its config.json, or of a
    config.json file; the run's evaluation interval, where it was logged; and the run (None for a file)."""
    import json
    import tempfile

    path = Path(source)
    if path.is_file():
        try:
            values = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SweepError(f"--from {source}: not a readable, valid config.json ({err})") from None
        if not isinstance(values, dict):
            raise SweepError(f"--from {source}: expected a JSON object of RunConfig keys, got a "
                             f"{type(values).__name__}")
        return RunConfig.from_dict(values), None, None
    try:
        run = client.get_run(source)
        with tempfile.TemporaryDirectory() as tmp:
            values = json.loads(Path(client.download_artifacts(source, "config.json", tmp)).read_text())
    except Exception as err:  # MLflow raises several types for an unknown run or a missing artifact
        raise SweepError(f"--from {source}: neither a config.json file nor a finished run with config.json in "
                         f"this store ({type(err).__name__})") from None
    logged = run.data.tags.get("eval_every")
    return RunConfig.from_dict(values), int(logged) if logged is not None else None, run


def _compare_page(source, run_id: str, experiment_id: str) -> str:
    """MLflow's page with the two runs side by side (its address inside the UI)."""
    import json
    from urllib.parse import quote

    from analysis.store import CLASSIC_VIEW

    experiments = sorted({source.info.experiment_id, experiment_id})
    return (f"#/compare-runs?runs={quote(json.dumps([source.info.run_id, run_id]))}"
            f"&experiments={quote(json.dumps(experiments))}&{CLASSIC_VIEW}")


def _reproduction_note(source, run_id: str, experiment_id: str) -> dict[str, str]:
    """The description of a run that retrains `source`: which trial, with links to it and to the two side by side."""
    trial = source.data.tags.get("trial")
    what = f"trial {trial} of study {source.data.tags.get('study')}" if trial is not None else "the run"
    page = f"#/experiments/{source.info.experiment_id}/runs/{source.info.run_id}"
    return {"mlflow.note.content": f"Reproduces {what}: [{source.info.run_name}]({page}) ({source.info.run_id}). "
                                   f"[The two side by side]({_compare_page(source, run_id, experiment_id)})."}


def _run(args) -> int:
    from cyclelike.train import timed_text

    from .stores.mlflow import ensure_experiment, prepare_store
    from .tracking import RunLogger, provenance, reproduce_command
    from .trial import run_trials

    sets = parse_sets(args.sets)
    client, source = None, None
    if args.from_:
        client = prepare_store()
        config, logged, source = _reproduced(client, args.from_)
        config = config.replace(**sets)
        eval_every = args.eval_every if args.eval_every is not None else logged if logged is not None else 10
        experiment = args.experiment or "runs"
    elif args.config:
        seed = sets.pop("seed", None)  # one run takes a seed; a sweep file refuses it for its `seeds` list
        spec = load_sweep(args.config, sets)
        config, experiment, eval_every = spec.base_config(), args.experiment or spec.name, spec.eval_every
        if seed is not None:
            config = config.replace(seed=seed)
    else:
        config, experiment = RunConfig.from_dict(sets), args.experiment or "runs"
        eval_every = 10 if args.eval_every is None else args.eval_every
    _check_device(config)
    from .preflight import check_run

    check_run(config)  # bad data or an N that cannot fit: said before the run is created
    if config.threads == 0:
        config = config.replace(threads=idle_threads())
        print(f"threads: {config.threads} (the idle cores now; --set threads=K to choose)")
    if config.stop == "locked" and not eval_every:
        raise SweepError("stop=locked decides at the pairing evaluations; give --eval-every > 0")
    client = client or prepare_store()
    experiment_id = ensure_experiment(client, experiment, role="study" if args.config else "runs")
    name = f"run-{config.scheme}-{config.pairing}-seed{config.seed}-{time.strftime('%H%M%S')}"
    tags = {"study": experiment, "role": "single run", "eval_every": eval_every, **provenance()}
    shown = tuple(sets)
    if args.from_:
        tags["reproduces"] = args.from_
    if source is not None:
        # no time in it: a longer name than the trial's widens the image card past its picture
        name = f"repro-{source.info.run_name or source.info.run_id}"
        shown = (*source.data.params, *shown)  # the original's params: the two compare key by key
    logger = RunLogger.start(client, experiment_id, name, tags=tags, shown=shown)
    logger.set_tags({"reproduce": reproduce_command(logger.run_id),
                     **(_reproduction_note(source, logger.run_id, experiment_id) if source is not None else {})})
    try:
        (outcome,) = run_trials([config], [logger], eval_every, desc=name)
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
          + f"  {timed_text(outcome.sec_per_epoch, config.warmup_epochs)}  ended: {outcome.stop_reason} at epoch "
            f"{outcome.epochs_run}")
    print(f"run {logger.run_id} in experiment {experiment!r}; browse it with: make ui\n"
          f"reproduce it: {reproduce_command(logger.run_id)}")
    if source is not None:
        from analysis.store import DEFAULT_UI

        print(f"beside the run it reproduces: {DEFAULT_UI}/{_compare_page(source, logger.run_id, experiment_id)}")
    return 0


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; expected an integer >= 0")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected an integer >= 1")
    return value


def _workers(text: str) -> int | str:
    return "auto" if text.strip() == "auto" else _positive(text)


SWEEP_EXAMPLES = """examples:
  python -m study sweep                                   # the default study (study/configs/default.toml)
  python -m study sweep --config study/configs/capacity.toml --workers 2
  python -m study sweep --set epochs=30 --trials 4        # override a fixed value; at most 4 trials now
"""
RUN_EXAMPLES = """examples:
  python -m study run --set pairing=fixed --set n_images=20
  python -m study run --config study/configs/default.toml --set arch=encdec
  python -m study run --from 3f2a9c...                    # retrain a trial exactly: its page's 'reproduce' tag
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=RunConfig.keys_help())
    sub = parser.add_subparsers(dest="command", required=True)
    raw = argparse.RawDescriptionHelpFormatter
    sweep = sub.add_parser("sweep", help="run (or resume) an Optuna study from a sweep file", formatter_class=raw,
                           description="Run or resume an Optuna study: each (condition, seed) once, every trial an "
                                       "MLflow run.", epilog=SWEEP_EXAMPLES + "\n" + RunConfig.keys_help())
    sweep.add_argument("--config", default=str(DEFAULT_CONFIG), help="sweep file (TOML), default %(default)s")
    sweep.add_argument("--trials", type=_non_negative, default=0,
                       help="run at most this many trials in this invocation (0: all the file asks for)")
    sweep.add_argument("--workers", type=_workers, default=1,
                       help="worker processes on the study, or auto: measured once per machine and cell and cached "
                            "(make sweep's default); workers x threads never exceed the cores (default 1)")
    sweep.add_argument("--fuse-seeds", choices=("auto", "on", "off"), default="auto",
                       help="train the seeds of a condition as one stacked model (cyclelike/fused.py); auto: where "
                            "this machine's cached measurement shows it pays (default auto)")
    sweep.add_argument("--storage", default=None,
                       help="Optuna storage: a journal file path (default mlruns/optuna.journal) or an RDB URL")
    run = sub.add_parser("run", help="one tracked training (the sweep file's fixed values, or defaults)",
                         formatter_class=raw, description="One tracked training in MLflow.",
                         epilog=RUN_EXAMPLES + "\n" + RunConfig.keys_help())
    run.add_argument("--config", default=None, help="sweep file whose [fixed] values to use")
    run.add_argument("--experiment", default=None, help="MLflow experiment (default: the sweep name, or 'runs')")
    run.add_argument("--eval-every", type=_non_negative, default=None,
                     help="epochs between pairing evaluations (0: only at the end; default 10, with --from the "
                          "run's own)")
    run.add_argument("--from", dest="from_", default=None, metavar="RUN_ID|config.json",
                     help="retrain the exact condition and seed of a finished run (its MLflow run id) or of a "
                          "config.json; --set still overrides")
    for p in (sweep, run):
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a RunConfig field (repeatable), e.g. --set data=folders --set x_path=DIR")
        p.add_argument("--store", default=None, metavar="DIR",
                       help="folder of the MLflow database and Optuna journal (default: the project's mlruns/)")
    args = parser.parse_args(argv)
    use_store(args.store)
    try:
        return _sweep(args) if args.command == "sweep" else _run(args)
    except (SweepError, ConfigError, DataError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a store lost before or after the trials (planning, the final table): one line too
        from .stores.optuna import OUTAGE_EXIT, is_outage, outage_reason

        if not is_outage(err):
            raise
        print(f"error: the store stopped answering: {outage_reason(err)}; run the same command again once it "
              "answers", file=sys.stderr)
        return OUTAGE_EXIT


if __name__ == "__main__":
    sys.exit(main())
