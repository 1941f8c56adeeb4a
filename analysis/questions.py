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

from . import claims
from .claims import CANDIDATES
from .conditions import data_sets, describe, groups, labelled, varied
from .dynamics import formation_answers, scaling_answers
from .evidence import (
    budget_text,
    chance_text,
    column_or,
    count_significant,
    given,
    reference_text,
    sets_where,
    significant_text,
    stop_text,
    unpaired,
    who,
)
from .figures import plt, sns
from .pairing import PREDICTORS, chance_level


def predictor_table(u: pd.DataFrame, named_by: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per condition and candidate explanation (the data-only predictors and the initial map): mean agreement of
    the learned a with the candidate's partners, its chance level, where the chosen partner ranks on the
    candidate's cost, and the claim of analysis.claims.explained: data sets counted once, Holm over the
    candidates, "not tested" where one data set cannot reach the level."""
    rows = []
    for label, _, g in labelled(u, named_by):
        names = [n for n in CANDIDATES if f"pair/agree_{n}" in g and g[f"pair/agree_{n}"].notna().any()]
        for name, claim in claims.explained(g, names).items():
            rank = f"pair/rank_{name}"
            rows.append({"condition": label, "predictor": name,
                         "agreement": round(g[f"pair/agree_{name}"].mean(), 3),
                         "chance": chance_text(f"pair/agree_{name}", g),
                         "rank of the chosen partner": round(g[rank].mean(), 1) if rank in g and g[rank].notna().any()
                         else "-", "rank by chance": chance_text(rank if rank in g else "pair/partner_rank", g),
                         "data sets p<0.05": f"{sets_where(g, f'pair/agree_{name}_pvalue')} of {data_sets(g)}",
                         "runs": len(g), "p (Holm)": float(f"{claim.p:.2g}") if claim.tested else "-",
                         "beyond chance": claim.verdict})
    return pd.DataFrame(rows)


def findings_table(t: pd.DataFrame) -> pd.DataFrame:
    """The numbers per whole condition the study varied (seeds and data seeds are its replicates), one row each
    under its legend label, each share beside the chance level of its own N: nothing pooled."""
    done = t[t["state"] == "COMPLETE"] if "state" in t else t
    if done.empty or "pairing" not in done or "pair/forward_top1" not in done:
        return pd.DataFrame()
    rows = []
    for label, _, g in labelled(done):
        f = g["pair/forward_top1"].dropna()
        if f.empty:
            continue
        row = {"condition": label, "forward_top1 against": reference_text(g).removeprefix("the "),
               "forward_top1": f"{f.mean():.2f} ({f.min():.2f}-{f.max():.2f})",
               "chance": chance_text("pair/forward_top1", g),
               "beat a random permutation": significant_text(g, "pair/forward_top1_pvalue")}
        for key, name in (("pair/cycle_top1", "cycle_top1"), ("pair/mutual", "mutual"),
                          ("pair/bijectivity", "bijectivity")):
            if key in g and g[key].notna().any():
                row[name] = f"{g[key].mean():.2f} (chance {chance_text(key, g)})"
        if "pair/bijectivity_p_collapse" in g:
            row["fewer / more distinct than a random map"] = (
                f"{count_significant(g, 'pair/bijectivity_p_collapse')} / "
                f"{count_significant(g, 'pair/bijectivity_p_permutation')} of {len(g)}")
        row |= {"budget": budget_text(g), "ended": stop_text(g)}
        rows.append(row)
    return pd.DataFrame(rows)


def small_n_note(t: pd.DataFrame) -> str:
    if t.empty or "n_images" not in t or t["n_images"].min() > 10:
        return ""
    n = int(t["n_images"].min())
    return (f"With N = {n}, one image is {100 / n:.0f} points of any share metric. Bijectivity is tested against the "
            "exact distribution of distinct targets of a random map, not as a binomial share.")


LU_ET_AL = ("Lu et al. (AAAI 2019) found CycleGAN's one-to-one map to be \"just a random one within the large "
            "feasible solution space\"")



def unpaired_claims(u: pd.DataFrame, named_by: pd.DataFrame | None = None
                    ) -> list[tuple[str, dict, pd.DataFrame, dict[str, claims.Claim]]]:
    """Each condition given no pair, labelled as in the whole study (`named_by`), with every claim the report
    makes of it (analysis.claims)."""
    out = []
    for label, condition, g in labelled(u, named_by):
        names = [n for n in CANDIDATES if f"pair/agree_{n}" in g and g[f"pair/agree_{n}"].notna().any()]
        out.append((label, condition, g, claims.claims_for(g, names)))
    return out


def _short(claim: claims.Claim) -> str:
    return claim.detail.split(", p =")[0].split(" with every seed")[0].split(", permutation")[0]


def unpaired_sentence(label: str, condition: dict, g: pd.DataFrame, said: dict[str, claims.Claim]) -> str:
    """One sentence of plain words per condition given no pair: does a one-to-one map form, is it the stored
    order's, do the seeds share it, does a candidate explain it, and Lu et al.'s verdict. Its numbers are in
    unpaired_table; a reason a claim could not be tested is said once."""
    name = f"{label} ({who(condition, g)})" if label else who(condition, g)
    share = said["seeds_share"]
    shared = {"yes": f"the seeds of one data set chose the same partners ({_short(share)})",
              "no": f"the seeds shared no more partners than their marginals give ({_short(share)})",
              "not tested": f"seed sharing not tested ({share.detail})"}[share.verdict]
    lu = said["lu"]
    verdict = {"yes": "this study agrees", "no": f"this study does not agree ({lu.detail})",
               "not tested": f"this study could not test it ({lu.detail})"}[lu.verdict]
    if data_sets(g) < 2:
        return (f"Given no pair, {name}: one data set ({len(g)} runs), so whether a one-to-one map forms, finds the "
                f"stored order's partners or follows a candidate explanation is not tested (one data set cannot "
                f"reach p < 0.05, however many seeds); {shared}. {LU_ET_AL}: {verdict}.")
    parts = []
    if said["one_to_one"].verdict == "yes":
        parts.append(f"one-to-one maps formed ({_short(said['one_to_one'])})")
    elif said["collapse"].verdict == "yes":
        parts.append(f"the maps collapsed onto few targets ({_short(said['collapse'])})")
    else:
        parts.append(f"no more one-to-one than a random map ({_short(said['one_to_one'])})")
    truth = said["beats_chance"]
    parts.append(("they found the stored order's partners beyond chance" if truth.verdict == "yes" else
                  "they did not find the stored order's partners beyond chance") + f" ({_short(truth)})")
    parts.append(shared)
    found = [n for n in CANDIDATES if f"explained_{n}" in said and said[f"explained_{n}"].verdict == "yes"]
    tested = [n for n in CANDIDATES if f"explained_{n}" in said and said[f"explained_{n}"].tested]
    parts.append(f"{', '.join(found)} explain{'s' * (len(found) == 1)} them (Holm over {len(tested)} candidates)"
                 if found else f"none of {len(tested)} candidates explains them" if tested else
                 "no candidate explanation was logged")
    return f"Given no pair, {name}: " + "; ".join(parts) + f". {LU_ET_AL}: {verdict}."


def unpaired_answers(t: pd.DataFrame) -> list[str]:
    """Question 1 in sentences, one per condition given no pair (see unpaired_sentence)."""
    u = unpaired(t)
    if u.empty or "pair/bijectivity" not in u:
        return []
    found = unpaired_claims(u, t)
    single = len(labelled(t)) == 1  # one condition in the whole study: no letter to tell it apart
    return [unpaired_sentence("" if single else label, c, g, said) for label, c, g, said in found]


def unpaired_table(u: pd.DataFrame, named_by: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per condition given no pair: the evidence behind its sentence, budget and chance included."""
    rows = []
    for label, _, g, said in unpaired_claims(u, named_by):
        share = said["seeds_share"]
        row = {"condition": label, "budget": budget_text(g), "ended": stop_text(g), "runs": len(g),
               "data sets": data_sets(g),
               "forward_top1 (stored order)": f"{g['pair/forward_top1'].mean():.2f} (chance "
                                              f"{chance_text('pair/forward_top1', g)})",
               "bijectivity": f"{g['pair/bijectivity'].mean():.2f} (random map {chance_text('pair/bijectivity', g)})",
               "one-to-one": said["one_to_one"].verdict, "collapse": said["collapse"].verdict,
               "seed kappa": share.detail.split(", permutation")[0] if share.tested else "-",
               "seeds share": share.verdict, "Lu et al. agree": said["lu"].verdict}
        agree = {n: g[f"pair/agree_{n}"].mean() for n in CANDIDATES if f"pair/agree_{n}" in g}
        if agree:
            best = max(agree, key=agree.get)
            row["closest candidate"] = f"{best} {agree[best]:.2f} (chance {chance_text('pair/agree_', g)})"
        rows.append(row)
    return pd.DataFrame(rows)


def n90_table(g: pd.DataFrame) -> pd.DataFrame:
    """Per whole condition apart from N (architecture, width, pairing, scheme, lambdas, budget: never pooled):
    N90 = the largest N up to which EVERY N tried has mean forward_top1 over replicates >= 0.9 (claims.n90),
    each seed's own N90, the N that held (a pass after a failure is shown there, never taken as capacity),
    the generator's parameter count and pairs held per million parameters."""
    if g.empty or "n_images" not in g or g["n_images"].nunique() < 2 or "pair/forward_top1" not in g:
        return pd.DataFrame()
    rows = []
    for condition, h in groups(g, without=("n_images",)):
        by_n = h.groupby("n_images")["pair/forward_top1"].mean()
        n90 = claims.n90(by_n)
        largest = int(by_n.index.max())
        replicates = [k for k in ("data_seed", "seed") if k in h]
        each = [claims.n90(r.groupby("n_images")["pair/forward_top1"].mean()) for _, r in h.groupby(replicates)] \
            if replicates else [n90]
        shown = [("<" + str(int(by_n.index.min()))) if v is None else str(v) for v in each]
        params = float(h["model/generator_params"].median()) if "model/generator_params" in h else float("nan")
        row = {k: h[k].iloc[0] for k in ("arch", "base_filters", "image_size", "pairing") if k in h} | condition
        row |= {"N90": "-" if n90 is None else (f">= {n90}" if n90 == largest else str(n90)),
                "N90 per seed": shown[0] if len(set(shown)) == 1 else
                f"{min(shown, key=_order)} to {max(shown, key=_order)}",
                "top1 per N": ", ".join(f"{int(n)}: {v:.2f}" for n, v in by_n.items()),
                "seeds": int(h.groupby("n_images").size().max()),
                "params (M)": round(params / 1e6, 3),
                "pairs per M params": "-" if n90 is None or not params == params else round(n90 / (params / 1e6), 1)}
        rows.append(row)
    return pd.DataFrame(rows)


def _order(text: str) -> float:
    return float(text.lstrip("<>= ")) - (0.5 if text.startswith("<") else 0)


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
        held = "below every N tried" if r["N90"] == "-" else r["N90"]
        parts.append(f"{name}: N90 {held}")
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
            f"one G held forward_top1 >= 0.9 at every N up to N90 ({runs} per N; {stop_text(g)}): "
            + "; ".join(parts) + "."]


