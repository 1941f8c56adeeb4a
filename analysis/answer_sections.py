"""The report's sections that answer the study's questions: the first screen, how the pairs formed, what
decides them when none is given, how far one G reaches, and seconds per epoch against N. Each takes the
document and the loaded runs (analysis.runs) and places what analysis.questions and analysis.dynamics
return.
"""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import pandas as pd

from . import capacity, claims, dynamics, evidence, questions
from .conditions import labelled, legend
from .document import Document
from .figures import plt, sns
from .runs import (
    StudyRuns,
    complete,
    fmt,
)
from .scaling import REFERENCE_LOGLOG_SLOPE, REFERENCE_POINTS, fit_scaling
from .store import trials_page
from .study_sections import run_link, schedules_text

REFERENCE_SIZE = 128  # the original's image side for its two timings


def section_answers(doc: Document, runs: StudyRuns) -> None:
    """The first screen: one sentence per question and condition, the evidence behind them in one table each,
    and how each verdict could have come out the other way."""
    doc.h2("The answers", numbered=False)
    t = complete(runs.trials)
    u = evidence.unpaired(t)
    if len(labelled(t)) > 1:  # every condition named once; the letters stand for them below and in every section
        doc.p(legend(labelled(t)))
    found = questions.conditions_with_claims(u, t) if len(u) else []
    q1 = questions.unpaired_answers(t, found)
    if q1:
        for sentence in q1:
            doc.p(sentence)
        doc.table(questions.unpaired_table(u, t, found), "The evidence behind each sentence, per condition given no "
                  "pair:")
        doc.p(claims.HOW)
    else:
        doc.p(questions.QUESTION_1_MISSING)
    q2 = capacity.capacity_answers(t)
    for sentence in q2 or [questions.QUESTION_2_MISSING]:
        doc.p(sentence)
    for sentence in questions.collapse_answers(t):
        doc.p(sentence)
        doc.table(questions.collapse_table(t), "Per condition given a new random partner every epoch:")
    for sentence in dynamics.formation_answers(t):
        doc.p(sentence)
        doc.table(dynamics.formation_intervals(t), "Per condition given a pair: the interval (evaluation before, "
                  "evaluation at] in which forward_top1 first reached 0.9, for the earliest and the latest run:")
    for sentence in dynamics.scaling_answers(t):
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
        doc.note("No run of this study was given no pair (pairing=shuffled with lambda_l1 = 0, or cyclegan); runs "
                 "given a new random partner every epoch (shuffled with lambda_l1 > 0) are given a pair, a new one "
                 "each epoch.")
        return
    doc.p("The answers above, per condition given no pair; seed kappa is Cohen's kappa between the seeds of one "
          "data set (0: what their marginals give by chance, 1: the same pairing every seed); across data sets its "
          "mean over data sets with the one-sided 95% lower bound that decides.")
    fig = questions.predictor_figure(u)
    if fig is not None:
        doc.figure(fig, "predictors.png", "Share of x_i whose learned partner a(i) is the partner of the optimal "
                   "one-to-one assignment on a distance between the original images (pixel L1, low-pass L1, colour "
                   "mean and spread, edge maps, silhouette masks, orientation and centroid from image moments, "
                   f"brightness histograms); mean over {len(u)} runs with a 95% bootstrap interval, dashed: "
                   "chance 1/N.")
    doc.table(questions.predictor_table(u, complete(runs.trials)), "Agreement with each candidate explanation: the "
              "data-only predictors (the optimal one-to-one assignment on each one's distance between the original "
              "images) and the initial map (the untrained G's own assignment at epoch 0), and where the chosen "
              "partner ranks on each predictor's distance (1: its nearest y). On these images: the hits of every "
              "seed against the candidate's partners, permuted once per data set for all its seeds; across data "
              "sets: the effect per data set (agreement minus that of permuted partners), a one-sided t over three "
              "or more. Holm over the conditions and candidates; 'not detected' gives this design's power:")


