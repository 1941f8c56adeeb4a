"""The original report's two open questions, answered from one study's runs.

Question 1, what are the pairs based on: runs given NO pair (pairing=shuffled with lambda_l1 = 0 for the
one G, or the cyclegan baseline). Does a one-to-one pairing form (bijectivity against a random map), is it
the same pairing for every seed, and does a data-only predictor (pixel, low-pass, colour, edges) explain it?
Question 2, how far one G reaches: runs GIVEN a pair (aligned or fixed, lambda_l1 > 0) over several N.
N90, the largest N still at forward_top1 >= 0.9 within the epoch budget, per architecture and width,
against the generator's parameter count.

Each function takes the study's table (one row per completed trial, as analysis.runs loads it) and
returns sentences, a table or a figure; analysis.report places them.
"""

from __future__ import annotations

import pandas as pd
from scipy.stats import binomtest

from .conditions import data_sets, describe, groups, varied
from .dynamics import formation_answers, scaling_answers
from .evidence import (
    SIGNIFICANT,
    budget_text,
    chance_text,
    column_or,
    count_significant,
    given,
    holm,
    sets_where,
    significant_text,
    stop_text,
    unpaired,
    who,
)
from .figures import plt, sns
from .pairing import PREDICTORS, chance_level


def predictor_table(u: pd.DataFrame) -> pd.DataFrame:
    """Per condition and predictor: mean agreement of the learned a with the predictor's partners, its chance
    level, and how many DATA SETS beat a random permutation. Seeds of one data set share its images and its
    predictor partners, so a data set counts once, as a hit only when every seed of it has p < 0.05 (its
    chance under no effect stays <= 5%); the one-sided binomial test of the hits against 5% of the data sets
    is Holm-corrected across the predictors of a condition."""
    rows = []
    for condition, g in groups(u):
        found = []
        for name in PREDICTORS:
            key = f"pair/agree_{name}"
            if key not in g or g[key].isna().all():
                continue
            hits, sets = sets_where(g, f"{key}_pvalue"), data_sets(g)
            found.append((name, key, hits, sets, binomtest(hits, sets, SIGNIFICANT, alternative="greater").pvalue))
        for (name, key, hits, sets, _), p_holm in zip(found, holm([f[-1] for f in found]), strict=True):
            rows.append({**condition, "predictor": name, "agreement": round(g[key].mean(), 3),
                         "chance": chance_text(key, g), "data sets p<0.05": f"{hits} of {sets}",
                         "runs": len(g), "p (Holm)": float(f"{p_holm:.2g}"),
                         "beyond chance": "yes" if p_holm < SIGNIFICANT else "no"})
    return pd.DataFrame(rows)


def findings(t: pd.DataFrame) -> list[str]:
    """Sentences that restate the numbers per whole condition the study varied (seeds and data seeds are its
    replicates), each with the chance level of its own N: nothing the numbers do not show, nothing pooled."""
    done = t[t["state"] == "COMPLETE"] if "state" in t else t
    if done.empty or "pairing" not in done or "pair/forward_top1" not in done:
        return []
    out = []
    for condition, g in groups(done):
        f = g["pair/forward_top1"].dropna()
        if f.empty:
            continue
        target = "the stored order (no pair is given)" if g["pairing"].iloc[0] == "shuffled" else "the pair given"
        parts = [f"With {describe(condition)}, forward_top1 against {target} = {f.mean():.2f} over {len(f)} runs "
                 f"(range {f.min():.2f} to {f.max():.2f}; chance {chance_text('pair/forward_top1', g)}); "
                 f"{significant_text(g, 'pair/forward_top1_pvalue')} beat a random permutation at p < 0.05"]
        for key, label in (("pair/cycle_top1", "cycle_top1"), ("pair/cycle_top1_lowpass", "cycle_top1_lowpass"),
                           ("pair/mutual", "mutual")):
            if key in g and g[key].notna().any():
                parts.append(f"{label} = {g[key].mean():.2f} (chance {chance_text(key, g)})")
        if "pair/seed_kappa" in g and g["pair/seed_kappa"].notna().any():
            parts.append(f"seed kappa = {g['pair/seed_kappa'].mean():.2f} (Cohen's; 0 is chance)")
        if "pair/bijectivity" in g and g["pair/bijectivity"].notna().any():
            text = (f"bijectivity = {g['pair/bijectivity'].mean():.2f} (a random map: "
                    f"{chance_text('pair/bijectivity', g)}")
            if "pair/bijectivity_p_collapse" in g:
                text += (f"; {significant_text(g, 'pair/bijectivity_p_collapse')} have fewer distinct targets than a "
                         f"random map at p < 0.05, {significant_text(g, 'pair/bijectivity_p_permutation')} more")
            parts.append(text + ")")
        parts.append(f"budget {budget_text(g)}: {stop_text(g)}")
        out.append(", ".join(parts) + ".")
    if done["n_images"].min() <= 10:
        n = int(done["n_images"].min())
        out.append(f"With N = {n}, one image is {100 / n:.0f} points of any share metric. Bijectivity is tested "
                   "against the exact distribution of distinct targets of a random map, not as a binomial share.")
    return out