def ledger_text(t: pd.DataFrame, missing: list[dict], trials_running: int = 0) -> str:
    """What the study lost on the way, from its runs: trials killed and resumed, runs killed and not resumed,
    runs failed (with their reasons), trials still RUNNING (a live sweep, or the orphan of a dead one; Optuna's
    count where it is at hand, since a trial is RUNNING before it has a run) and the grid's cells with no
    finished run."""
    failure = t.get("tags.failure", pd.Series("", index=t.index)).fillna("").astype(str)
    killed = (t["state"] == "FAIL") & failure.str.startswith("killed")
    failed = t[(t["state"] == "FAIL") & ~killed]
    resumed = int(pd.to_numeric(t.get("tags.resumes", pd.Series(dtype=float)), errors="coerce").fillna(0).sum())
    running = max(int((t.get("status", pd.Series(dtype=str)) == "RUNNING").sum()), trials_running)
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


QUESTION_1_MISSING = ("Question 1 (what the pairs are based on) needs runs given no pair (pairing=shuffled with "
                      "lambda_l1 = 0, or scheme=cyclegan); this study has none: make sweep "
                      "CONFIG=study/configs/unpaired.toml runs them.")
QUESTION_2_MISSING = ("Question 2 (how far one G reaches) needs runs given a pair at two or more N; this study has "
                      "none: make sweep CONFIG=study/configs/capacity.toml runs them.")


