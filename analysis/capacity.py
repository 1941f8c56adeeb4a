"""Question 2, how far one G reaches: runs GIVEN a pair (aligned or fixed, lambda_l1 > 0) over several N.

N90 is the largest N up to which every N tried holds forward_top1 >= 0.9 within the budget, per whole condition
apart from N (architecture, width, pairing, scheme, lambdas, budget: never pooled), against the generator's
parameter count. Each function takes the study's table and returns sentences, a table or a figure.
"""

from __future__ import annotations

import pandas as pd

from .assignment import chance_level
from .claims import n90
from .conditions import data_sets, describe, groups, varied
from .evidence import given, stop_text
from .figures import plt, sns


def n90_table(g: pd.DataFrame) -> pd.DataFrame:
    """Per whole condition apart from N: N90 (claims.n90, over the mean forward_top1 of the replicates), each
    seed's own N90, forward_top1 per N (a pass after a failure is shown there, never taken as capacity), the
    generator's parameter count and pairs held per million parameters."""
    if g.empty or "n_images" not in g or g["n_images"].nunique() < 2 or "pair/forward_top1" not in g:
        return pd.DataFrame()
    rows = []
    for condition, h in groups(g, without=("n_images",)):
        by_n = h.groupby("n_images")["pair/forward_top1"].mean()
        held = n90(by_n)
        largest = int(by_n.index.max())
        replicates = [k for k in ("data_seed", "seed") if k in h]
        each = [n90(r.groupby("n_images")["pair/forward_top1"].mean()) for _, r in h.groupby(replicates)] \
            if replicates else [held]
        shown = [("<" + str(int(by_n.index.min()))) if v is None else str(v) for v in each]
        params = float(h["model/generator_params"].median()) if "model/generator_params" in h else float("nan")
        row = {k: h[k].iloc[0] for k in ("arch", "base_filters", "image_size", "pairing") if k in h} | condition
        row |= {"N90": "-" if held is None else (f">= {held}" if held == largest else str(held)),
                "N90 per seed": shown[0] if len(set(shown)) == 1 else
                f"{min(shown, key=_order)} to {max(shown, key=_order)}",
                "top1 per N": ", ".join(f"{int(n)}: {v:.2f}" for n, v in by_n.items()),
                "seeds": int(h.groupby("n_images").size().max()),
                "params (M)": round(params / 1e6, 3),
                "pairs per M params": "-" if held is None or not params == params else round(held / (params / 1e6), 1)}
        rows.append(row)
    return pd.DataFrame(rows)


def _order(text: str) -> float:
    return float(text.lstrip("<>= ")) - (0.5 if text.startswith("<") else 0)


def _held(row: pd.Series) -> str:
    """What one condition held, in words: never "N90 below every N tried"."""
    first = row["top1 per N"].split(", ")[0]
    if row["N90"] == "-":
        n, value = first.split(": ")
        return f"at no N tried (the smallest, N = {n}, reached {value})"
    if row["N90"].startswith(">="):
        return f"at every N tried, up to N = {row['N90'].removeprefix('>= ')} (N90 at least that)"
    return f"up to N = {row['N90']} (N90 = {row['N90']})"


def capacity_answers(t: pd.DataFrame) -> list[str]:
    """Question 2 in one sentence: up to which N one G held every given pair, per architecture and width, at
    the study's budget beside the original's; the per-N numbers are n90_table's."""
    g = given(t)
    table = n90_table(g)
    if table.empty:
        return []
    others = [k for k in varied(g, without=("n_images",)) if k not in ("arch", "base_filters")]
    parts = []
    for _, r in table.iterrows():
        name = " ".join(str(r[k]) for k in ("arch", "base_filters") if k in r)
        if others:
            name += f" ({describe({k: r[k] for k in others})})"
        parts.append(f"{name} {_held(r)}")
    seeds = int(table["seeds"].max())
    sets = max(data_sets(h) for _, h in g.groupby("n_images"))  # another N is other images, not another data set
    runs = (f"mean over {seeds} seeds" if seeds > 1 else "one run") + \
        f" on {sets} data set{'s' * (sets != 1)}" + (" (seeds of one data set, not independent)" if sets == 1 and
                                                      seeds > 1 else "")
    epochs = ", ".join(str(int(e)) for e in sorted(g["epochs"].dropna().unique())) if "epochs" in g else "?"
    per_pair = ""
    if "budget/g_steps_per_pair" in g and g["budget/g_steps_per_pair"].notna().any():
        steps = sorted(int(v) for v in g["budget/g_steps_per_pair"].dropna().unique())
        per_pair = f" ({', '.join(map(str, steps))} G steps per pair; the original: 800 at N = 10, 4000 at N = 20)"
    return [f"Given the pair ({', '.join(sorted(g['pairing'].unique()))} pairing), within {epochs} epochs{per_pair}, "
            f"one G held forward_top1 >= 0.9 ({runs} per N; {stop_text(g)}): " + "; ".join(parts) + "."]


def capacity_figure(g: pd.DataFrame) -> plt.Figure | None:
    """forward_top1, mutual and the held-out copy excess against N: a metric no run has (no held-out images:
    n_holdout = 0) gets no panel."""
    metrics = [m for m in ("pair/forward_top1", "pair/mutual", "mem/holdout_copy_excess")
               if m in g and g[m].notna().any()]
    if g.empty or g["n_images"].nunique() < 2 or not metrics:
        return None
    style = "base_filters" if "base_filters" in g and g["base_filters"].nunique() > 1 else None
    hue = "arch" if "arch" in g and g["arch"].nunique() > 1 else None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.8), squeeze=False)
    data = g.assign(base_filters=g["base_filters"].astype(str)) if style else g
    for ax, metric in zip(axes[0], metrics, strict=True):
        # markers, intervals over seeds and a dodge: lines that coincide (both at 1.0) stay apart
        sns.lineplot(data=data, x="n_images", y=metric, hue=hue, style=style, markers=True, dashes=True,
                     errorbar=("ci", 95), err_style="bars", seed=0, ax=ax, legend=ax is axes[0][-1],
                     **({} if style else {"marker": "o"}))
        if metric == "pair/forward_top1":
            ax.axhline(0.9, color="crimson", ls=":", lw=1, label="0.9 (N90)")
        if chance_level(metric, 10) is not None:
            sizes = sorted(g["n_images"].unique())
            ax.plot(sizes, [chance_level(metric, int(n)) for n in sizes], "k--", lw=0.8, label="chance 1/N")
        if metric == "mem/holdout_copy_excess":
            ax.axhline(0.0, color="0.5", ls="-.", lw=0.8, label="the mean training target's rate")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(g["n_images"].unique()), [str(int(n)) for n in sorted(g["n_images"].unique())])
        ax.set_ylim(-1.05 if metric == "mem/holdout_copy_excess" else -0.05, 1.05)
        ax.set_xlabel("N (given pairs)")
        ax.set_title(metric)
    handles = {}
    for ax in axes[0]:  # one legend for every line of every panel, the reference lines included
        handles |= dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    axes[0][-1].legend(handles.values(), handles.keys(), fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       frameon=False)
    fig.tight_layout()
    return fig