def section_capacity(doc: Document, runs: StudyRuns, client) -> None:
    doc.h2("How far one G reaches")
    g = evidence.given(complete(runs.trials))
    table = capacity.n90_table(g)
    if table.empty:
        doc.note("This needs runs given a pair (aligned or fixed, lambda_l1 > 0) at two or more N.")
        return
    fig = capacity.capacity_figure(g)
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
        run_link(doc, runs, row)
        name = f"holdout_{row.run_id[:8]}.png"
        try:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy(client.download_artifacts(row.run_id, "pairing/holdout.png", tmp), doc.out / name)
        except Exception as err:
            doc.note(f"held-out images not available for run {row.run_id[:8]} ({type(err).__name__}).")
            continue
        doc.image(name, f"{row.get('arch', '')}, {row.get('base_filters', '?')} filters, N = {row['n_images']}: "
                  "held-out x (never trained on), G(x), and the training y nearest to G(x); holdout_copy_rate = "
                  f"{fmt(row.get('mem/holdout_copy_rate', float('nan')))}.", wide=True)


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
    t["fitted"] = t.index.isin(dynamics.fitted_runs(t)[0].index)
    caveat = dynamics.fitted_runs(t)[1]
    fig, (ax, ax_log) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows, fits = [], []
    palette = dict(zip(sorted(t["series"].unique()), sns.color_palette("deep"), strict=False))
    for series, g in t.groupby("series"):
        colour = palette[series]
        for axis in (ax, ax_log):
            # clipped at 0: a run whose median lies outside its logged epochs' range (epochs lost) draws no bar
            axis.errorbar(g["n_images"], g["time/sec_per_epoch"],
                          yerr=[(g["time/sec_per_epoch"] - g["epoch_min"]).clip(lower=0),
                                (g["epoch_max"] - g["time/sec_per_epoch"]).clip(lower=0)],
                          fmt="o", color=colour, capsize=3, label=f"{series} (runs; bars: epoch min-max)")
        for n, gn in g.groupby("n_images"):
            rows.append({"series": series, "N": int(n),
                         "sec/epoch (median of runs)": round(gn["time/sec_per_epoch"].median(), 4),
                         "runs min": round(gn["time/sec_per_epoch"].min(), 4),
                         "runs max": round(gn["time/sec_per_epoch"].max(), 4),
                         "epoch min": round(gn["epoch_min"].min(), 4), "epoch max": round(gn["epoch_max"].max(), 4),
                         "runs": len(gn), "timed alone": int(gn["fitted"].sum()),
                         "epochs timed per run": int(gn["epochs_timed"].median())})
        fitted = g[g["fitted"]]
        if fitted.empty:  # timed beside other workers only: no line through their contention (the caveat below)
            continue
        try:
            fit = fit_scaling(fitted["n_images"].to_numpy(), fitted["time/sec_per_epoch"].to_numpy())
        except ValueError as err:
            doc.p(f"{series}: {err}.")
            continue
        grid = np.linspace(g["n_images"].min(), g["n_images"].max(), 50)
        for axis in (ax, ax_log):
            axis.plot(grid, fit.predict(grid), color=colour, lw=1.2,
                      label=f"{series}: t = {fit.a:.3f} + {fit.b:.4f} N" if axis is ax else None)
        fits.append({"series": series, "a (s)": round(fit.a, 4), "b (s per image)": round(fit.b, 5),
                     "R^2": round(fit.r2, 4), "log-log slope": round(fit.loglog_slope, 3),
                     "slope 95% interval": f"{fmt(fit.loglog_low, 3)} to {fmt(fit.loglog_high, 3)}",
                     "points": fit.n_points, "distinct N": fit.distinct_n, "reliable": fit.verdict()})
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
               f"{sizes}, {schedules_text(t).strip().lower() or 'schedule not recorded.'} With the least-squares line "
               f"t = a + bN; {reference}.")
    doc.table(pd.DataFrame(rows), "Seconds per epoch by N:")
    if caveat:
        doc.p(caveat[0].upper() + caveat[1:].rstrip("; ") + ".")
    if fits:
        doc.table(pd.DataFrame(fits), "Fits (one point per run):")
        for f in fits:
            versus = (f", against {REFERENCE_LOGLOG_SLOPE:.3f} for the original's two points" if original_size else "")
            doc.p(f"{f['series']}: t(N) = {f['a (s)']} + {f['b (s per image)']} N (R^2 = {f['R^2']}); log-log slope "
                  f"{f['log-log slope']} (95% interval {f['slope 95% interval']}){versus}. Reliable: {f['reliable']}.")
    sentences, side = dynamics.absolute_figures(t)
    for sentence in sentences:
        doc.p(sentence)
    if len(side):
        doc.table(side, "Seconds per epoch at the original's N beside its own, per device and precision (median over "
                  "the runs timed alone):")
