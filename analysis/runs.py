"""The one loader of a study's runs: MLflow read-only (mlflow.search_runs into pandas, artifacts and metric
histories through the client), so the report works the same against a remote tracking server. Every section
of analysis.report draws from what this returns.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import dynamics
from .pairing import seed_agreement

NUMERIC_PARAMS = ("n_images", "data_seed", "image_size", "lambda_l1", "lambda_adv", "lambda_cyc", "lambda_id", "seed",
                  "epochs", "batch_size", "base_filters", "d_filters", "n_holdout", "lr", "warmup_epochs", "patience",
                  "patience_epochs", "budget/epochs", "budget/g_steps", "budget/g_steps_per_pair")

CORE_METRICS = ("pair/forward_top1", "pair/bijectivity", "pair/mutual", "pair/cycle_top1", "pair/seed_kappa",
                "mem/holdout_copy_excess")
FACTORS = ("pairing", "direction_schedule", "arch", "scheme", "n_images", "lambda_l1", "lambda_cyc")


@dataclass
class StudyRuns:
    name: str
    experiment_id: str | None
    parent: pd.Series | None  # the study's parent run
    trials: pd.DataFrame  # one row per trial run; params.* parsed to numbers where they are numbers
    objectives: list[str]
    directions: list[str]
    ui: str | None = None  # the MLflow UI's address, for links to each run's page
    sweep: dict = field(default_factory=dict)  # the sweep file as the parent run keeps it (space, seeds, ...)


# A run shows few params and few summary tags (study.tracking): all its settings are the JSON tag `config`, all
# its summaries the JSON tag `summaries`. Runs from before then have them as params and tags of their own.
JSON_TAGS = {"config": "params.", "summaries": "tags.summary."}


def summaries(tags: dict[str, str]) -> dict[str, str]:
    """Every run-level summary of one run (read through the client), by key: `stop/epoch`, ..."""
    values = json.loads(tags.get("summaries") or "{}")
    return {**values, **{k.removeprefix("summary."): v for k, v in tags.items() if k.startswith("summary.")}}


def settings(run) -> dict[str, str]:
    """Every setting of one run (read through the client) as its params would say it: `budget/epochs`, ..."""
    return {**json.loads(run.data.tags.get("config") or "{}"), **run.data.params}


def _expand_json_tags(df: pd.DataFrame) -> pd.DataFrame:
    """The `config` and `summaries` tags of every run as the columns mlflow.search_runs gives params and tags."""
    for tag, prefix in JSON_TAGS.items():
        if f"tags.{tag}" not in df:
            continue
        values = pd.DataFrame([json.loads(v) if isinstance(v, str) and v else {} for v in df[f"tags.{tag}"]],
                              index=df.index, dtype=object).add_prefix(prefix)
        for c in values.columns.intersection(df.columns):  # a run from before has its own column
            df[c] = df[c].fillna(values[c])
        df = pd.concat([df, values[values.columns.difference(df.columns)]], axis=1)
    return df


def _strip(df: pd.DataFrame) -> pd.DataFrame:
    """`params.n_images` -> `n_images`; metrics keep their `pair/...` names, and so do the run-level summaries
    a trial logs as `summary.<key>` tags (intervals, chance levels, p-values), read back as numbers."""
    df = _expand_json_tags(df)
    summaries = [c for c in df.columns if c.startswith("tags.summary.")]
    for c in summaries:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    renamed = {c: c.split(".", 1)[1] for c in df.columns if c.startswith(("params.", "metrics."))}
    renamed |= {c: c.removeprefix("tags.summary.") for c in summaries}
    df = df.rename(columns=renamed)
    if "precision" in df and "tags.resolved.precision" in df:  # auto: what the run's machine computed in
        df["precision"] = df["precision"].where(df["precision"] != "auto", df["tags.resolved.precision"])
    for col in NUMERIC_PARAMS:
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
            whole = df[col].dropna()
            if len(whole) and (whole == whole.round()).all() and col not in ("lambda_l1", "lambda_adv", "lambda_cyc",
                                                                             "lambda_id", "lr"):
                df[col] = df[col].astype("Int64")  # N = 10, not 10.0, in tables and axes
    return df


def load_study_runs(client, name: str) -> StudyRuns:
    """The one loader: a study's runs as one tidy DataFrame, read through the client's own store."""
    import mlflow

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return StudyRuns(name, None, None, pd.DataFrame(), [], [])
    mlflow.set_tracking_uri(client.tracking_uri)  # search_runs reads the global URI: make it this client's store
    runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], max_results=50000)
    if runs.empty:
        return StudyRuns(name, experiment.experiment_id, None, pd.DataFrame(), [], [])
    role = runs.get("tags.role", pd.Series(index=runs.index, dtype=object))
    parents = runs[role == "study"]
    parent = parents.sort_values("start_time").iloc[-1] if len(parents) else None
    trials = _strip(runs[role != "study"].copy())
    if "tags.optuna.state" in trials:
        trials["state"] = trials["tags.optuna.state"].fillna(trials["status"])
    else:
        trials["state"] = trials["status"].map({"FINISHED": "COMPLETE", "FAILED": "FAIL"}).fillna(trials["status"])
    trials = trials.sort_values("start_time").reset_index(drop=True)
    sweep = {"objectives": ["pair/forward_top1"], "directions": ["maximize"]}
    if parent is not None:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                sweep = json.loads(Path(client.download_artifacts(parent.run_id, "sweep.json", tmp)).read_text())
        except Exception:
            pass  # an older or hand-made parent run: fall back to forward_top1
    return StudyRuns(name, experiment.experiment_id, parent, trials, sweep["objectives"], sweep["directions"],
                     sweep=sweep)


def study_names(client) -> list[str]:
    return sorted(e.name for e in client.search_experiments() if e.name != "Default")


def most_recent_study(client) -> str | None:
    """The latest experiment a sweep wrote, never the one single runs (`make run`) go to."""
    experiments = [e for e in client.search_experiments()
                   if e.name != "Default" and e.tags.get("cyclelike.role", "study") == "study"]
    if not experiments:
        return None
    return max(experiments, key=lambda e: e.last_update_time or e.creation_time or 0).name


def complete(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["state"] == "COMPLETE"] if len(trials) else trials


def add_seed_agreement(client, trials: pd.DataFrame) -> pd.DataFrame:
    """Each completed run's final assignment a (`assignment`), its untrained map's (`initial`, where epoch 0 was
    evaluated) and each data-only predictor's partners (`partners`, a dict: what analysis.claims tests the maps
    against), and pair/seed_agreement and pair/seed_kappa per condition and data set (config_key: its runs differ
    in seed alone): means over seed pairs of the share of i with the same a(i) and of Cohen's kappa."""
    done = complete(trials)
    if "tags.config_key" not in done or done.empty:
        return trials
    assignments, initial, partners = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in done.itertuples():
            try:
                saved = json.loads(Path(client.download_artifacts(row.run_id, "pairing/assignment.json", tmp))
                                   .read_text())
            except Exception:
                continue
            assignments[row.run_id] = np.asarray(saved["a"])
            if saved.get("a0") is not None:
                initial[row.run_id] = np.asarray(saved["a0"])
            if saved.get("partners"):
                partners[row.run_id] = {k: np.asarray(v) for k, v in saved["partners"].items()}
    trials = trials.copy()
    trials["assignment"] = trials["run_id"].map(assignments)
    trials["initial"] = trials["run_id"].map(initial)
    trials["partners"] = trials["run_id"].map(partners)
    for key, group in done.groupby("tags.config_key"):
        ids = [r for r in group.run_id if r in assignments]
        pairs = [seed_agreement(assignments[p], assignments[q]) for p, q in itertools.combinations(ids, 2)]
        if pairs:
            trials.loc[trials["tags.config_key"] == key, "pair/seed_agreement"] = float(
                np.mean([s["pair/seed_agreement"] for s in pairs]))
            trials.loc[trials["tags.config_key"] == key, "pair/seed_kappa"] = float(
                np.mean([s["pair/seed_kappa"] for s in pairs]))
    return trials


