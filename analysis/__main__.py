"""`python -m analysis report`: the study report from the MLflow runs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="write reports/<study>/index.html and report.md with figures")
    rep.add_argument("--experiment", default=None, help="study (MLflow experiment) name; default: the most recent")
    rep.add_argument("--out", default=None, help="output folder (default reports/<study>)")
    rep.add_argument("--storage", default=None,
                     help="Optuna storage for parameter importance (default mlruns/optuna.journal; an RDB URL works)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded file is noise
    from mlflow.tracking import MlflowClient

    from .report import build_report, load_study_runs

    client = MlflowClient()
    out = build_report(args.experiment, Path(args.out) if args.out else None, args.storage, client)
    print(f"report: {out / 'index.html'}\n        {out / 'report.md'}")
    if args.experiment and client.get_experiment_by_name(args.experiment) is None:
        print(f"error: there is no experiment {args.experiment!r} (the report says which exist)", file=sys.stderr)
        return 1
    if args.experiment and load_study_runs(client, args.experiment).trials.empty:
        print(f"warning: experiment {args.experiment!r} has no trial runs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