LU_ET_AL = ("Lu et al. (AAAI 2019) found CycleGAN's one-to-one map to be \"just a random one within the large "
            "feasible solution space\"")


def unpaired_answers(t: pd.DataFrame) -> list[str]:
    """Question 1 in sentences, one per condition given no pair: does a one-to-one pairing form, within what
    budget, is it each seed's same one (Cohen's kappa), what explains it, and how this compares to Lu et al."""
    u = unpaired(t)
    if u.empty or "pair/bijectivity" not in u:
        return []
    out = []
    predictors = predictor_table(u)
    for condition, g in groups(u):
        sets = data_sets(g)
        full = int((g["pair/bijectivity"] >= 1.0).sum())
        text = (f"Given no pair, {who(condition, g)}, {budget_text(g)}: {stop_text(g)}. It reached bijectivity "
                f"{g['pair/bijectivity'].mean():.2f} over {len(g)} runs on {sets} data set{'s' * (sets != 1)} "
                f"(a random map: {chance_text('pair/bijectivity', g)}); "
                f"{significant_text(g, 'pair/bijectivity_p_permutation')} had more distinct targets than a random map "
                f"at p < 0.05, {significant_text(g, 'pair/bijectivity_p_collapse')} fewer, and {full} were one-to-one")
        if "pair/mutual" in g and g["pair/mutual"].notna().any():
            text += f"; mutual = {g['pair/mutual'].mean():.2f} (chance {chance_text('pair/mutual', g)})"
        kappa = None
        if "pair/seed_kappa" in g and g["pair/seed_kappa"].notna().any():
            per_set = g.groupby("tags.config_key")["pair/seed_kappa"].first().dropna()
            kappa = per_set.mean()
            text += (f". Seeds of one data set chose the same partners with Cohen's kappa {kappa:.2f} (0: no more "
                     f"than their marginals give by chance, 1: the same pairing; range {per_set.min():.2f} to "
                     f"{per_set.max():.2f} over {len(per_set)} data sets)")
        mine = predictors
        for k, v in condition.items():
            mine = mine[mine[k] == v] if len(mine) and k in mine else mine
        if len(mine):
            best = mine.sort_values("agreement", ascending=False).iloc[0]
            explained = mine[mine["beyond chance"] == "yes"]
            text += (f". The closest data-only predictor is {best['predictor']} (agreement {best['agreement']:.2f}, "
                     f"chance {best['chance']}, {best['data sets p<0.05']} data sets beat a random permutation "
                     f"in every seed); "
                     + (f"beyond chance after Holm's correction over {len(mine)} predictors: "
                        f"{', '.join(explained['predictor'])}" if len(explained) else
                        f"none explains the pairs beyond chance (Holm over {len(mine)} predictors)"))
        if kappa is not None:
            explained = len(mine) > 0 and (mine["beyond chance"] == "yes").any()
            random = kappa < 0.2 and not explained
            text += (f". {LU_ET_AL}; for this scheme this study "
                     + (f"agrees: which partners the map picks is neither shared by the seeds of one data set "
                        f"(kappa {kappa:.2f}) nor explained by a data-only predictor" if random else
                        f"does not agree: the seeds of one data set share their partners (kappa {kappa:.2f})"
                        + (" and a data-only predictor explains them" if explained else "")))
        out.append(text + ".")
    return out


