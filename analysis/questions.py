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

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from cyclelike.config import RunConfig

from .conditions import data_sets, describe, groups, varied
from .figures import PAIRING_COLOURS, legend_outside, plt, sns
from .pairing import PREDICTORS, chance_band, chance_level
from .scaling import fit_scaling

FORMATION_METRICS = ("pair/forward_top1", "pair/bijectivity")
# what each grey band is drawn from: the two nulls differ, and a reader compares a curve to its own
BAND_LABELS = {"pair/forward_top1": "fixed points of a random permutation, central 95%",
               "pair/bijectivity": "distinct targets of a random map, central 95%"}
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


ORIGINAL_EPOCHS = {10: 2000, 20: 10000}  # the original's budgets, after a 1500-epoch pre-training run
ORIGINAL_BATCH = 5


def _chance(metric: str, g: pd.DataFrame) -> str:
    """A metric's chance level for the N of a group, one per N: never a mean over N that no run has."""
    sizes = sorted(int(n) for n in g["n_images"].dropna().unique())
    return ", ".join(f"{chance_level(metric, n):.2f}" + (f" at N = {n}" if len(sizes) > 1 else "") for n in sizes)


def _count(g: pd.DataFrame, column: str) -> int:
    return int((g[column] < SIGNIFICANT).sum()) if column in g else 0


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment: the family-wise error stays below alpha across the tests."""
    order = np.argsort(pvalues)
    adjusted, running = np.empty(len(pvalues)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted.tolist()


def budget_text(g: pd.DataFrame) -> str:
    """A group's budget in the original's units, beside the original's own at that N."""
    if "epochs" not in g or g["epochs"].isna().all():
        return "an unrecorded budget"
    parts = []
    for (n, epochs), h in g.groupby(["n_images", "epochs"]):
        shape = {k: h[k].iloc[0] for k in ("batch_size", "scheme", "direction_schedule") if k in h}
        steps = RunConfig(n_images=int(n), epochs=int(epochs), **shape).budget()["budget/g_steps"]
        text = f"up to {int(epochs)} epochs at N = {int(n)} ({steps} G steps)"
        if int(n) in ORIGINAL_EPOCHS:
            original = RunConfig(n_images=int(n), epochs=ORIGINAL_EPOCHS[int(n)], batch_size=ORIGINAL_BATCH).budget()
            text += (f", {100 * epochs / ORIGINAL_EPOCHS[int(n)]:.0f}% of the original's {ORIGINAL_EPOCHS[int(n)]} "
                     f"epochs ({original['budget/g_steps']} G steps)")
        parts.append(text)
    return "; ".join(parts)


