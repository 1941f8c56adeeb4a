"""`python -m analysis report`: the study report from the MLflow runs; `python -m analysis pairing DIR`: the
pairing metrics of one `python -m cyclelike train` output folder; `python -m analysis calibrate`: each claim's
false-positive rate and power on simulated studies."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="write reports/<study>/index.html and report.md with figures",
                         description="Write reports/<study>/index.html and report.md from the study's MLflow runs.",
                         epilog="example: python -m analysis report --experiment default")
    rep.add_argument("--experiment", default=None, help="study (MLflow experiment) name; default: the most recent")
    rep.add_argument("--out", default=None, help="output folder (default reports/<study> in the project)")
    rep.add_argument("--storage", default=None,
                     help="Optuna storage for parameter importance (default mlruns/optuna.journal; an RDB URL works)")
    rep.add_argument("--ui", default=None, metavar="URL",
                     help="the MLflow UI's address, to link each run named in the report to its page (make report "
                          "passes make ui's; default: the tracking server's, if any)")
    rep.add_argument("--store", default=None, metavar="DIR",
                     help="folder of the MLflow database and Optuna journal (default: the project's mlruns/)")
    pair = sub.add_parser("pairing", help="the pairing metrics of a `python -m cyclelike train` output folder",
                          description="Load DIR/checkpoint.pt and DIR/config.json and print every pairing metric "
                                      "with its chance level.", epilog="example: python -m analysis pairing runs/x")
    pair.add_argument("folder", help="a python -m cyclelike train output folder")
    cal = sub.add_parser("calibrate", help="each claim of the report on simulated studies: false-positive rate, power",
                         description="Run the report's tests (analysis/inference.py) on simulated studies at every "
                                     "design a shipped study runs, under two nulls and with planted effects, and "
                                     "print each claim's false-positive rate and power (analysis/calibration.py).",
                         epilog="example: python -m analysis calibrate --design 3x3x10 --studies 2000")
    cal.add_argument("--studies", type=int, default=1000, help="simulated studies per null scenario (default 1000)")
    cal.add_argument("--power-studies", type=int, default=300, help="per planted strength (default 300)")
    cal.add_argument("--design", action="append", default=None, metavar="SETSxSEEDSxN[xCONDITIONS]",
                     help="a design to calibrate (repeatable); default: every shipped study's")
    args = parser.parse_args(argv)
    if args.command == "pairing":
        return _pairing(Path(args.folder))
    if args.command == "calibrate":
        return _calibrate(args)
    from .store import PROJECT, first_line, safe_part, safe_url, sqlite_path, tracking_uri, use_store

    use_store(args.store)
    uri = tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.is_file():  # opening it would create an empty database, and its folder
        print(f"error: no MLflow store at {db}: nothing to report; run a study first (make sweep)"
              + (", or give --store the folder that holds its mlflow.db" if args.store else ""), file=sys.stderr)
        return 2 if args.store else 1
    import mlflow
    from mlflow.tracking import MlflowClient

    from .report import SectionsFailed, build_report
    from .runs import most_recent_study, study_names

    mlflow.set_tracking_uri(uri)  # mlflow.search_runs reads the global URI
    client = MlflowClient(uri)
    try:
        known = study_names(client)
    except Exception as err:  # a missing or unreadable database, a server that is down
        print(f"error: cannot read the MLflow store {safe_url(uri)}: {first_line(err)}", file=sys.stderr)
        # a store over the network that does not answer is an outage: exit 3, as a sweep's is
        return 3 if str(uri).startswith(("http://", "https://", "postgresql")) else 1
    name = args.experiment or most_recent_study(client)
    if name is None:
        print(f"error: no study in {safe_url(uri)}; run one first (make sweep)", file=sys.stderr)
        return 1
    if name not in known:
        print(f"error: there is no study {name!r} in {safe_url(uri)}; studies there: {', '.join(known) or 'none'}",
              file=sys.stderr)
        return 1
    out = Path(args.out).expanduser() if args.out else PROJECT / "reports" / safe_part(name)
    why = _unwritable(out)
    if why:
        print(f"error: cannot write the report to {out} ({why}); give --out a folder that can be written",
              file=sys.stderr)
        return 2
    failed = None
    try:
        build_report(name, out, args.storage, client, args.ui)
    except SectionsFailed as err:
        failed = err
    print(f"report: {out / 'index.html'}\n        {out / 'report.md'}")
    if not _finished_runs(client, name):  # the page says so too; a script must not read it as an answer
        print(f"error: study {name!r} has no finished run: the report answers nothing yet", file=sys.stderr)
        return 1
    if failed:
        print(f"error: {failed}; the reason stands in its place on the page and in the warning above",
              file=sys.stderr)
        return 1
    return 0


def _calibrate(args) -> int:
    import pandas as pd

    from .calibration import DESIGNS, calibrate, calibrate_n90, display
    from .simulate import Design

    for name in ("studies", "power_studies"):
        if getattr(args, name) < 100:
            print(f"error: --{name.replace('_', '-')} {getattr(args, name)}: expected an integer >= 100",
                  file=sys.stderr)
            return 2
    designs = DESIGNS
    if args.design:
        try:
            designs = [Design(*(int(v) for v in text.lower().split("x"))) for text in args.design]
            if any(d.sets < 1 or d.seeds < 1 or d.n < 2 or d.conditions < 1 for d in designs):
                raise ValueError
        except (TypeError, ValueError):
            print(f"error: --design {' '.join(args.design)}: expected SETSxSEEDSxN or SETSxSEEDSxNxCONDITIONS, "
                  "e.g. 3x2x10", file=sys.stderr)
            return 2
    pd.set_option("display.width", 200)
    for design in designs:
        table = calibrate([design], args.studies, args.power_studies)
        print(f"\n{design}: false-positive rates over {args.studies} simulated studies per null (2 SE "
              f"{table['2 SE 1'].iloc[0]:.3f}), power over {args.power_studies} per strength, at level 0.05"
              + (f" (power at 0.05 / {design.conditions}: Holm's first step)" if design.conditions > 1 else ""))
        print(display(table).to_string(index=False))
    n90 = calibrate_n90()
    print(f"\nN90 over {n90.pop('seeds')} seeds (an estimate, no level): "
          + ", ".join(f"{k} {v:.3f}" for k, v in n90.items()))
    return 0


def _finished_runs(client, name: str) -> bool:
    """Whether the study holds a finished run besides its parent (one per sweep invocation)."""
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'", max_results=50)
    return any(r.data.tags.get("role") != "study" for r in runs)


def _unwritable(out: Path) -> str | None:
    """Why the report cannot be written to `out`, or None; said before any section is drawn."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return err.strerror or type(err).__name__
    return None if os.access(out, os.W_OK) else "permission denied"


def _pairing(folder: Path) -> int:
    import json

    import torch

    from cyclelike.config import ConfigError, DataError, RunConfig
    from cyclelike.data import load_domains
    from cyclelike.execution import resolve_device
    from cyclelike.nets import build
    from cyclelike.train import make_translator

    from .assignment import chance_level
    from .pairing import evaluate_pairing

    try:
        config = RunConfig.from_dict(json.loads((folder / "config.json").read_text()))
        state = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)
        data = load_domains(config)
    except (OSError, ValueError, ConfigError, DataError) as err:
        print(f"error: {folder} is not a finished `python -m cyclelike train` folder: {err}", file=sys.stderr)
        return 2
    device = resolve_device(config.device)
    nets, _ = build(config, device)
    for name, net in nets.items():
        net.load_state_dict(state["nets"][name])
    t = make_translator(nets, config.scheme)
    result = evaluate_pairing(t.forward, t.backward, data.x, data.y, data.pi, data.x_holdout)
    print(f"{folder} after {state['epoch']} epochs, N = {data.n}, {config.pairing} pairing:")
    for key, value in result.metrics.items():
        chance = chance_level(key, data.n)
        print(f"  {key:34s} {value:7.3f}" + (f"   (chance {chance:.3f})" if chance is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