def unpaired_table(u: pd.DataFrame) -> pd.DataFrame:
    """One row per condition given no pair: the numbers behind the sentences."""
    rows = []
    for condition, g in groups(u):
        row = {**condition, "runs": len(g), "data sets": data_sets(g), "ended": stop_text(g),
               "bijectivity": round(g["pair/bijectivity"].mean(), 2),
               "random map": chance_text("pair/bijectivity", g),
               "more distinct (p<0.05)": significant_text(g, "pair/bijectivity_p_permutation"),
               "collapsed (p<0.05)": significant_text(g, "pair/bijectivity_p_collapse")}
        for key, label in (("pair/mutual", "mutual"), ("pair/seed_kappa", "seed kappa")):
            if key in g:
                row[label] = round(g[key].mean(), 2)
        agree = {name: g[f"pair/agree_{name}"].mean() for name in PREDICTORS if f"pair/agree_{name}" in g}
        if agree:
            best = max(agree, key=agree.get)
            row["closest predictor"] = f"{best} {agree[best]:.2f} (chance {chance_text('pair/agree_', g)})"
        rows.append(row)
    return pd.DataFrame(rows)


def _n90(by_n: pd.Series) -> int | None:
    reached = by_n[by_n >= 0.9]
    return int(reached.index.max()) if len(reached) else None


def n90_table(g: pd.DataFrame) -> pd.DataFrame:
    """Per whole condition apart from N (architecture, width, pairing, scheme, lambdas, budget: never pooled):
    N90 = the largest N whose mean forward_top1 over replicates is >= 0.9, with its range over replicates
    (each seed's own N90), the generator's parameter count and pairs held per million parameters."""
    if g.empty or "n_images" not in g or g["n_images"].nunique() < 2 or "pair/forward_top1" not in g:
        return pd.DataFrame()
    rows = []
    for condition, h in groups(g, without=("n_images",)):
        by_n = h.groupby("n_images")["pair/forward_top1"].mean()
        n90 = _n90(by_n)
        largest = int(by_n.index.max())
        replicates = [k for k in ("data_seed", "seed") if k in h]
        each = [_n90(r.groupby("n_images")["pair/forward_top1"].mean()) for _, r in h.groupby(replicates)] \
            if replicates else [n90]
        shown = [("<" + str(int(by_n.index.min()))) if v is None else str(v) for v in each]
        params = float(h["model/generator_params"].median()) if "model/generator_params" in h else float("nan")
        row = {k: h[k].iloc[0] for k in ("arch", "base_filters", "image_size", "pairing") if k in h} | condition
        row |= {"N90": "-" if n90 is None else (f">= {n90}" if n90 == largest else str(n90)),
                "N90 per seed (range)": shown[0] if len(set(shown)) == 1 else
                f"{min(shown, key=_order)} to {max(shown, key=_order)}",
                "N tried": ", ".join(str(int(n)) for n in by_n.index),
                "top1 at largest N": round(float(by_n.iloc[-1]), 2),
                "seeds per N": int(h.groupby("n_images").size().max()),
                "generator params (M)": round(params / 1e6, 3),
                "pairs per M params": "-" if n90 is None or not params == params else round(n90 / (params / 1e6), 1),
                "budget": budget_text(h[h["n_images"] == largest]),
                "ended at largest N": stop_text(h[h["n_images"] == largest])}
        rows.append(row)
    return pd.DataFrame(rows)


def _order(text: str) -> float:
    return float(text.lstrip("<>= ")) - (0.5 if text.startswith("<") else 0)


def capacity_answers(t: pd.DataFrame) -> list[str]:
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
        held = "below every N tried" if r["N90"] == "-" else r["N90"]
        parts.append(f"{name}: N90 {held} (per seed {r['N90 per seed (range)']}; {r['generator params (M)']:.2f} M "
                     f"parameters; at the largest N {r['ended at largest N']})")
    seeds = int(table["seeds per N"].max())
    sets = data_sets(g)
    runs = (f"mean over {seeds} seeds" if seeds > 1 else "one run") + \
        f" on {sets} data set{'s' * (sets != 1)}" + (": seeds of one data set, not independent" if sets == 1 and
                                                      seeds > 1 else "")
    epochs = ", ".join(str(int(e)) for e in sorted(g["epochs"].dropna().unique())) if "epochs" in g else "?"
    per_pair = ""
    if "budget/g_steps_per_pair" in g and g["budget/g_steps_per_pair"].notna().any():
        steps = sorted(int(v) for v in g["budget/g_steps_per_pair"].dropna().unique())
        per_pair = f" ({', '.join(map(str, steps))} G steps per pair)"
    return [f"Given the pair ({', '.join(sorted(g['pairing'].unique()))} pairing), within {epochs} epochs{per_pair}; "
            "the original trained 2000 epochs at N = 10 and 10000 at N = 20 (800 and 4000 G steps per pair), one G "
            f"held forward_top1 >= 0.9 up to these N (N90; {runs} per N): " + "; ".join(parts) + "."]


