"""How the pairs form over training, and what time it takes: formation curves and tables, G steps and
seconds to a locked assignment, and the seconds-per-epoch scaling with N. Each function takes the study's
table (one row per completed trial, as analysis.runs loads it); analysis.report places what they return.
"""

from __future__ import annotations

import shlex

import numpy as np
import pandas as pd

from cyclelike.config import SWITCH_WORDS, SWITCHES, RunConfig

from .assignment import chance_band, chance_level
from .conditions import describe, groups, labelled
from .evidence import column_or, given, hue_of
from .figures import PAIRING_COLOURS, legend_outside, plt, sns
from .scaling import REFERENCE_POINTS, fit_scaling

FORMATION_METRICS = ("pair/forward_top1", "pair/bijectivity")


# what each grey band is drawn from: the two nulls differ, and a reader compares a curve to its own
BAND_LABELS = {"pair/forward_top1": "fixed points of a random permutation, central 95%",
               "pair/bijectivity": "distinct targets of a random map, central 95%"}


def formation_figure(t: pd.DataFrame, curves: pd.DataFrame) -> plt.Figure | None:
    """forward_top1 and bijectivity against epoch, one panel per N, mean over runs with a 95% interval, and
    the central 95% range of a random map shaded (grey)."""
    data = curves[curves["metric"].isin(FORMATION_METRICS)].merge(t, on="run_id")
    if data.empty:
        return None
    hue = hue_of(t)
    sizes = sorted(int(n) for n in data["n_images"].unique())
    fig, axes = plt.subplots(len(FORMATION_METRICS), len(sizes), figsize=(3.6 * len(sizes) + 0.6, 6.4),
                             squeeze=False, sharex=True, sharey=True)
    for col, n in enumerate(sizes):
        for row, metric in enumerate(FORMATION_METRICS):
            ax = axes[row][col]
            low, high = chance_band(metric, n)
            ax.axhspan(low, high, color="0.85", label=BAND_LABELS[metric])
            ax.axhline(chance_level(metric, n), color="0.4", ls="--", lw=0.8)
            part = data[(data["metric"] == metric) & (data["n_images"] == n)]
            # style as well as colour: a curve under another stays findable
            sns.lineplot(data=part, x="epoch", y="value", hue=hue, style=hue, errorbar=("ci", 95), seed=0, ax=ax,
                         palette=PAIRING_COLOURS if hue == "pairing" else None, markers=True, markersize=4,
                         legend=col == len(sizes) - 1)
            if col == len(sizes) - 1:  # each row's own band named beside it
                legend_outside(ax)
            ax.set_ylim(-0.05, 1.05)
            ax.set_title(f"{metric.removeprefix('pair/')}, N = {n}", fontsize=10)
            ax.set_ylabel(metric if col == 0 else "")
    fig.tight_layout()
    return fig


def formation_intervals(t: pd.DataFrame) -> pd.DataFrame:
    """Per condition given a pair: how many runs reached forward_top1 >= 0.9, and between which evaluations.
    forward_top1 is seen only at evaluations, so each run's first epoch at >= 0.9 is an interval (the
    evaluation before, the one that had it]."""
    g = given(t)
    if g.empty or "pair/epochs_to_90" not in g:
        return pd.DataFrame()
    rows = []
    for label, _, h in labelled(g, t):
        reached = h.dropna(subset=["pair/epochs_to_90"])
        by = reached["pair/epochs_to_90"]
        # runs logged before epochs_to_90_after: the evaluation before was eval_every epochs earlier
        every = pd.to_numeric(column_or(reached, "tags.eval_every", float("nan")), errors="coerce")
        after = column_or(reached, "pair/epochs_to_90_after", float("nan")).fillna((by - every).clip(lower=0))
        rows.append({"condition": label, "reached 0.9": f"{len(reached)} of {len(h)}",
                     "first reached (earliest run)": f"({after.min():.0f}, {by.min():.0f}]" if len(by) else "-",
                     "first reached (latest run)": f"({after.max():.0f}, {by.max():.0f}]" if len(by) else "-"})
    return pd.DataFrame(rows)


