"""The original report's two open questions, answered from one study's runs.

Question 1, what are the pairs based on: runs given NO pair (pairing=shuffled with lambda_l1 = 0 for the
one G, or the cyclegan baseline). Does a one-to-one pairing form (bijectivity against a random map), is it
the same pairing for every seed, and does a data-only predictor (pixel, low-pass, colour, edges) explain it?
Question 2, how far one G reaches: runs GIVEN a pair (aligned or fixed, lambda_l1 > 0) over several N.
N90, the largest N still at forward_top1 >= 0.9 within the epoch budget, per architecture and width,
against the generator's parameter count.

Each function takes the study's table (one row per completed trial, as analysis.report loads it) and
returns sentences, a table or a figure; analysis.report places them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from .figures import plt, sns
from .pairing import PREDICTORS, chance_band, chance_level
from .scaling import fit_scaling

FORMATION_METRICS = ("pair/forward_top1", "pair/bijectivity")
SIGNIFICANT = 0.05


def _col(t: pd.DataFrame, name: str, default) -> pd.Series:
    return t[name] if name in t else pd.Series(default, index=t.index)


def unpaired(t: pd.DataFrame) -> pd.DataFrame:
    """Runs that were given no pair: the pairs they show formed by themselves."""
    if t.empty:
        return t
    scheme, l1 = _col(t, "scheme", "cyclelike"), _col(t, "lambda_l1", 10.0)
    return t[(_col(t, "pairing", "aligned") == "shuffled") & ((scheme == "cyclegan") | (l1 == 0))]


def given(t: pd.DataFrame) -> pd.DataFrame:
    """Runs trained towards a given pair: whether G holds the pairs is a question of its range."""
    if t.empty:
        return t
    scheme, l1 = _col(t, "scheme", "cyclelike"), _col(t, "lambda_l1", 10.0)
    return t[_col(t, "pairing", "aligned").isin(["aligned", "fixed"]) & (scheme != "cyclegan") & (l1 > 0)]


def _mean_chance(metric: str, g: pd.DataFrame) -> float:
    return float(np.mean([chance_level(metric, int(n)) for n in g["n_images"]]))


def _count(g: pd.DataFrame, column: str) -> int:
    return int((g[column] < SIGNIFICANT).sum()) if column in g else 0


def predictor_table(u: pd.DataFrame) -> pd.DataFrame:
    """Per scheme and predictor: mean agreement of the learned a with that predictor's partners, its chance
    level, and how many runs beat a random permutation (p < 0.05); `beyond chance` tests that count against
    the 5% of runs a predictor unrelated to the pairs would reach (one-sided binomial test)."""
    rows = []
    for scheme, g in u.groupby(_col(u, "scheme", "cyclelike")):
        for name in PREDICTORS:
            key = f"pair/agree_{name}"
            if key not in g or g[key].isna().all():
                continue
            hits = _count(g, f"{key}_pvalue")
            p = binomtest(hits, len(g), SIGNIFICANT, alternative="greater").pvalue
            rows.append({"scheme": scheme, "predictor": name, "agreement": round(g[key].mean(), 3),
                         "chance": round(_mean_chance(key, g), 3), "runs p<0.05": f"{hits} of {len(g)}",
                         "beyond chance": f"{'yes' if p < SIGNIFICANT else 'no'} (p = {p:.2g})"})
    return pd.DataFrame(rows)


def unpaired_answers(t: pd.DataFrame) -> list[str]:
    """Question 1 in sentences, one per scheme: does a one-to-one pairing form, is it each seed's same one,
    and what explains it."""
    u = unpaired(t)
    if u.empty or "pair/bijectivity" not in u:
        return []
    out = []
    predictors = predictor_table(u)
    for scheme, g in u.groupby(_col(u, "scheme", "cyclelike")):
        who = "the one G (lambda_l1 = 0, a new random pairing every epoch)" if scheme == "cyclelike" else \
            f"the {scheme} baseline"
        more, fewer = _count(g, "pair/bijectivity_p_permutation"), _count(g, "pair/bijectivity_p_collapse")
        full = int((g["pair/bijectivity"] >= 1.0).sum())
        text = (f"Given no pair, {who} reached bijectivity {g['pair/bijectivity'].mean():.2f} over {len(g)} runs "
                f"(a random map: {_mean_chance('pair/bijectivity', g):.2f}); {more} of {len(g)} runs had more "
                f"distinct targets than a random map at p < 0.05, {fewer} fewer, and {full} were one-to-one")
        if "pair/mutual" in g and g["pair/mutual"].notna().any():
            text += f"; mutual = {g['pair/mutual'].mean():.2f} (chance {_mean_chance('pair/mutual', g):.2f})"
        if "pair/seed_agreement_adjusted" in g and g["pair/seed_agreement_adjusted"].notna().any():
            per_condition = g.groupby("tags.config_key")["pair/seed_agreement_adjusted"].first().dropna()
            text += (f". Across seeds of one condition the chance-adjusted agreement of the assignments is "
                     f"{per_condition.mean():.2f} (0 is chance, 1 the same pairing every seed; range "
                     f"{per_condition.min():.2f} to {per_condition.max():.2f} over {len(per_condition)} conditions)")
        mine = predictors[predictors["scheme"] == scheme] if len(predictors) else predictors
        if len(mine):
            best = mine.sort_values("agreement", ascending=False).iloc[0]
            explained = mine[mine["beyond chance"].str.startswith("yes")]
            text += (f". The closest data-only predictor is {best['predictor']} (agreement {best['agreement']:.2f}, "
                     f"chance {best['chance']:.2f}, {best['runs p<0.05']} runs beat a random permutation); "
                     + (f"beyond chance: {', '.join(explained['predictor'])}" if len(explained) else
                        "no predictor explains the pairs beyond chance"))
        out.append(text + ".")
    return out


def unpaired_table(u: pd.DataFrame) -> pd.DataFrame:
    """One row per condition given no pair: the numbers behind the sentences, per scheme, lambda_cyc and N."""
    keys = [k for k in ("scheme", "lambda_cyc", "n_images") if k in u]
    rows = []
    for values, g in u.groupby(keys):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))
        row |= {"runs": len(g), "bijectivity": round(g["pair/bijectivity"].mean(), 2),
                "random map": round(_mean_chance("pair/bijectivity", g), 2),
                "more distinct (p<0.05)": _count(g, "pair/bijectivity_p_permutation"),
                "collapsed (p<0.05)": _count(g, "pair/bijectivity_p_collapse")}
        for key, label in (("pair/mutual", "mutual"), ("pair/seed_agreement_adjusted", "seed agreement (adj.)")):
            if key in g:
                row[label] = round(g[key].mean(), 2)
        agree = {name: g[f"pair/agree_{name}"].mean() for name in PREDICTORS if f"pair/agree_{name}" in g}
        if agree:
            best = max(agree, key=agree.get)
            row["closest predictor"] = f"{best} {agree[best]:.2f} (chance {_mean_chance('pair/agree_', g):.2f})"
        rows.append(row)
    return pd.DataFrame(rows)


def n90_table(g: pd.DataFrame) -> pd.DataFrame:
    """Per architecture and width: N90 = the largest N whose mean forward_top1 over seeds is >= 0.9, with the
    generator's parameter count and pairs held per million parameters."""
    keys = [k for k in ("arch", "base_filters", "image_size") if k in g]
    if g.empty or "n_images" not in g or g["n_images"].nunique() < 2 or "pair/forward_top1" not in g:
        return pd.DataFrame()
    rows = []
    for values, h in g.groupby(keys):
        by_n = h.groupby("n_images")["pair/forward_top1"].mean()
        reached = by_n[by_n >= 0.9]
        params = float(h["model/generator_params"].median()) if "model/generator_params" in h else float("nan")
        n90 = int(reached.index.max()) if len(reached) else None
        largest = n90 is not None and n90 == int(by_n.index.max())
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))
        row |= {"N90": "-" if n90 is None else (f">= {n90}" if largest else str(n90)),
                "N tried": ", ".join(str(int(n)) for n in by_n.index),
                "top1 at largest N": round(float(by_n.iloc[-1]), 2),
                "seeds per N": int(h.groupby("n_images").size().max()),
                "generator params (M)": round(params / 1e6, 3),
                "pairs per M params": "-" if n90 is None or not params == params else round(n90 / (params / 1e6), 1),
                "epochs": ", ".join(str(int(e)) for e in sorted(h["epochs"].dropna().unique())) if "epochs" in h
                else "?"}
        rows.append(row)
    return pd.DataFrame(rows)


