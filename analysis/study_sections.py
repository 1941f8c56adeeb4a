"""The report's sections on the study itself: what ran, the pairs by condition, assignment pictures,
parameter importance, training curves and how to reproduce it. Each takes the document and the loaded runs
(analysis.runs); those that show a run's artifacts read them through the same read-only client.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import questions
from .assignment import chance_level
from .conditions import describe, labelled, legend, missing_cells
from .document import Document
from .figures import PAIRING_COLOURS, distance_heatmap, legend_outside, plt, reference_label, sns
from .runs import (
    CORE_METRICS,
    CURVE_METRICS,
    FACTORS,
    StudyRuns,
    busy_seconds,
    complete,
    swept_params,
)
from .store import run_page


def plot_metric(t: pd.DataFrame, metric: str, factors: list[str]) -> plt.Figure:
    fig, axes = plt.subplots(1, len(factors), figsize=(4.2 * len(factors), 3.6), squeeze=False, sharey=True)
    hue = "pairing" if "pairing" in factors and t["pairing"].nunique() > 1 else None
    for ax, factor in zip(axes[0], factors, strict=True):
        data = t.dropna(subset=[metric, factor])
        order = sorted(data[factor].unique())
        # one colour per pairing in every panel, the pairing panel included
        sns.pointplot(data=data, x=factor, y=metric, order=order, hue=hue, palette=PAIRING_COLOURS if hue else None,
                      errorbar=("ci", 95), dodge=0.3 if hue and factor != "pairing" else False, ax=ax,
                      linestyles="none" if factor == "pairing" else "-", capsize=0.1, seed=0)
        if chance_level(metric, 10) is not None:
            if factor == "n_images":
                ax.plot(range(len(order)), [chance_level(metric, n) for n in order], "k--", lw=1, label="chance")
            else:  # one line per N: a mean over N is a chance level no run has
                for n in sorted(int(n) for n in data["n_images"].unique()):
                    ax.axhline(chance_level(metric, n), color="k", ls="--", lw=1, label=f"chance, N = {n}")
        values = t[metric].dropna()
        # kappa and the copy excess go below 0: the axis shows every value, never a cut-off one
        ax.set_ylim(min(-0.05, values.min() - 0.05) if len(values) else -0.05,
                    max(1.05, values.max() + 0.05) if len(values) else 1.05)
        ax.set_title(f"{metric} vs {factor}")
        if ax.get_legend() is not None and ax is not axes[0][-1]:
            ax.get_legend().remove()
    legend_outside(axes[0][-1])
    fig.tight_layout()
    return fig


def duration_text(seconds: float) -> str:
    """20 s, 4.3 min or 2.1 h: a 20-second study is never "0.0 min"."""
    if not seconds == seconds:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def section_glance(doc: Document, runs: StudyRuns, client, storage: str | None = None) -> None:
    doc.h2("The study at a glance")
    t = runs.trials
    swept = swept_params(t)
    seeds = sorted(t["seed"].dropna().unique().tolist()) if "seed" in t else []
    counts = t["state"].value_counts().to_dict()
    other = sum(v for k, v in counts.items() if k not in ("COMPLETE", "PRUNED", "FAIL"))
    wall = busy_seconds(t)
    sweeps = ", ".join(f"{c} in {{{', '.join(str(v) for v in sorted(t[c].dropna().unique()))}}}" for c in swept)
    doc.p(f"Study '{runs.name}': {len(t)} trial runs; swept {sweeps or 'nothing (every run has the same settings)'}; "
          f"seeds {seeds}. Trials complete: {counts.get('COMPLETE', 0)}, pruned: {counts.get('PRUNED', 0)}, "
          f"failed: {counts.get('FAIL', 0)}, other: {other}. "
          f"Wall time {duration_text(wall)} (the time during which at least one trial ran, over every "
          f"invocation, killed ones included). {schedules_text(t)}Objective: "
          + ", ".join(f"{o} ({d})" for o, d in zip(runs.objectives, runs.directions, strict=True)) + ".")
    doc.p(questions.ledger_text(t, missing_cells(t, runs.sweep.get("space", {}), runs.sweep.get("seeds", [])),
                                running_trials(runs.name, storage)))
    done = complete(t)
    objective, direction = runs.objectives[0], runs.directions[0]
    if done.empty or objective not in done:
        doc.note("No completed trial reports the objective: no best configuration to show.")
        return
    keys = swept or ["run_id"]
    ranked = (done.groupby(keys, dropna=False)[objective].agg(["mean", "min", "max", "count"]).reset_index()
              .sort_values("mean", ascending=direction == "minimize"))
    tied = int((ranked["mean"] == ranked["mean"].iloc[0]).sum())
    best = ranked.head(max(5, tied)).rename(columns={"mean": f"{objective} mean", "count": "runs"})
    shown = (f"all {len(ranked)}" if len(ranked) <= len(best) else
             (f"the {tied} tied at the best mean" if tied > 1 else f"the best {len(best)}")
             + f" of {len(ranked)}; the other {len(ranked) - len(best)} are in section 2")
    doc.table(best.round(3), f"Best configurations by {objective} (mean over seeds, {direction}): {shown}:")


def schedules_text(t: pd.DataFrame) -> str:
    """The direction schedule(s) behind every time and pairing number: an algorithm, not a speed setting."""
    if "direction_schedule" not in t or t["direction_schedule"].dropna().empty:
        return ""
    names = sorted(t["direction_schedule"].dropna().unique())
    return f"Direction schedule: {', '.join(names)} (alternate is the original's). "


def section_pairs(doc: Document, runs: StudyRuns) -> None:
    doc.h2("Pair formation")
    t = complete(runs.trials)
    if t.empty:
        doc.note("No completed trials: nothing to show about pair formation.")
        return
    table = questions.findings_table(t)
    if len(table):
        found = labelled(t)
        doc.p(legend(found) if len(found) > 1 else f"Every run: {describe(found[0][1])}.")
        doc.table(table, "Per condition (mean over runs, their range, and the chance level at their N; runs at p < "
                  "0.05 counted with the data sets in which every seed is):")
    if questions.small_n_note(t):
        doc.p(questions.small_n_note(t))
    factors = [f for f in FACTORS if f in t and t[f].nunique() > 1] or [f for f in ("pairing",) if f in t]
    if not factors:
        doc.note("No factor varies across the completed runs.")
        return
    for metric in CORE_METRICS:
        if metric not in t or t[metric].notna().sum() == 0:
            doc.p(f"{metric}: no run reports it"
                  + (" (it needs at least two seeds per configuration)." if "seed" in metric else "."))
            continue
        name = metric.replace("/", "_") + ".png"
        doc.figure(plot_metric(t, metric, factors), name,
                   f"{metric} against each factor swept; points are means over runs with 95% bootstrap intervals "
                   f"over runs (seeds); "
                   + ("dashed lines: the chance level at each N" if chance_level(metric, 10) is not None else
                      "no chance level (0 is the mean training target's rate)" if metric.startswith("mem/") else
                      "no chance level") + f"; {t[metric].notna().sum()} runs.")


def section_assignments(doc: Document, runs: StudyRuns, client) -> None:
    doc.h2("Assignment pictures")
    t = complete(runs.trials)
    objective = runs.objectives[0]
    if t.empty or objective not in t:
        doc.note("No completed trials with the objective: no runs to picture.")
        return
    ordered = t.dropna(subset=[objective]).sort_values(objective, ascending=runs.directions[0] == "minimize")
    chosen = [("best", ordered.iloc[0]), ("worst", ordered.iloc[-1])]
    if "pairing" in t:
        chosen += [(f"{p} pairing", g.iloc[0]) for p, g in t.groupby("pairing")]
    seen = set()
    for label, row in chosen:
        if row.run_id in seen:
            continue
        seen.add(row.run_id)
        settings = ", ".join(f"{c}={row[c]}" for c in swept_params(t) + ["seed"] if c in row)
        doc.h3(f"{label}: {row.get('tags.mlflow.runName', row.run_id)} ({settings})")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                D = pd.read_csv(client.download_artifacts(row.run_id, "pairing/D_xy.csv", tmp), index_col=0).to_numpy()
                info_path = client.download_artifacts(row.run_id, "pairing/assignment.json", tmp)
                info = json.loads(Path(info_path).read_text())
        except Exception as err:
            doc.note(f"distance matrix not available for this run ({type(err).__name__}).")
            continue
        a, pi = np.asarray(info["a"]), np.asarray(info["pi"])
        pairing = row.get("pairing")
        run_link(doc, runs, row)
        doc.figure(distance_heatmap(D, a, pi, title=_run_score(row, objective), pairing=pairing,
                                    row_names=info.get("x_names"), col_names=info.get("y_names")),
                   f"heatmap_{row.run_id[:8]}.png",
                   f"D_xy of this one run with the nearest y of each x (white squares) and the "
                   f"{reference_label(pairing)} (red dots); the interval is the run's exact 95% interval over its "
                   f"{len(a)} images.")
        try:
            name = f"strip_{row.run_id[:8]}.png"
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy(client.download_artifacts(row.run_id, "pairing/strip.png", tmp), doc.out / name)
            doc.image(name, "Rows: x_i; G(x_i); the nearest y, y_a(i); G(G(x_i)) (first training images).", wide=True)
        except Exception as err:
            doc.note(f"image strip not available for this run ({type(err).__name__}).")


def run_link(doc: Document, runs: StudyRuns, row: pd.Series) -> None:
    """The run's page in the MLflow UI, where the report knows the UI's address."""
    if runs.ui:
        doc.link(f"MLflow run {row.get('tags.mlflow.runName', row.run_id)}",
                 run_page(runs.ui, runs.experiment_id, row.run_id))


def _run_score(row: pd.Series, metric: str) -> str:
    """One run's score with its own exact interval (Clopper-Pearson over its N images) where it has one."""
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{metric} = {row[metric]:.2f}"
    return f"{metric} = {row[metric]:.2f} [95% CI {low:.2f}, {high:.2f}]"


