"""Question 1 of the original report, what the pairs are based on, answered from one study's runs; and the
study's findings per condition.

Question 1 asks runs given NO pair (pairing=shuffled with lambda_l1 = 0 for the one G, or the cyclegan baseline):
does a one-to-one pairing form (against a uniformly random map), does it find the stored order's partners (the
truth where a study has one), is it the same for every seed, and does a candidate (a data-only predictor, or the
untrained map) explain it? analysis.claims decides each, on these images and across data sets. Question 2 (how
far one G reaches) is analysis.capacity's.

Each function takes the study's table (one row per completed trial, as analysis.runs loads it) and returns
sentences, a table or a figure; analysis.report places them.
"""

from __future__ import annotations

import pandas as pd

from . import claims
from .capacity import capacity_answers
from .claims import CANDIDATES, Claim
from .conditions import data_sets, labelled
from .dynamics import formation_answers, scaling_answers
from .evidence import (
    budget_text,
    chance_text,
    column_or,
    count_significant,
    reference_text,
    significant_text,
    stop_text,
    unpaired,
    who,
)
from .figures import plt, sns
from .predictors import PREDICTORS


def conditions_with_claims(u: pd.DataFrame, named_by: pd.DataFrame | None = None
                           ) -> list[tuple[str, dict, pd.DataFrame, dict[str, Claim]]]:
    """Each condition of `u`, labelled as in the whole study (`named_by`), with every claim the report makes of
    it (analysis.claims), corrected across these conditions."""
    found = labelled(u, named_by)
    said = claims.condition_claims([g for _, _, g in found])
    return [(label, c, g, s) for (label, c, g), s in zip(found, said, strict=True)]


Found = list[tuple[str, dict, pd.DataFrame, dict[str, Claim]]]