def capacity_answers(t: pd.DataFrame) -> list[str]:
    table = n90_table(given(t))
    if table.empty:
        return []
    pairing = ", ".join(sorted(given(t)["pairing"].unique()))
    parts = []
    for _, r in table.iterrows():
        name = " ".join(str(r[k]) for k in ("arch", "base_filters") if k in r)
        held = "below every N tried" if r["N90"] == "-" else r["N90"]
        parts.append(f"{name}: N90 {held} ({r['generator params (M)']:.2f} M parameters)")
    seeds = int(table["seeds per N"].max())
    runs = f"mean over {seeds} seeds" if seeds > 1 else "one run"
    return [f"Given the pair ({pairing} pairing), within {table['epochs'].iloc[0]} epochs one G held "
            f"forward_top1 >= 0.9 up to these N (N90; {runs} per N): " + "; ".join(parts) + "."]


def answers(t: pd.DataFrame) -> list[str]:
    """The report's first screen: each question the study has data for, in sentences with numbers; a
    sentence for each it has none for."""
    out = unpaired_answers(t) or [
        "Question 1 (what the pairs are based on) needs runs given no pair (pairing=shuffled with lambda_l1 = 0, "
        "or scheme=cyclegan); this study has none: make sweep CONFIG=study/configs/unpaired.toml runs them."]
    out += capacity_answers(t) or [
        "Question 2 (how far one G reaches) needs runs given a pair at two or more N; this study has none: "
        "make sweep CONFIG=study/configs/capacity.toml runs them."]
    return out