def formation_answers(t: pd.DataFrame) -> list[str]:
    """When the given pairs existed, in one sentence: how many runs reached forward_top1 >= 0.9 and by when,
    each run's epoch an interval between two evaluations; per condition: formation_intervals."""
    g = given(t)
    if g.empty or "pair/epochs_to_90" not in g:
        return []
    reached = g["pair/epochs_to_90"].dropna()
    if reached.empty:
        return [f"Given the pair, none of {len(g)} runs reached forward_top1 >= 0.9 within its budget."]
    return [f"Given the pair, {len(reached)} of {len(g)} runs reached forward_top1 >= 0.9, the last by epoch "
            f"{reached.max():.0f} (each between two evaluations: the epoch is an interval, per condition in the "
            f"table below)."]


def formation_table(t: pd.DataFrame) -> pd.DataFrame:
    """Formation per whole condition and timing series: medians of epochs_to_90, locked_epoch, flips and
    seconds_to_pairs over the runs that have them, and how many runs reached 0.9 and locked."""
    cols = [c for c in ("pair/epochs_to_90", "pair/locked_epoch", "pair/flips", "time/seconds_to_pairs") if c in t]
    if not cols:
        return pd.DataFrame()
    rows = []
    for condition, g in groups(t):
        for series, h in g.groupby(timing_series(g)):
            rows.append({"condition": describe(condition), "timing": series} | {c: h[c].median() for c in cols} | {
                "reached 0.9": f"{h['pair/epochs_to_90'].notna().sum()} of {len(h)}" if "pair/epochs_to_90" in h
                else "-",
                "locked (a(i) seen to stay)": f"{h['pair/locked_epoch'].notna().sum()} of {len(h)}"
                if "pair/locked_epoch" in h else "-"})
    return pd.DataFrame(rows).round(1).astype(object).fillna("-")