def stop_text(g: pd.DataFrame) -> str:
    """How the runs of a group ended: locked (stop = locked reached its answer) or at the end of the budget."""
    if "stop" not in g or (g["stop"].fillna("off") == "off").all():
        return f"all {len(g)} runs trained their whole budget (stop = off)"
    reasons = g["tags.stop/reason"].fillna("budget") if "tags.stop/reason" in g else pd.Series("budget", g.index)
    locked = g[reasons == "locked"]
    text = f"{len(locked)} of {len(g)} runs locked"
    if len(locked) and "stop/epoch" in locked:
        text += f" (median epoch {locked['stop/epoch'].median():.0f})"
    spent = int((reasons == "budget").sum())
    if spent:
        text += f", {spent} ran out of budget (not converged)"
    return text


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
            hits, sets = _sets_where(g, f"{key}_pvalue"), data_sets(g)
            found.append((name, key, hits, sets, binomtest(hits, sets, SIGNIFICANT, alternative="greater").pvalue))
        for (name, key, hits, sets, _), p_holm in zip(found, holm([f[-1] for f in found]), strict=True):
            rows.append({**condition, "predictor": name, "agreement": round(g[key].mean(), 3),
                         "chance": _chance(key, g), "data sets p<0.05": f"{hits} of {sets}",
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
                 f"(range {f.min():.2f} to {f.max():.2f}; chance {_chance('pair/forward_top1', g)}); "
                 f"{_significant(g, 'pair/forward_top1_pvalue')} beat a random permutation at p < 0.05"]
        for key, label in (("pair/cycle_top1", "cycle_top1"), ("pair/cycle_top1_lowpass", "cycle_top1_lowpass"),
                           ("pair/mutual", "mutual")):
            if key in g and g[key].notna().any():
                parts.append(f"{label} = {g[key].mean():.2f} (chance {_chance(key, g)})")
        if "pair/seed_kappa" in g and g["pair/seed_kappa"].notna().any():
            parts.append(f"seed kappa = {g['pair/seed_kappa'].mean():.2f} (Cohen's; 0 is chance)")
        if "pair/bijectivity" in g and g["pair/bijectivity"].notna().any():
            text = (f"bijectivity = {g['pair/bijectivity'].mean():.2f} (a random map: "
                    f"{_chance('pair/bijectivity', g)}")
            if "pair/bijectivity_p_collapse" in g:
                text += (f"; {_significant(g, 'pair/bijectivity_p_collapse')} have fewer distinct targets than a "
                         f"random map at p < 0.05, {_significant(g, 'pair/bijectivity_p_permutation')} more")
            parts.append(text + ")")
        parts.append(f"budget {budget_text(g)}: {stop_text(g)}")
        out.append(", ".join(parts) + ".")
    if done["n_images"].min() <= 10:
        n = int(done["n_images"].min())
        out.append(f"With N = {n}, one image is {100 / n:.0f} points of any share metric. Bijectivity is tested "
                   "against the exact distribution of distinct targets of a random map, not as a binomial share.")
    return out


def _significant(g: pd.DataFrame, column: str) -> str:
    """'k of m runs (every seed in j of d data sets)': runs at p < 0.05, and the data sets in which every seed
    is, since seeds of one data set are not independent evidence."""
    return (f"{_count(g, column)} of {len(g)} runs (every seed in {_sets_where(g, column)} of {data_sets(g)} data "
            f"set{'s' * (data_sets(g) != 1)})")


def _sets_where(g: pd.DataFrame, column: str) -> int:
    """Data sets in which every seed has p < 0.05: the count that treats seeds of one data set as one."""
    if column not in g:
        return 0
    worst = g.groupby("data_seed")[column].max() if "data_seed" in g else pd.Series([g[column].max()])
    return int((worst < SIGNIFICANT).sum())


def _who(condition: dict, g: pd.DataFrame) -> str:
    scheme = condition.get("scheme", g["scheme"].iloc[0] if "scheme" in g else "cyclelike")
    who = "the one G (lambda_l1 = 0, a new random pairing every epoch)" if scheme == "cyclelike" else \
        f"the {scheme} baseline"
    rest = {k: v for k, v in condition.items() if k != "scheme"}
    return who + (f" with {describe(rest)}" if rest else "")


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
        text = (f"Given no pair, {_who(condition, g)}, {budget_text(g)}: {stop_text(g)}. It reached bijectivity "
                f"{g['pair/bijectivity'].mean():.2f} over {len(g)} runs on {sets} data set{'s' * (sets != 1)} "
                f"(a random map: {_chance('pair/bijectivity', g)}); "
                f"{_significant(g, 'pair/bijectivity_p_permutation')} had more distinct targets than a random map "
                f"at p < 0.05, {_significant(g, 'pair/bijectivity_p_collapse')} fewer, and {full} were one-to-one")
        if "pair/mutual" in g and g["pair/mutual"].notna().any():
            text += f"; mutual = {g['pair/mutual'].mean():.2f} (chance {_chance('pair/mutual', g)})"
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
               "random map": _chance("pair/bijectivity", g),
               "more distinct (p<0.05)": _significant(g, "pair/bijectivity_p_permutation"),
               "collapsed (p<0.05)": _significant(g, "pair/bijectivity_p_collapse")}
        for key, label in (("pair/mutual", "mutual"), ("pair/seed_kappa", "seed kappa")):
            if key in g:
                row[label] = round(g[key].mean(), 2)
        agree = {name: g[f"pair/agree_{name}"].mean() for name in PREDICTORS if f"pair/agree_{name}" in g}
        if agree:
            best = max(agree, key=agree.get)
            row["closest predictor"] = f"{best} {agree[best]:.2f} (chance {_chance('pair/agree_', g)})"
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
    noisy = t[(_col(t, "pairing", "aligned") == "shuffled") & (_col(t, "lambda_l1", 10.0) > 0)
              & (_col(t, "scheme", "cyclelike") != "cyclegan")]
    out = []
    for condition, g in groups(noisy):
        column = "pair/bijectivity_p_collapse"
        out.append(f"With a new random partner every epoch as its L1 target ({describe(condition) or 'shuffled'}), "
                   f"{budget_text(g)}, G reached bijectivity {g['pair/bijectivity'].mean():.2f} (a random map: "
                   f"{_chance('pair/bijectivity', g)}); {_significant(g, column)} had fewer distinct targets than a "
                   f"random map at p < 0.05" + (": G collapses onto a few targets when the pair is noise."
                                                 if _count(g, column) > len(g) / 2 else "."))
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