def _hue(t: pd.DataFrame) -> str | None:
    return next((k for k in ("scheme", "pairing", "arch") if k in t and t[k].nunique() > 1), None)


def formation_figure(t: pd.DataFrame, curves: pd.DataFrame) -> plt.Figure | None:
    """forward_top1 and bijectivity against epoch, one panel per N, mean over runs with a 95% interval, and
    the central 95% range of a random map shaded (grey)."""
    data = curves[curves["metric"].isin(FORMATION_METRICS)].merge(t, on="run_id")
    if data.empty:
        return None
    hue = _hue(t)
    sizes = sorted(int(n) for n in data["n_images"].unique())
    fig, axes = plt.subplots(len(FORMATION_METRICS), len(sizes), figsize=(3.6 * len(sizes) + 0.6, 6.4),
                             squeeze=False, sharex=True, sharey=True)
    for col, n in enumerate(sizes):
        for row, metric in enumerate(FORMATION_METRICS):
            ax = axes[row][col]
            low, high = chance_band(metric, n)
            ax.axhspan(low, high, color="0.85", label="random map, 95%")
            ax.axhline(chance_level(metric, n), color="0.4", ls="--", lw=0.8)
            part = data[(data["metric"] == metric) & (data["n_images"] == n)]
            sns.lineplot(data=part, x="epoch", y="value", hue=hue, errorbar=("ci", 95), seed=0, ax=ax,
                         legend=row == 0 and col == len(sizes) - 1, marker="o", markersize=4)
            ax.set_ylim(-0.05, 1.05)
            ax.set_title(f"{metric.removeprefix('pair/')}, N = {n}", fontsize=10)
            ax.set_ylabel(metric if col == 0 else "")
    fig.tight_layout()
    return fig