def steps_to_lock(g: pd.DataFrame) -> tuple[plt.Figure | None, pd.DataFrame]:
    """G steps and training seconds until the pairs locked (stop = locked), against N: the original's
    "twice the data, twice the time per epoch" carried on to "how long until the pairs exist". Locked means
    the epoch from which the map stayed (pair/locked_epoch), not the later one at which the patience window
    confirmed it and the run stopped. Runs that spent their budget unlocked are counted per N, not drawn."""
    if "tags.stop/reason" not in g or not (g["tags.stop/reason"] == "locked").any():
        return None, pd.DataFrame()
    # each seed's own seconds (a resumed run's before the kill too, a fused seed's share of its group's epochs);
    # runs logged before time/seconds_to_lock: every second they trained up to the stop
    seconds = pd.Series(float("nan"), g.index)
    for key in ("time/seconds_to_lock", "time/seed_train_s", "time/train_s"):
        seconds = seconds.fillna(column_or(g, key, float("nan")))
    per_epoch = column_or(g, "stop/g_steps", float("nan")) / column_or(g, "stop/epoch", float("nan"))
    steps = (column_or(g, "pair/locked_epoch", float("nan")) * per_epoch).fillna(column_or(g, "stop/g_steps",
                                                                                          float("nan")))
    data = g.assign(series=timing_series(g), locked=g["tags.stop/reason"] == "locked", seconds=seconds,
                    **{"stop/g_steps": steps})
    rows = []
    for (series, n), h in data.groupby(["series", "n_images"]):
        done = h[h["locked"]]
        rows.append({"series": series, "N": int(n), "locked": f"{len(done)} of {len(h)}",
                     "median G steps to lock": done["stop/g_steps"].median() if len(done) else float("nan"),
                     "median seconds to lock": round(done["seconds"].median(), 1) if len(done) else float("nan"),
                     "budget (G steps)": int(h["budget/g_steps"].max()) if "budget/g_steps" in h else "?"})
    locked = data[data["locked"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, label in ((axes[0], "stop/g_steps", "G steps to lock"),
                              (axes[1], "seconds", "training seconds to lock")):
        sns.lineplot(data=locked, x="n_images", y=metric, hue="series", estimator="median", errorbar=("pi", 100),
                     marker="o", ax=ax, legend=ax is axes[1])
        ax.set_xscale("log", base=2)
        sizes = sorted(int(n) for n in data["n_images"].unique())
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_yscale("log")
        ax.set_xlabel("N (given pairs)")
        ax.set_ylabel(label)
    legend_outside(axes[1])
    fig.tight_layout()
    return fig, pd.DataFrame(rows)


def seconds_to_pairs(t: pd.DataFrame) -> tuple[plt.Figure | None, pd.DataFrame]:
    """Wall seconds of training until forward_top1 first reached 0.9, against N, beside seconds per epoch:
    what a user waits for against what the original timed. One fit per series (scheme, pairing or
    architecture, whichever varies) with two or more N; runs that never reached 0.9 are counted, not drawn."""
    if "time/seconds_to_pairs" not in t or t["time/seconds_to_pairs"].notna().sum() < 2:
        return None, pd.DataFrame()
    series = timing_series(t)
    palette = dict(zip(sorted(series.unique()), sns.color_palette("deep"), strict=False))
    fig, axes = plt.subplots(1, 2, figsize=(14, 4))
    rows = []
    for ax, metric in zip(axes, ("time/seconds_to_pairs", "time/sec_per_epoch"), strict=True):
        for name, g in t.assign(series=series).groupby("series"):
            data = g.dropna(subset=[metric])
            if data.empty:  # a series that never reached 0.9: counted in the table, no empty legend entry
                continue
            ax.scatter(data["n_images"], data[metric], color=palette[name], s=18, label=str(name))
            alone = fitted_runs(data)[0]
            try:
                fit = fit_scaling(alone["n_images"].to_numpy(), alone[metric].to_numpy())
            except ValueError:
                if len(alone) < len(data):  # timed beside other workers: no line through their contention
                    rows.append({"quantity": metric, "series": name, "reliable": "no: not measured alone",
                                 "runs without a value": int(g[metric].isna().sum())})
                continue
            grid = np.linspace(data["n_images"].min(), data["n_images"].max(), 50)
            ax.plot(grid, fit.predict(grid), color=palette[name], lw=1,
                    label=f"{name}: t = {fit.a:.3g} + {fit.b:.3g} N")
            rows.append({"quantity": metric, "series": name, "a (s)": round(fit.a, 3),
                         "b (s per image)": round(fit.b, 4), "R^2": round(fit.r2, 3),
                         "log-log slope": round(fit.loglog_slope, 3), "runs": fit.n_points,
                         "reliable": fit.verdict(),
                         "runs without a value": int(g[metric].isna().sum())})
        legend_outside(ax)
        ax.set_xlabel("N (images per domain)")
        ax.set_ylabel(metric)
    fig.tight_layout()
    return fig, pd.DataFrame(rows)


def timing_series(t: pd.DataFrame) -> pd.Series:
    """The series a time is read in: the factor that varies, and apart from it runs whose seeds were fused,
    since a fused run's epoch time is its whole group's (K seeds at once), not one seed's."""
    hue = hue_of(t)
    series = t[hue].astype(str) if hue else pd.Series("all runs", index=t.index)
    if "tags.fused_group" in t:
        k = t["tags.fused_group"].fillna("1").astype(str)
        series = series.where(k == "1", series + ", " + k + " seeds fused")
    return series


# what changes an epoch's cost besides N: runs that differ here are never fitted as one series
COST_KEYS = ("direction_schedule", "arch", "image_size", "scheme", "batch_size", "base_filters", "d_filters", "norm",
             "precision", "threads", "tags.resolved.device", "tags.timing.cpu", "tags.timing.gpu", "compile",
             *SWITCHES)


def executed(t: pd.DataFrame, switch: str) -> pd.Series:
    """A switch as each run executed it, on or off: its `resolved.` tag; for older runs, which logged it as a param
    (a bool then), that param. `auto` and `on` that resolved alike are one way of computing, so one series."""
    logged = column_or(t, switch, np.nan).map(lambda v: SWITCH_WORDS.get(str(v).lower(), v), na_action="ignore")
    return column_or(t, f"tags.resolved.{switch}", np.nan).fillna(logged)


def scaling_series(t: pd.DataFrame) -> pd.Series:
    """The series seconds per epoch are fitted in: everything that changes the work or the compute of an epoch
    (a cycle or identity term adds a G pass; threads, device and the execution settings change its speed) is
    its own, and so is a fused run, whose epoch time is its whole group's."""
    t = t.assign(**{s: executed(t, s) for s in SWITCHES})
    t = t.assign(**{"cycle pass": np.where(column_or(t, "lambda_cyc", 0.0) > 0, "cycle", "no cycle"),
                    "identity pass": np.where(column_or(t, "lambda_id", 0.0) > 0, "identity", "no identity"),
                    "seeds fused": column_or(t, "tags.fused_group", "1").fillna("1")})
    keys = [k for k in (*COST_KEYS, "cycle pass", "identity pass", "seeds fused") if k in t and t[k].nunique() > 1]
    named = {k: t[k].astype(str) if k.startswith("tags.") or k in ("cycle pass", "identity pass", "seeds fused")
             else k + "=" + t[k].astype(str) for k in keys}
    return pd.DataFrame(named).agg(", ".join, axis=1) if keys else pd.Series("all runs", index=t.index)


def timed_alone(t: pd.DataFrame) -> pd.Series:
    """Runs timed with no other worker of their sweep on the same machine (what the harness knows: other
    sweeps or programs on the machine are not seen): the only ones a fit takes where there are any. Beside
    other workers, an epoch's time is the cores' contention as much as its work (one condition ran at
    0.99 s/epoch inside a 2-worker sweep and 0.246 s alone)."""
    workers = pd.to_numeric(column_or(t, "tags.timing.workers", "1"), errors="coerce").fillna(1)
    return workers <= 1


def fitted_runs(t: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The runs a seconds-per-epoch fit takes, only those timed alone, and what it says of the others. A line
    through contended times is never fitted: it would call the machine's sharing a property of N."""
    alone = timed_alone(t)
    if alone.all():
        return t, ""
    if alone.any():
        return t[alone], (f"{int((~alone).sum())} run(s) timed beside other workers of their sweep on the same "
                          "machine are left out of the fits; ")
    return t[alone], ("not measured alone: every run was timed beside other workers of its sweep on the same machine, "
                      "so its time includes their contention and no line is fitted through them; "
                      f"{alone_command(t)} measures them alone; ")


def alone_command(t: pd.DataFrame) -> str:
    """The command that times a study's runs alone: its sweep again with one worker and every thread, in a store of
    its own (in the first one its conditions are done, and a done condition does not run again), then its report."""
    study = column_or(t, "tags.study", "STUDY").dropna()
    try:
        words = shlex.split(str(column_or(t, "tags.command", "").dropna().iloc[0]))
    except (IndexError, ValueError):
        words = []
    pairs = [(a, b) for a, b in zip(words, words[1:], strict=False)] + [tuple(w.split("=", 1)) for w in words
                                                                         if w.startswith("--") and "=" in w]
    config = next((b for a, b in pairs if a == "--config"), "study/configs/default.toml")
    sets = "".join(f" --set {b}" for a, b in pairs if a == "--set")
    store = "CYCLELIKE_STORE=mlruns/alone"
    return (f'{store} make sweep CONFIG={config} ARGS="--workers 1{sets}" && {store} make report '
            f"STUDY={study.iloc[0] if len(study) else 'STUDY'}")


def scaling_answers(t: pd.DataFrame) -> list[str]:
    """How seconds per epoch grow with N, per series with two or more N: the original's "about linear"; then the
    absolute times beside the original's."""
    if "time/sec_per_epoch" not in t or column_or(t, "n_images", 0).nunique() < 2:
        return absolute_figures(t)[0]
    fitted, caveat = fitted_runs(t.dropna(subset=["time/sec_per_epoch"]))
    parts = []
    for series, g in fitted.groupby(scaling_series(fitted)):
        try:
            fit = fit_scaling(g["n_images"].to_numpy(), g["time/sec_per_epoch"].to_numpy())
        except ValueError:
            continue
        parts.append(f"{series}: log-log slope {fit.loglog_slope:.2f} (95% interval {fit.loglog_low:.2f} to "
                     f"{fit.loglog_high:.2f}), t = {fit.a:.3g} + {fit.b:.3g} N s, {fit.n_points} runs at "
                     f"{fit.distinct_n} N, reliable: {fit.verdict()}")
    head = "Seconds per epoch against N (1 is linear; the original's two timings give 0.946): "
    slopes = [head + (caveat + "; ".join(parts)).rstrip("; ") + "."] if parts or (fitted.empty and caveat) else []
    return slopes + absolute_figures(t)[0]


ORIGINAL = "128 px, batch 5, unet 64, one GPU of 2018"
# the original's workload (shared/DESIGN.md's seed workload): only runs of it have its times to stand beside
ORIGINAL_WORKLOAD = {"image_size": 128, "batch_size": 5, "scheme": "cyclelike", "arch": "unet", "base_filters": 64}


def device_label(t: pd.DataFrame) -> pd.Series:
    """What each run was timed on: the GPU's or the CPU's name, the precision it computed in and a CPU's threads."""
    def words(run: pd.Series) -> str:
        device = _text(run.get("tags.resolved.device"))
        gpu = device.startswith("cuda")
        name = _text(run.get("tags.timing.gpu" if gpu else "tags.timing.cpu")) or "device not recorded"
        precision = _text(run.get("precision")) or "not recorded"
        parts = ["GPU" if gpu else device.upper()] if device else []
        parts.append(precision if precision in ("fp32", "bf16") else f"precision {precision}")
        threads = pd.to_numeric(pd.Series([run.get("threads")]), errors="coerce").iloc[0]
        if device == "cpu" and threads > 0:  # a CPU's time depends on how many of its cores a run had
            parts.append(f"{int(threads)} threads")
        return f"{name} ({', '.join(parts)})"

    return t.apply(words, axis=1).astype(str) if len(t) else pd.Series(index=t.index, dtype=str)


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def absolute_figures(t: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """Seconds per epoch at the original's N = 10 and 20 beside its 1.5 and 2.89 s, from runs of its workload (128 px,
    batch 5, unet 64) timed alone, per device and precision, side by side: a slope alone hides a machine twice as
    slow."""
    if "time/sec_per_epoch" not in t:
        return [], pd.DataFrame()
    same = t.dropna(subset=["time/sec_per_epoch"])
    for key, value in ORIGINAL_WORKLOAD.items():
        same = same[column_or(same, key, getattr(RunConfig, key)) == value]
    same = same[same["n_images"].isin([n for n, _ in REFERENCE_POINTS])] if "n_images" in same else same.iloc[:0]
    if same.empty:
        return [], pd.DataFrame()
    head = ("Seconds per epoch beside the original's (" + " and ".join(f"{s:g} s at N = {n}" for n, s in
                                                                       REFERENCE_POINTS) + f"; {ORIGINAL})")
    alone = same[timed_alone(same)]
    if alone.empty:
        return [f"{head}: not measured alone: the {len(same)} run(s) of its workload here were timed beside other "
                "workers of their sweep, so their times include that contention; "
                f"{alone_command(t)} measures them alone."], pd.DataFrame()
    # the label names the device, precision and threads: the series names what else changes an epoch's cost
    series = scaling_series(alone.drop(columns=["precision", "threads", "tags.resolved.device", "tags.timing.cpu",
                                                "tags.timing.gpu"], errors="ignore"))
    label = device_label(alone).where(series == "all runs", device_label(alone) + ", " + series)
    table = {"N": [n for n, _ in REFERENCE_POINTS], f"original ({ORIGINAL})": [s for _, s in REFERENCE_POINTS]}
    parts = []
    for name, g in alone.groupby(label, sort=False):
        medians = [g.loc[g["n_images"] == n, "time/sec_per_epoch"].median() for n, _ in REFERENCE_POINTS]
        table[name] = [round(m, 3) for m in medians]
        parts.append(f"{name}: " + ", ".join(f"{m:.3g} s at N = {n} ({m / s:.2g}x the original's)" if m == m else
                                             f"no run at N = {n}" for m, (n, s) in zip(medians, REFERENCE_POINTS,
                                                                                      strict=True)))
    if alone.groupby([label, "n_images"]).size().max() > 1:
        head += " (medians over the runs of each)"
    left = len(same) - len(alone)
    out = f" (left out: {left} run(s) timed beside other workers of their sweep)" if left else ""
    return [f"{head}, timed alone: {'; '.join(parts)}{out}."], pd.DataFrame(table)