def ledger_text(t: pd.DataFrame, missing: list[dict]) -> str:
    """What the study lost on the way, from its runs: trials killed and resumed, runs killed and not resumed,
    runs failed (with their reasons), runs still RUNNING (a live sweep, or the orphan of a dead one) and the
    grid's cells with no finished run."""
    failure = t.get("tags.failure", pd.Series("", index=t.index)).fillna("").astype(str)
    killed = (t["state"] == "FAIL") & failure.str.startswith("killed")
    failed = t[(t["state"] == "FAIL") & ~killed]
    resumed = int(pd.to_numeric(t.get("tags.resumes", pd.Series(dtype=float)), errors="coerce").fillna(0).sum())
    running = int((t.get("status", pd.Series(dtype=str)) == "RUNNING").sum())
    parts = [f"{resumed} kill(s) resumed from a checkpoint in the same run", f"{int(killed.sum())} run(s) killed "
             "and not resumed (their retry started afresh)"]
    reasons = failed.assign(why=failure[failed.index].str.strip().str.split("\n").str[-1]).groupby("why").size()
    parts.append(f"{len(failed)} failed" + (" (" + "; ".join(f"{n}: {why or 'no reason'}" for why, n in
                                                          reasons.items()) + ")" if len(failed) else ""))
    parts.append(f"{running} still RUNNING (a sweep at work, or the orphan of a dead one: the next start closes "
                 "it)" if running else "none left RUNNING")
    lost = "; ".join(", ".join(f"{k}={v}" for k, v in cell.items()) for cell in missing[:10])
    parts.append(f"{len(missing)} cell(s) of the grid without a finished run" + (f": {lost}"
                 + (f" and {len(missing) - 10} more" if len(missing) > 10 else "") if missing else ""))
    return "Trials on the way: " + "; ".join(parts) + "."


def answers(t: pd.DataFrame) -> list[str]:
    """The report's first screen: each question the study has data for, in sentences with numbers; a
    sentence for each it has none for."""
    out = unpaired_answers(t) or [
        "Question 1 (what the pairs are based on) needs runs given no pair (pairing=shuffled with lambda_l1 = 0, "
        "or scheme=cyclegan); this study has none: make sweep CONFIG=study/configs/unpaired.toml runs them."]
    out += capacity_answers(t) or [
        "Question 2 (how far one G reaches) needs runs given a pair at two or more N; this study has none: "
        "make sweep CONFIG=study/configs/capacity.toml runs them."]
    return out + collapse_answers(t) + formation_answers(t) + scaling_answers(t)


def collapse_answers(t: pd.DataFrame) -> list[str]:
    """Runs given a NEW random partner every epoch with an L1 target (shuffled, lambda_l1 > 0): the target is
    noise, and G averages it; bijectivity against the random map says whether it collapsed."""
    if t.empty or "pair/bijectivity" not in t:
        return []
    noisy = t[(column_or(t, "pairing", "aligned") == "shuffled") & (column_or(t, "lambda_l1", 10.0) > 0)
              & (column_or(t, "scheme", "cyclelike") != "cyclegan")]
    out = []
    for condition, g in groups(noisy):
        column = "pair/bijectivity_p_collapse"
        out.append(f"With a new random partner every epoch as its L1 target ({describe(condition) or 'shuffled'}), "
                   f"{budget_text(g)}, G reached bijectivity {g['pair/bijectivity'].mean():.2f} (a random map: "
                   f"{chance_text('pair/bijectivity', g)}); {significant_text(g, column)} had fewer distinct "
                   f"targets than a random map at p < 0.05"
                   + (": G collapses onto a few targets when the pair is noise."
                      if count_significant(g, column) > len(g) / 2 else "."))
    return out


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
    for n in sorted(int(n) for n in u["n_images"].unique()):
        ax.axhline(1 / n, color="k", ls="--", lw=1, label=f"chance 1/N, N = {n}")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def capacity_figure(g: pd.DataFrame) -> plt.Figure | None:
    metrics = [m for m in ("pair/forward_top1", "pair/mutual", "mem/holdout_copy_excess") if m in g]
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