def seconds_to_pairs(t: pd.DataFrame) -> tuple[plt.Figure | None, pd.DataFrame]:
    """Wall seconds of training until forward_top1 first reached 0.9, against N, beside seconds per epoch:
    what a user waits for against what the original timed. One fit per series (scheme, pairing or
    architecture, whichever varies) with two or more N; runs that never reached 0.9 are counted, not drawn."""
    if "time/seconds_to_pairs" not in t or t["time/seconds_to_pairs"].notna().sum() < 2:
        return None, pd.DataFrame()
    hue = _hue(t)
    series = t[hue] if hue else pd.Series("all runs", index=t.index)
    palette = dict(zip(sorted(series.unique()), sns.color_palette("deep"), strict=False))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    rows = []
    for ax, metric in zip(axes, ("time/seconds_to_pairs", "time/sec_per_epoch"), strict=True):
        for name, g in t.assign(series=series).groupby("series"):
            data = g.dropna(subset=[metric])
            ax.scatter(data["n_images"], data[metric], color=palette[name], s=18, label=str(name))
            try:
                fit = fit_scaling(data["n_images"].to_numpy(), data[metric].to_numpy())
            except ValueError:
                continue
            grid = np.linspace(data["n_images"].min(), data["n_images"].max(), 50)
            ax.plot(grid, fit.predict(grid), color=palette[name], lw=1,
                    label=f"{name}: t = {fit.a:.2f} + {fit.b:.3f} N")
            rows.append({"quantity": metric, "series": name, "a (s)": round(fit.a, 3),
                         "b (s per image)": round(fit.b, 4), "R^2": round(fit.r2, 3),
                         "log-log slope": round(fit.loglog_slope, 3), "runs": fit.n_points,
                         "runs without a value": int(g[metric].isna().sum())})
        ax.legend(fontsize=7)
        ax.set_xlabel("N (images per domain)")
        ax.set_ylabel(metric)
    fig.tight_layout()
    return fig, pd.DataFrame(rows)


def predictor_figure(u: pd.DataFrame) -> plt.Figure | None:
    keys = [f"pair/agree_{name}" for name in PREDICTORS if f"pair/agree_{name}" in u]
    if u.empty or not keys:
        return None
    long = u.melt(id_vars=[c for c in ("run_id", "scheme") if c in u], value_vars=keys, var_name="predictor",
                  value_name="agreement")
    long["predictor"] = long["predictor"].str.removeprefix("pair/agree_")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    sns.barplot(data=long, x="predictor", y="agreement", hue="scheme" if "scheme" in long else None,
                errorbar=("ci", 95), seed=0, ax=ax)
    ax.axhline(_mean_chance("pair/agree_pixel", u), color="k", ls="--", lw=1, label="chance 1/N")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def capacity_figure(g: pd.DataFrame) -> plt.Figure | None:
    metrics = [m for m in ("pair/forward_top1", "pair/mutual", "mem/holdout_copy_rate") if m in g]
    if g.empty or g["n_images"].nunique() < 2 or not metrics:
        return None
    style = "base_filters" if "base_filters" in g and g["base_filters"].nunique() > 1 else None
    hue = "arch" if "arch" in g and g["arch"].nunique() > 1 else None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.8), squeeze=False)
    data = g.assign(base_filters=g["base_filters"].astype(str)) if style else g
    for ax, metric in zip(axes[0], metrics, strict=True):
        sns.lineplot(data=data, x="n_images", y=metric, hue=hue, style=style, markers=True, errorbar=None, ax=ax,
                     legend=ax is axes[0][-1])
        if metric == "pair/forward_top1":
            ax.axhline(0.9, color="crimson", ls=":", lw=1, label="0.9 (N90)")
        if chance_level(metric, 10) is not None:
            sizes = sorted(g["n_images"].unique())
            ax.plot(sizes, [chance_level(metric, int(n)) for n in sizes], "k--", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(g["n_images"].unique()), [str(int(n)) for n in sorted(g["n_images"].unique())])
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("N (given pairs)")
        ax.set_title(metric)
    fig.tight_layout()
    return fig