def busy_seconds(t: pd.DataFrame) -> float:
    """Wall seconds during which at least one trial ran: the union of the runs' [start, end] intervals, so
    that a study run in several invocations (or by several workers at once) is neither under- nor over-counted."""
    if t.empty or "start_time" not in t or "end_time" not in t:
        return float("nan")
    spans = t.dropna(subset=["start_time", "end_time"]).sort_values("start_time")[["start_time", "end_time"]]
    total, current_start, current_end = 0.0, None, None
    for start, end in spans.itertuples(index=False):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += (current_end - current_start).total_seconds()
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += (current_end - current_start).total_seconds()
    return total


CURVE_METRICS = ("loss/G_total", "loss/D", "loss/G_l1", "loss/G_cyc")


def load_curves(client, trials: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch losses and per-evaluation pairing scores of every trial run as one long table (run_id,
    metric, epoch, value): the loader's part of the training-curves and formation sections."""
    rows = []
    for run_id in trials.get("run_id", []):
        for metric in CURVE_METRICS + dynamics.FORMATION_METRICS:
            rows += [{"run_id": run_id, "metric": metric, "epoch": m.step, "value": m.value, "at": m.timestamp}
                     for m in client.get_metric_history(run_id, metric)]
    curves = pd.DataFrame(rows, columns=["run_id", "metric", "epoch", "value", "at"])
    # a trial resumed from its checkpoint trained the epochs after it again, in the same run: each epoch once,
    # as the resumed training (the one that goes on from there) logged it
    curves = curves.sort_values("at").drop_duplicates(["run_id", "metric", "epoch"], keep="last")
    return curves.drop(columns="at").sort_values(["run_id", "metric", "epoch"]).reset_index(drop=True)


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def swept_params(trials: pd.DataFrame) -> list[str]:
    params = [c for c in trials.columns if c in FACTORS or c in NUMERIC_PARAMS or c in ("data", "norm", "gan_loss")]
    # the budget/* params follow from epochs, N and the scheme: never a factor of their own
    return [c for c in params if c != "seed" and not c.startswith("budget/") and trials[c].nunique(dropna=True) > 1]
