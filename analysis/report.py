"""The study report: where does pair formation come from, and how does time per epoch grow with N.

The runs come from analysis.runs (the one loader, MLflow read-only); each section here draws what they
allow and says in words what it could not draw; a bad or thin experiment never ends in a stack trace.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import dynamics, evidence, questions
from .conditions import missing_cells
from .document import Document
from .figures import PAIRING_COLOURS, distance_heatmap, legend_outside, plt, reference_label, sns
from .pairing import chance_level
from .runs import (
    CURVE_METRICS,
    NUMERIC_PARAMS,
    StudyRuns,
    add_seed_agreement,
    busy_seconds,
    complete,
    load_curves,
    load_study_runs,
    most_recent_study,
)
from .scaling import REFERENCE_LOGLOG_SLOPE, REFERENCE_POINTS, fit_scaling
from .store import run_page, trials_page

REFERENCE_SIZE = 128  # the original's image side for its two timings

CORE_METRICS = ("pair/forward_top1", "pair/bijectivity", "pair/mutual", "pair/cycle_top1", "pair/seed_kappa",
                "mem/holdout_copy_excess")
FACTORS = ("pairing", "direction_schedule", "arch", "scheme", "n_images", "lambda_l1", "lambda_cyc")


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _swept(trials: pd.DataFrame) -> list[str]:
    params = [c for c in trials.columns if c in FACTORS or c in NUMERIC_PARAMS or c in ("data", "norm", "gan_loss")]
    # the budget/* params follow from epochs, N and the scheme: never a factor of their own
    return [c for c in params if c != "seed" and not c.startswith("budget/") and trials[c].nunique(dropna=True) > 1]


# ---------------------------------------------------------------- sections


def section_glance(doc: Document, runs: StudyRuns, client) -> None:
    doc.h2("The study at a glance")
    t = runs.trials
    swept = _swept(t)
    seeds = sorted(t["seed"].dropna().unique().tolist()) if "seed" in t else []
    counts = t["state"].value_counts().to_dict()
    other = sum(v for k, v in counts.items() if k not in ("COMPLETE", "PRUNED", "FAIL"))
    wall = busy_seconds(t)
    sweeps = ", ".join(f"{c} in {{{', '.join(str(v) for v in sorted(t[c].dropna().unique()))}}}" for c in swept)
    doc.p(f"Study '{runs.name}': {len(t)} trial runs; swept {sweeps or 'nothing (every run has the same settings)'}; "
          f"seeds {seeds}. Trials complete: {counts.get('COMPLETE', 0)}, pruned: {counts.get('PRUNED', 0)}, "
          f"failed: {counts.get('FAIL', 0)}, other: {other}. "
          f"Wall time {_fmt(wall / 60, 1)} min (the time during which at least one trial ran, over every "
          f"invocation, killed ones included). {_schedules(t)}Objective: "
          + ", ".join(f"{o} ({d})" for o, d in zip(runs.objectives, runs.directions, strict=True)) + ".")
    doc.p(questions.ledger_text(t, missing_cells(t, runs.sweep.get("space", {}), runs.sweep.get("seeds", []))))
    done = complete(t)
    objective, direction = runs.objectives[0], runs.directions[0]
    if done.empty or objective not in done:
        doc.note("No completed trial reports the objective: no best configuration to show.")
        return
    keys = swept or ["run_id"]
    best = (done.groupby(keys, dropna=False)[objective].agg(["mean", "min", "max", "count"]).reset_index()
            .sort_values("mean", ascending=direction == "minimize").head(5))
    best = best.rename(columns={"mean": f"{objective} mean", "min": "min", "max": "max", "count": "runs"})
    doc.table(best.round(3), f"Best configurations by {objective} (mean over seeds, {direction}):")


def _schedules(t: pd.DataFrame) -> str:
    """The direction schedule(s) behind every time and pairing number: an algorithm, not a speed setting."""
    if "direction_schedule" not in t or t["direction_schedule"].dropna().empty:
        return ""
    names = sorted(t["direction_schedule"].dropna().unique())
    return f"Direction schedule: {', '.join(names)} (alternate is the original's). "


def _plot_metric(t: pd.DataFrame, metric: str, factors: list[str]) -> plt.Figure:
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
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"{metric} vs {factor}")
        if ax.get_legend() is not None and ax is not axes[0][-1]:
            ax.get_legend().remove()
    legend_outside(axes[0][-1])
    fig.tight_layout()
    return fig


def section_pairs(doc: Document, runs: StudyRuns) -> None:
    doc.h2("Pair formation")
    t = complete(runs.trials)
    if t.empty:
        doc.note("No completed trials: nothing to show about pair formation.")
        return
    for sentence in questions.findings(t):
        doc.p(sentence)
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
        doc.figure(_plot_metric(t, metric, factors), name,
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
        settings = ", ".join(f"{c}={row[c]}" for c in _swept(t) + ["seed"] if c in row)
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
        _run_link(doc, runs, row)
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


def _run_link(doc: Document, runs: StudyRuns, row: pd.Series) -> None:
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
    params = [p for p in _swept(t)]
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


def section_scaling(doc: Document, runs: StudyRuns, client) -> None:
    doc.h2("Seconds per epoch against N")
    t = runs.trials.dropna(subset=["time/sec_per_epoch"]) if "time/sec_per_epoch" in runs.trials else pd.DataFrame()
    if t.empty or "n_images" not in t:
        doc.note("No run reports time/sec_per_epoch.")
        return
    warm = int(t["warmup_epochs"].dropna().iloc[0]) if "warmup_epochs" in t and t["warmup_epochs"].notna().any() else 1
    spreads = []
    for _, row in t.iterrows():
        epochs = [m.value for m in client.get_metric_history(row.run_id, "time/epoch_s") if m.step > warm]
        values = epochs or [row["time/sec_per_epoch"]]
        spreads.append((min(values), max(values), len(epochs)))
    t = t.assign(epoch_min=[s[0] for s in spreads], epoch_max=[s[1] for s in spreads],
                 epochs_timed=[s[2] for s in spreads])
    t["series"] = dynamics.scaling_series(t)
    fig, (ax, ax_log) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows, fits = [], []
    palette = dict(zip(sorted(t["series"].unique()), sns.color_palette("deep"), strict=False))
    for series, g in t.groupby("series"):
        colour = palette[series]
        for axis in (ax, ax_log):
            axis.errorbar(g["n_images"], g["time/sec_per_epoch"],
                          yerr=[g["time/sec_per_epoch"] - g["epoch_min"], g["epoch_max"] - g["time/sec_per_epoch"]],
                          fmt="o", color=colour, capsize=3, label=f"{series} (runs; bars: epoch min-max)")
        for n, gn in g.groupby("n_images"):
            rows.append({"series": series, "N": int(n),
                         "sec/epoch (median of runs)": round(gn["time/sec_per_epoch"].median(), 4),
                         "runs min": round(gn["time/sec_per_epoch"].min(), 4),
                         "runs max": round(gn["time/sec_per_epoch"].max(), 4),
                         "epoch min": round(gn["epoch_min"].min(), 4), "epoch max": round(gn["epoch_max"].max(), 4),
                         "runs": len(gn), "epochs timed per run": int(gn["epochs_timed"].median())})
        try:
            fit = fit_scaling(g["n_images"].to_numpy(), g["time/sec_per_epoch"].to_numpy())
        except ValueError as err:
            doc.p(f"{series}: {err}.")
            continue
        grid = np.linspace(g["n_images"].min(), g["n_images"].max(), 50)
        for axis in (ax, ax_log):
            axis.plot(grid, fit.predict(grid), color=colour, lw=1.2,
                      label=f"{series}: t = {fit.a:.3f} + {fit.b:.4f} N" if axis is ax else None)
        fits.append({"series": series, "a (s)": round(fit.a, 4), "b (s per image)": round(fit.b, 5),
                     "R^2": round(fit.r2, 4), "log-log slope": round(fit.loglog_slope, 3),
                     "slope 95% interval": f"{_fmt(fit.loglog_low, 3)} to {_fmt(fit.loglog_high, 3)}",
                     "points": fit.n_points, "reliable": fit.verdict()})
    # the original timed 128 px on a 2018 GPU: its points belong beside runs at that resolution only
    original_size = "image_size" in t and (t["image_size"] == REFERENCE_SIZE).any()
    if original_size:
        ref_n, ref_t = zip(*REFERENCE_POINTS, strict=True)
        for axis in (ax, ax_log):
            axis.plot(ref_n, ref_t, "X", color="crimson", ms=10, label="original report, 128 px, 2018 GPU")
    for axis in (ax, ax_log):
        axis.set_xlabel("N (images per domain)")
        axis.set_ylabel("seconds per epoch")
    ax_log.set_xscale("log")
    ax_log.set_yscale("log")
    ticks = sorted(set(t["n_images"].astype(int)) | ({n for n, _ in REFERENCE_POINTS} if original_size else set()))
    ax_log.set_xticks(ticks, [str(n) for n in ticks])
    ax_log.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_title("linear axes")
    ax_log.set_title("log-log axes (slope 1 = linear in N)")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    fig.tight_layout()
    sizes = ", ".join(f"{int(v)} px" for v in sorted(t["image_size"].dropna().unique())) if "image_size" in t else "?"
    reference = (f"red crosses: the original (10, 1.5 s) and (20, 2.89 s) at 128 px, whose log-log slope is "
                 f"{REFERENCE_LOGLOG_SLOPE:.3f}" if original_size else
                 f"the original's points (128 px, a 2018 GPU) are not drawn: these runs are at {sizes}")
    doc.figure(fig, "scaling.png", f"time/sec_per_epoch (median over epochs after {warm} warm-up) against N at "
               f"{sizes}, {_schedules(t).strip().lower() or 'schedule not recorded.'} With the least-squares line "
               f"t = a + bN; {reference}.")
    doc.table(pd.DataFrame(rows), "Seconds per epoch by N:")
    if fits:
        doc.table(pd.DataFrame(fits), "Fits (one point per run):")
        for f in fits:
            versus = (f", against {REFERENCE_LOGLOG_SLOPE:.3f} for the original's two points" if original_size else "")
            doc.p(f"{f['series']}: t(N) = {f['a (s)']} + {f['b (s per image)']} N (R^2 = {f['R^2']}); log-log slope "
                  f"{f['log-log slope']} (95% interval {f['slope 95% interval']}){versus}. Reliable: {f['reliable']}.")


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


def section_answers(doc: Document, runs: StudyRuns) -> None:
    doc.h2("The answers", numbered=False)
    for sentence in questions.answers(complete(runs.trials)):
        doc.p(sentence)
    if runs.ui and runs.objectives:
        doc.link(f"Every trial in the MLflow UI, sorted by {runs.objectives[0]}",
                 trials_page(runs.ui, runs.experiment_id))


def section_formation(doc: Document, runs: StudyRuns, curves: pd.DataFrame) -> None:
    doc.h2("How the pairs formed over time")
    t = complete(runs.trials)
    fig = dynamics.formation_figure(t, curves) if not curves.empty and not t.empty else None
    if fig is None:
        doc.note("No run evaluated its pairing during training (eval_every = 0): no formation curves.")
    else:
        doc.figure(fig, "formation.png", "forward_top1 and bijectivity at each evaluation, one panel per N: mean over "
                   "runs with a 95% bootstrap interval; grey bands: the central 95% of the fixed points of a random "
                   "permutation (forward_top1) and of the distinct targets of a random map (bijectivity), dashed "
                   "lines their means. For runs given no pair, forward_top1 is against the stored order. A run that "
                   "stopped (stop = locked) leaves the mean at its last evaluation: later points are over the runs "
                   "still training.")
    table = dynamics.formation_table(t)
    if len(table):
        shuffled = " For runs given no pair it is against the stored order, so only locked_epoch and flips " \
            "describe their formation." if len(evidence.unpaired(t)) else ""
        doc.table(table,
                  "Formation per condition and timing series (medians over the runs that reached each): the first "
                  "evaluated epoch with forward_top1 >= 0.9 (censored at the first evaluation: it may have come "
                  "earlier), the epoch from which the median a(i) stays (a row that changed at the last evaluation "
                  "is not locked, and a run whose median row is not locked has none), assignment changes between "
                  "evaluations, and the training seconds until forward_top1 >= 0.9 (a fused run's seconds are its "
                  "group's, so fused runs are their own series)." + shuffled)
    fig, fits = dynamics.seconds_to_pairs(t)
    if fig is None:
        doc.p("Seconds to pairs against N: fewer than two runs reached forward_top1 >= 0.9.")
        return
    doc.figure(fig, "seconds_to_pairs.png", "Left: training seconds until forward_top1 first reached 0.9 (what a "
               "user waits for), right: seconds per epoch (what the original timed), both against N with a "
               "least-squares line per series that has two or more N. A fused run's epoch time is its whole "
               "group's (K seeds at once), so fused runs are their own series, never fitted with single runs.")
    if len(fits):
        doc.table(fits, "Fits t = a + b N, one point per run ('runs without a value': never reached 0.9):")
    else:
        doc.p("No series reached forward_top1 >= 0.9 at two or more N: no seconds-to-pairs fit.")


def section_predictors(doc: Document, runs: StudyRuns) -> None:
    doc.h2("What decides the pairs when none is given")
    u = evidence.unpaired(complete(runs.trials))
    if u.empty:
        doc.note("No run of this study was given no pair (pairing=shuffled with lambda_l1 = 0, or cyclegan).")
        return
    for sentence in questions.unpaired_answers(u):
        doc.p(sentence)
    doc.table(questions.unpaired_table(u), "Per condition given no pair (means over runs; seed kappa is Cohen's "
              "kappa between the seeds of one data set: 0 is what their marginals give by chance, 1 the same "
              "pairing every seed):")
    fig = questions.predictor_figure(u)
    if fig is not None:
        doc.figure(fig, "predictors.png", "Share of x_i whose learned partner a(i) is the partner of the optimal "
                   "one-to-one assignment on a distance between the original images (pixel L1, low-pass L1, colour "
                   f"mean and spread, edge maps); mean over {len(u)} runs with a 95% bootstrap interval, dashed: "
                   "chance 1/N.")
    doc.table(questions.predictor_table(u), "Agreement with each data-only predictor. A data set counts once, "
              "as a hit when every seed of it beats a random permutation at p < 0.05; 'p (Holm)' tests the hits "
              "against 5% of the data sets (one-sided binomial), Holm-corrected over the predictors:")


def section_capacity(doc: Document, runs: StudyRuns, client) -> None:
    doc.h2("How far one G reaches")
    g = evidence.given(complete(runs.trials))
    table = questions.n90_table(g)
    if table.empty:
        doc.note("This needs runs given a pair (aligned or fixed, lambda_l1 > 0) at two or more N.")
        return
    fig = questions.capacity_figure(g)
    factor = g["mem/copy_factor"].dropna() if "mem/copy_factor" in g else pd.Series(dtype=float)
    copy = (f"mem/holdout_copy_excess: the share of held-out inputs whose output is nearer to a training target "
            f"than {factor.iloc[0]:g} x the median distance between training targets, minus that of the mean "
            "training target (a blur passes the threshold without memorising)" if len(factor) else
            "mem/holdout_copy_excess")
    if fig is not None:
        doc.figure(fig, "capacity.png", f"Against N, one line per architecture (colour) and width (style), mean "
                   f"over seeds: forward_top1 (dotted: 0.9), mutual, and {copy}. Dashed: chance 1/N.")
    doc.table(table, "N90 per whole condition apart from N: the largest N whose mean forward_top1 over seeds is "
              ">= 0.9 within the budget ('>=' when it is the largest N tried), its range over the seeds' own N90, "
              "the generator's parameters, and how the runs at the largest N ended.")
    fig, lock = dynamics.steps_to_lock(g)
    if fig is not None:
        doc.figure(fig, "steps_to_lock.png", "Until the pairs lock (stop = locked): G steps (left) and training "
                   "seconds (right; a fused run's is its group's time over the K seeds it trained with, so fused "
                   "runs are their own series) against N, median over the runs that locked with their full range; "
                   "runs that spent the budget unlocked are counted in the table, not drawn.")
        doc.table(lock, "Steps to lock per series and N:")
    largest = g.sort_values(["n_images", "base_filters"] if "base_filters" in g else ["n_images"]).groupby(
        "arch" if "arch" in g else "pairing").tail(1)
    for _, row in largest.iterrows():
        _run_link(doc, runs, row)
        name = f"holdout_{row.run_id[:8]}.png"
        try:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy(client.download_artifacts(row.run_id, "pairing/holdout.png", tmp), doc.out / name)
        except Exception as err:
            doc.note(f"held-out images not available for run {row.run_id[:8]} ({type(err).__name__}).")
            continue
        doc.image(name, f"{row.get('arch', '')}, {row.get('base_filters', '?')} filters, N = {row['n_images']}: "
                  "held-out x (never trained on), G(x), and the training y nearest to G(x); holdout_copy_rate = "
                  f"{_fmt(row.get('mem/holdout_copy_rate', float('nan')))}.", wide=True)


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


def build_report(name: str | None, out: Path | None = None, storage: str | None = None, client=None,
                 ui: str | None = None) -> Path:
    """Write reports/<study>/index.html and report.md; returns the folder. Raises nothing for thin data.
    `ui`: the MLflow UI's address (a tracking server's own by default), for links to each run's page."""
    from mlflow.tracking import MlflowClient

    from .store import PROJECT, tracking_uri

    client = client or MlflowClient(tracking_uri())
    name = name or most_recent_study(client)
    if name is None:
        name = "no-study"
    out = Path(out or PROJECT / "reports" / name)
    doc = Document(f"Study report: {name}", out)
    runs = load_study_runs(client, name)
    runs.ui = ui or (client.tracking_uri if str(client.tracking_uri).startswith(("http://", "https://")) else None)
    if runs.experiment_id is None:
        known = ", ".join(e.name for e in client.search_experiments()) or "none"
        doc.note(f"There is no experiment '{name}' in {client.tracking_uri}. Experiments there: {known}.")
        doc.write()
        return out
    if runs.trials.empty:
        doc.note(f"Experiment '{name}' has no trial runs yet: run the sweep first (make sweep).")
        doc.write()
        return out
    if len(runs.trials) == 1:
        doc.note("This study has one run only: no comparison, interval or fit can be drawn from it.")
    runs.trials = add_seed_agreement(client, runs.trials)
    missing = [m for m in CORE_METRICS if m not in runs.trials]
    if missing:
        doc.note(f"Metrics that no run reports: {', '.join(missing)}.")
    curves = load_curves(client, runs.trials)
    sections = {"answers": lambda: section_answers(doc, runs),
                "glance": lambda: section_glance(doc, runs, client), "pairs": lambda: section_pairs(doc, runs),
                "formation": lambda: section_formation(doc, runs, curves),
                "predictors": lambda: section_predictors(doc, runs),
                "capacity": lambda: section_capacity(doc, runs, client),
                "assignments": lambda: section_assignments(doc, runs, client),
                "importance": lambda: section_importance(doc, runs, storage),
                "scaling": lambda: section_scaling(doc, runs, client),
                "curves": lambda: section_curves(doc, runs, curves),
                "reproduction": lambda: section_reproduction(doc, runs, client)}
    for name, draw in sections.items():
        try:
            draw()
        except Exception as err:  # one broken section must not lose the others
            doc.note(f"This section could not be drawn: {type(err).__name__}: {err}")
            print(f"warning: section {name}: {type(err).__name__}: {err}", file=sys.stderr)
            traceback.print_exc(limit=2, file=sys.stderr)
    doc.write()
    return out