def answers(t: pd.DataFrame) -> list[str]:
    """The report's first screen in sentences: each question the study has data for, one sentence per
    condition; a sentence for each it has none for."""
    out = unpaired_answers(t) or [QUESTION_1_MISSING]
    out += capacity_answers(t) or [QUESTION_2_MISSING]
    return out + collapse_answers(t) + formation_answers(t) + scaling_answers(t)


def noisy(t: pd.DataFrame) -> pd.DataFrame:
    """Runs given a NEW random partner every epoch with an L1 target (shuffled, lambda_l1 > 0): the target is
    noise, and G averages it; bijectivity against the random map says whether it collapsed."""
    if t.empty or "pair/bijectivity" not in t:
        return t.iloc[:0]
    return t[(column_or(t, "pairing", "aligned") == "shuffled") & (column_or(t, "lambda_l1", 10.0) > 0)
             & (column_or(t, "scheme", "cyclelike") != "cyclegan")]


def collapse_table(t: pd.DataFrame) -> pd.DataFrame:
    """Per condition given a new random partner every epoch: its budget, bijectivity against a random map's,
    and the runs with fewer distinct targets than a random map (p < 0.05)."""
    rows = []
    for label, _, g in labelled(noisy(t), t):
        rows.append({"condition": label, "budget": budget_text(g),
                     "bijectivity": f"{g['pair/bijectivity'].mean():.2f} (random map "
                                    f"{chance_text('pair/bijectivity', g)})",
                     "fewer distinct targets (p < 0.05)": significant_text(g, "pair/bijectivity_p_collapse")})
    return pd.DataFrame(rows)


def collapse_answers(t: pd.DataFrame) -> list[str]:
    """One sentence for every condition given a new random partner every epoch: in how many did G collapse (most
    runs below a random map's distinct targets at p < 0.05)."""
    found = labelled(noisy(t), t)
    if not found:
        return []
    column = "pair/bijectivity_p_collapse"
    collapsed = [label for label, _, g in found if count_significant(g, column) > len(g) / 2]
    rest = [label for label, _, g in found if label not in collapsed]
    epochs = sorted({int(e) for _, _, g in found for e in g["epochs"].dropna()}) if "epochs" in t else []
    return [f"With a new random partner every epoch as its L1 target ({len(found)} condition"
            f"{'s' * (len(found) != 1)}, {', '.join(map(str, epochs)) or '?'} epochs), G collapsed onto fewer "
            f"targets than a random map in {len(collapsed)} of {len(found)}"
            + (f" ({', '.join(collapsed)})" if collapsed and len(found) > 1 else "")
            + (" (the pair is noise, and G averages it)" if collapsed else "")
            + (f"; in {', '.join(rest)} most runs stayed within a random map's range" if rest else "") + "."]


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