def _eta_squared(t: pd.DataFrame, objective: str, params: list[str]) -> dict[str, float]:
    """Share of the objective's variance explained by each parameter alone (a one-way ANOVA per factor)."""
    y = t[objective]
    total = ((y - y.mean()) ** 2).sum()
    if total == 0:
        return {p: 0.0 for p in params}
    return {p: float(t.groupby(p)[objective].apply(lambda g: len(g) * (g.mean() - y.mean()) ** 2).sum() / total)
            for p in params}


def section_importance(doc: Document, runs: StudyRuns, storage: str | None) -> None:
    doc.h2("Parameter importance")
    t = complete(runs.trials)
    objective = runs.objectives[0]
    params = [p for p in swept_params(t)]
    if t.empty or objective not in t or not params:
        doc.note("Too few completed trials or swept parameters to rank importance.")
        return
    rows, study = [], None
    try:
        import optuna

        study = optuna.load_study(study_name=runs.name, storage=_open_storage(storage))
        n_done = len([x for x in study.trials if x.state == optuna.trial.TrialState.COMPLETE])
        for label, evaluator in (("PED-ANOVA", None), ("fANOVA", optuna.importance.FanovaImportanceEvaluator(seed=0))):
            sign = -1.0 if runs.directions[0] == "maximize" else 1.0  # PED-ANOVA ranks what achieves LOW values
            with warnings.catch_warnings():  # PED-ANOVA warns about the target's sign, which is handled above
                warnings.simplefilter("ignore")
                values = optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                                 target=lambda x, s=sign: s * x.values[0])
            rows += [{"evaluator": label, "parameter": k, "importance": v} for k, v in values.items()]
        source = f"Optuna's evaluators on the study ({n_done} completed trials)"
    except Exception as err:
        values = _eta_squared(t, objective, params)
        rows = [{"evaluator": "eta^2 (one-way)", "parameter": k, "importance": v} for k, v in values.items()]
        why = (f"the Optuna study was not at hand ({type(err).__name__})" if study is None else
               f"Optuna's evaluators could not rank these trials ({type(err).__name__}: {str(err)[:120]})")
        source = f"variance explained by each parameter alone on the MLflow table ({len(t)} runs); {why}"
    imp = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * imp["parameter"].nunique() * max(1, imp["evaluator"].nunique())))
    sns.barplot(data=imp, y="parameter", x="importance", hue="evaluator", ax=ax, orient="h")
    for bars in ax.containers:  # a zero-width bar is a finding too: its number says so
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.set_xlim(0, max(1.0, float(imp["importance"].max()) * 1.15))
    ax.set_title(f"importance for {objective}")
    fig.tight_layout()
    doc.figure(fig, "importance.png", f"Parameter importance for {objective}: {source}. On few trials the "
               "evaluators can disagree; read them together with the plots above.")
    if study is None:
        doc.note("The parallel-coordinates plot needs the Optuna study, which was not at hand.")
        return
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
        warnings.simplefilter("ignore")
        swept = {k for trial in study.trials for k in trial.params}
        ax = plot_parallel_coordinate(study, params=[p for p in params if p in swept] or None,
                                      target=lambda x: x.values[0], target_name=objective)
    for lines in ax.collections:  # Optuna's reversed blues draw the best trials near-white, invisible on white
        lines.set_cmap("viridis")
    fig = ax.figure
    fig.set_size_inches(2.0 * (len(params) + 1) + 2, 4.5)
    doc.figure(fig, "parallel.png", f"Every completed trial as one line across the swept parameters, coloured by "
               f"{objective} (Optuna's parallel-coordinates plot, with its colour bar).")