def scaling_series(t: pd.DataFrame) -> pd.Series:
    """The series seconds per epoch are fitted in: anything that changes the work per image is its own (a cycle
    or identity term adds a G pass), and so is a fused run, whose epoch time is its whole group's."""
    t = t.assign(**{"cycle pass": np.where(_col(t, "lambda_cyc", 0.0) > 0, "cycle", "no cycle"),
                    "identity pass": np.where(_col(t, "lambda_id", 0.0) > 0, "identity", "no identity"),
                    "seeds fused": _col(t, "tags.fused_group", "1").fillna("1")})
    candidates = ("direction_schedule", "arch", "image_size", "scheme", "batch_size", "base_filters", "precision",
                  "cycle pass", "identity pass", "seeds fused")
    keys = [k for k in candidates if k in t and t[k].nunique() > 1]
    return t[keys].astype(str).agg(", ".join, axis=1) if keys else pd.Series("all runs", index=t.index)


def scaling_answers(t: pd.DataFrame) -> list[str]:
    """How seconds per epoch grow with N, per series with two or more N: the original's "about linear"."""
    if "time/sec_per_epoch" not in t or _col(t, "n_images", 0).nunique() < 2:
        return []
    t = t.dropna(subset=["time/sec_per_epoch"])
    parts = []
    for series, g in t.groupby(scaling_series(t)):
        try:
            fit = fit_scaling(g["n_images"].to_numpy(), g["time/sec_per_epoch"].to_numpy())
        except ValueError:
            continue
        parts.append(f"{series}: log-log slope {fit.loglog_slope:.2f} (95% interval {fit.loglog_low:.2f} to "
                     f"{fit.loglog_high:.2f}), t = {fit.a:.3g} + {fit.b:.3g} N s, {fit.n_points} runs, reliable: "
                     f"{fit.verdict()}")
    if not parts:
        return []
    return ["Seconds per epoch against N (1 is linear; the original's two timings give 0.946): " + "; ".join(parts)
            + "."]


def formation_answers(t: pd.DataFrame) -> list[str]:
    """When the given pairs existed: the first evaluated epoch at forward_top1 >= 0.9, per condition, censored
    at the first evaluation (it may have come earlier) and counted where it never came."""
    g = given(t)
    if g.empty or "pair/epochs_to_90" not in g:
        return []
    parts = []
    for condition, h in groups(g):
        reached = h["pair/epochs_to_90"].dropna()
        if reached.empty:
            parts.append(f"{describe(condition)}: none of {len(h)} runs reached forward_top1 >= 0.9")
            continue
        first = int(reached.min())
        censored = int((reached == first).sum())
        parts.append(f"{describe(condition)}: epoch {reached.median():.0f} (median of {len(reached)} of {len(h)} "
                     f"runs that reached it" + (f"; {censored} at the first evaluation they had, so possibly earlier"
                                                if censored > 1 else "") + ")")
    return ["Given the pair, forward_top1 first reached 0.9 at: " + "; ".join(parts) + "."]


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


def timing_series(t: pd.DataFrame) -> pd.Series:
    """The series a time is read in: the factor that varies, and apart from it runs whose seeds were fused,
    since a fused run's epoch time is its whole group's (K seeds at once), not one seed's."""
    hue = _hue(t)
    series = t[hue].astype(str) if hue else pd.Series("all runs", index=t.index)
    if "tags.fused_group" in t:
        k = t["tags.fused_group"].fillna("1").astype(str)
        series = series.where(k == "1", series + ", " + k + " seeds fused")
    return series


def steps_to_lock(g: pd.DataFrame) -> tuple[plt.Figure | None, pd.DataFrame]:
    """G steps and training seconds until the pairs locked (stop = locked), against N: the original's
    "twice the data, twice the time per epoch" carried on to "how long until the pairs exist". Runs that
    spent their budget unlocked are counted per N, not drawn."""
    if "tags.stop/reason" not in g or not (g["tags.stop/reason"] == "locked").any():
        return None, pd.DataFrame()
    data = g.assign(series=timing_series(g), locked=g["tags.stop/reason"] == "locked")
    rows = []
    for (series, n), h in data.groupby(["series", "n_images"]):
        done = h[h["locked"]]
        rows.append({"series": series, "N": int(n), "locked": f"{len(done)} of {len(h)}",
                     "median G steps to lock": done["stop/g_steps"].median() if len(done) else float("nan"),
                     "median seconds to lock": round(done["time/train_s"].median(), 1) if len(done) else float("nan"),
                     "budget (G steps)": int(h["budget/g_steps"].max()) if "budget/g_steps" in h else "?"})
    locked = data[data["locked"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, label in ((axes[0], "stop/g_steps", "G steps to lock"),
                              (axes[1], "time/train_s", "training seconds to lock")):
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
            try:
                fit = fit_scaling(data["n_images"].to_numpy(), data[metric].to_numpy())
            except ValueError:
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