def predictor_table(u: pd.DataFrame, named_by: pd.DataFrame | None = None, found: Found | None = None
                    ) -> pd.DataFrame:
    """Per condition and candidate explanation (the data-only predictors and the initial map): mean agreement of
    the learned a with the candidate's partners, its chance level, where the chosen partner ranks on the
    candidate's cost, and the verdict on these images and across data sets (Holm over conditions x candidates).
    `found`: conditions_with_claims(u, named_by), where the caller has it already."""
    rows = []
    for label, _, g, said in found if found is not None else conditions_with_claims(u, named_by):
        for name in CANDIDATES:
            claim, agree, rank = said[f"explained_{name}"], f"pair/agree_{name}", f"pair/rank_{name}"
            if agree not in g or g[agree].isna().all():
                continue
            rows.append({"condition": label, "candidate": name, "agreement": round(g[agree].mean(), 3),
                         "chance": chance_text(agree, g),
                         "rank of the chosen partner": round(g[rank].mean(), 1) if rank in g and g[rank].notna().any()
                         else "-", "rank by chance": chance_text(rank if rank in g else "pair/partner_rank", g),
                         "runs": len(g), "on these images": str(claim.images), "across data sets": str(claim.sets)})
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
               "runs beating a random permutation alone": significant_text(g, "pair/forward_top1_pvalue")}
        for key, name in (("pair/cycle_top1", "cycle_top1"), ("pair/mutual", "mutual"),
                          ("pair/bijectivity", "bijectivity")):
            if key in g and g[key].notna().any():
                row[name] = f"{g[key].mean():.2f} (chance {chance_text(key, g)})"
        if "pair/bijectivity_p_collapse" in g:
            row["runs with fewer / more distinct than a random map alone"] = (
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
LU_SAYS = {"yes": "this study agrees", "no": "this study does not agree", "inconclusive": "this study is inconclusive",
           "not tested": "this study could not test it"}


def _scheme_maps(g: pd.DataFrame) -> str:
    scheme = g["scheme"].iloc[0] if "scheme" in g else "cyclelike"
    return "the one G's maps" if scheme == "cyclelike" else f"{scheme}'s maps"


def _images_clauses(said: dict[str, Claim]) -> list[str]:
    """What the maps did on these images, one clause per claim, each with its numbers or its power."""
    one, collapse = said["one_to_one"].images, said["collapse"].images
    if one.said == "yes":
        parts = [f"one-to-one maps formed (more distinct targets than a uniformly random map: {one.detail})"]
    elif collapse.said == "yes":
        parts = [f"the maps collapsed (fewer distinct targets than a uniformly random map: {collapse.detail})"]
    else:
        parts = [f"one-to-one against a uniformly random map {one}"]
    order = said["order"].images
    parts.append(f"they found the stored order's partners ({order.detail})" if order.said == "yes" else
                 f"the stored order's partners {order}")
    share = said["share"].images
    parts.append(f"the seeds of a data set chose the same partners ({share.detail})" if share.said == "yes" else
                 f"seed sharing {share}")
    found = [n for n in CANDIDATES if said[f"explained_{n}"].images.said == "yes"]
    tested = [n for n in CANDIDATES if said[f"explained_{n}"].images.tested]
    if found:
        parts.append(f"{', '.join(found)} explain{'s' * (len(found) == 1)} them")
    elif tested:
        power = _power(said[f"explained_{tested[0]}"].images)  # one design, one Holm family: the same for each
        parts.append(f"no candidate explanation detected ({len(tested)} tested; each {power})" if power else
                     f"no candidate explanation detected ({len(tested)} tested)")
    else:
        parts.append("no candidate explanation was logged")
    return parts


def _power(v) -> str:
    """ "power P at effect E" from a verdict's detail, or "" where it holds none."""
    power = [part for part in v.detail.split("; ") if part.startswith("power")]
    return power[-1] if power else ""


def _sets_clause(said: dict[str, Claim]) -> str:
    scope = {k: said[k].sets for k in ("one_to_one", "order", "share")}
    if all(v.said == "not tested" for v in scope.values()):
        return f"across data sets not tested ({scope['one_to_one'].detail or scope['order'].detail})"
    names = {"one_to_one": "one-to-one", "order": "the stored order's partners", "share": "seed sharing"}
    found = [n for n in CANDIDATES if said[f"explained_{n}"].sets.said == "yes"]
    parts = [f"{names[k]} {v.said} ({_power(v)})" if v.said == "not detected" and _power(v) else f"{names[k]} {v.said}"
             for k, v in scope.items()]
    tested = [n for n in CANDIDATES if said[f"explained_{n}"].sets.tested]
    parts.append(f"{', '.join(found)} explain{'s' * (len(found) == 1)} them" if found else
                 f"no candidate detected ({len(tested)} tested; each {_power(said[f'explained_{tested[0]}'].sets)})"
                 if tested else "no candidate tested")
    return "across data sets: " + ", ".join(parts) + " (the numbers and powers: the table below)"


def unpaired_sentence(label: str, condition: dict, g: pd.DataFrame, said: dict[str, Claim]) -> str:
    """One sentence of plain words per condition given no pair: on these images, across data sets, and Lu et
    al.'s verdict on this condition's scheme."""
    name = f"{label} ({who(condition, g)})" if label else who(condition, g)
    runs = f"{len(g)} run{'s' * (len(g) != 1)} on {data_sets(g)} data set{'s' * (data_sets(g) != 1)}"
    lu = said["lu"]
    return (f"Given no pair, {name}, {runs}: on these images, " + "; ".join(_images_clauses(said)) +
            f"; {_sets_clause(said)}. {LU_ET_AL}; of {_scheme_maps(g)} here, {LU_SAYS[lu.said]}"
            + (f" ({lu.detail})" if lu.detail else "") + ".")


def unpaired_answers(t: pd.DataFrame, found: Found | None = None) -> list[str]:
    """Question 1 in sentences, one per condition given no pair (see unpaired_sentence)."""
    u = unpaired(t)
    if u.empty or "pair/bijectivity" not in u:
        return []
    found = found if found is not None else conditions_with_claims(u, t)
    single = len(labelled(t)) == 1  # one condition in the whole study: no letter to tell it apart
    return [unpaired_sentence("" if single else label, c, g, said) for label, c, g, said in found]


def unpaired_table(u: pd.DataFrame, named_by: pd.DataFrame | None = None, found: Found | None = None
                   ) -> pd.DataFrame:
    """One row per condition given no pair: the evidence behind its sentence, budget and chance included, each
    claim's verdict with the p-value (or the power) that decided it, in each scope."""
    rows = []
    for label, _, g, said in found if found is not None else conditions_with_claims(u, named_by):
        row = {"condition": label, "budget": budget_text(g), "ended": stop_text(g), "runs": len(g),
               "data sets": data_sets(g),
               "forward_top1 (stored order)": f"{g['pair/forward_top1'].mean():.2f} (chance "
                                              f"{chance_text('pair/forward_top1', g)})",
               "bijectivity": f"{g['pair/bijectivity'].mean():.2f} (random map {chance_text('pair/bijectivity', g)})"}
        for key, title in (("one_to_one", "one-to-one"), ("collapse", "collapse"), ("order", "stored order"),
                           ("share", "seeds share")):
            row[f"{title}, on these images"] = str(said[key].images)
            row[f"{title}, across data sets"] = str(said[key].sets)
        row["Lu et al. agree"] = said["lu"].said
        agree = {n: g[f"pair/agree_{n}"].mean() for n in CANDIDATES if f"pair/agree_{n}" in g}
        if agree:
            best = max(agree, key=agree.get)
            row["closest candidate"] = f"{best} {agree[best]:.2f} (chance {chance_text('pair/agree_', g)})"
        rows.append(row)
    return pd.DataFrame(rows)


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
    """Per condition given a new random partner every epoch: its budget, bijectivity against a random map's, and
    the collapse claim (fewer distinct targets than one random map per data set), Holm over these conditions."""
    rows = []
    for label, _, g, said in conditions_with_claims(noisy(t), t):
        rows.append({"condition": label, "budget": budget_text(g),
                     "bijectivity": f"{g['pair/bijectivity'].mean():.2f} (random map "
                                    f"{chance_text('pair/bijectivity', g)})",
                     "collapse, on these images": str(said["collapse"].images),
                     "collapse, across data sets": str(said["collapse"].sets)})
    return pd.DataFrame(rows)


def collapse_answers(t: pd.DataFrame) -> list[str]:
    """One sentence for every condition given a new random partner every epoch: in which did G collapse (fewer
    distinct targets than a random map, on these images)."""
    found = conditions_with_claims(noisy(t), t)
    if not found:
        return []
    collapsed = [label for label, _, _, said in found if said["collapse"].images.said == "yes"]
    rest = [label for label, _, _, said in found if label not in collapsed]
    epochs = sorted({int(e) for _, _, g, _ in found for e in g["epochs"].dropna()}) if "epochs" in t else []
    return [f"With a new random partner every epoch as its L1 target ({len(found)} condition"
            f"{'s' * (len(found) != 1)}, {', '.join(map(str, epochs)) or '?'} epochs), G collapsed onto fewer "
            f"targets than a random map on these images in {len(collapsed)} of {len(found)}"
            + (f" ({', '.join(collapsed)})" if collapsed and len(found) > 1 else "")
            + (" (the pair is noise, and G averages it)" if collapsed else "")
            + (f"; in {', '.join(rest)} a collapse was not detected" if rest else "")
            + "".join(f" ({label}: {_power(said['collapse'].images)})" for label, _, _, said in found
                      if label in rest and _power(said["collapse"].images)) + "."]


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