def running_trials(name: str, storage: str | None) -> int:
    """The study's trials RUNNING in Optuna, read-only; 0 where its storage is not at hand (a report from a
    tracking server alone counts the runs)."""
    try:
        import optuna

        study = optuna.load_study(study_name=name, storage=_open_storage(storage))
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
    except Exception:
        return 0


def _open_storage(storage: str | None):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from .store import optuna_storage

    path = optuna_storage(storage)
    if "://" in path:
        return path
    if not Path(path).exists():
        raise FileNotFoundError(path)
    return JournalStorage(JournalFileBackend(path))


def section_curves(doc: Document, runs: StudyRuns, curves: pd.DataFrame) -> None:
    doc.h2("Training curves")
    if curves.empty:
        doc.note("No run logged per-epoch losses.")
        return
    hue = "pairing" if "pairing" in runs.trials and runs.trials["pairing"].nunique() > 1 else None
    curves = curves[curves["metric"].isin(CURVE_METRICS)]
    data = curves.merge(runs.trials[["run_id", *([hue] if hue else [])]], on="run_id")
    metrics = [m for m in CURVE_METRICS if m in set(data["metric"])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        sns.lineplot(data=data[data["metric"] == metric], x="epoch", y="value", hue=hue, units="run_id",
                     estimator=None, palette=PAIRING_COLOURS if hue else None, lw=0.8, alpha=0.6, ax=ax,
                     legend=ax is axes[0][-1])
        if ax is axes[0][-1]:
            legend_outside(ax)
        ax.set_title(metric)
        ax.set_ylabel(metric)
    fig.tight_layout()
    doc.figure(fig, "curves.png", f"Per-epoch losses of every run ({data['run_id'].nunique()} runs), one line each"
               + (", coloured by pairing." if hue else "."))


def section_reproduction(doc: Document, runs: StudyRuns, client) -> None:
    doc.h2("Reproduction")
    tags = runs.parent.filter(like="tags.").to_dict() if runs.parent is not None else {}
    get = lambda k: tags.get(f"tags.{k}", None)  # noqa: E731
    doc.p(f"Experiment '{runs.name}' in the MLflow store {client.tracking_uri}.")
    if not tags:
        doc.note("No study parent run: the command and commit behind these runs were not recorded.")
        return
    doc.code(f"# command\n{get('command')}\n# git commit {get('mlflow.source.git.commit')}"
             f"{' (with uncommitted changes)' if get('git_dirty') == 'True' else ''}\n"
             f"make report STUDY={runs.name}")
    versions = {k.removeprefix("tags.version."): v for k, v in tags.items() if k.startswith("tags.version.") and v}
    versions["python"] = get("python")
    doc.table(pd.DataFrame([versions]), f"Package versions ({get('machine')}):")
    if "tags.reproduce" in runs.trials and runs.trials["tags.reproduce"].notna().any():
        example = runs.trials["tags.reproduce"].dropna().iloc[0]
        doc.p("Each trial run carries its own command, commit and versions, and retrains exactly (its condition "
              f"and seed) with the command in its 'reproduce' tag, for example `{example}`.")
