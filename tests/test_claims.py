"""Claims that can fail: each sentence of the report is a test with a measured error rate (analysis.claims,
analysis.calibration), and the defects found on main d18563f stay fixed, one test each."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import capacity, claims, dynamics, evidence, questions
from analysis.assignment import fixed_point_pvalue
from analysis.conditions import data_sets
from analysis.formation import formation, is_locked
from analysis.pairing import evaluate_pairing
from analysis.predictors import PREDICTORS, agreement_pvalue, chosen_rank
from analysis.scaling import fit_scaling
from cyclelike.config import ConfigError, RunConfig
from cyclelike.data import Domains
from cyclelike.fused import check_fusable
from cyclelike.train import EpochStats, TrainResult


def _unpaired(sets: int, seeds: int, maps=None, partners: bool = True, scheme: str = "cyclegan",
              **columns) -> pd.DataFrame:
    """A study given no pair as analysis.runs loads it: each run's final map, its untrained map and each data-only
    predictor's partners (one random permutation per data set), with the per-run columns main's rules read."""
    rng = np.random.default_rng(1)
    rows = []
    for d in range(sets):
        drawn = {name: rng.permutation(10) for name in PREDICTORS}
        for s in range(seeds):
            a = rng.integers(0, 10, 10) if maps is None else np.asarray(maps(d, s))
            k = int((a == np.arange(10)).sum())
            rows.append({"pairing": "shuffled", "scheme": scheme, "lambda_l1": 0.0, "n_images": 10, "epochs": 40,
                         "data_seed": d, "seed": s, "tags.data_hash": f"h{d}",
                         "pair/bijectivity": len(set(a.tolist())) / 10, "pair/forward_top1": k / 10,
                         "pair/forward_top1_pvalue": fixed_point_pvalue(k, 10), "pair/bijectivity_p_permutation": 0.5,
                         "pair/bijectivity_p_collapse": 0.5, "assignment": a, "initial": rng.integers(0, 10, 10),
                         "partners": drawn if partners else None,
                         **{f"pair/agree_{n}": 0.1 for n in PREDICTORS},
                         **{f"pair/agree_{n}_pvalue": 0.6 for n in PREDICTORS}, **columns})
    return pd.DataFrame(rows)


def _hits(k: int, rng: np.random.Generator) -> np.ndarray:
    """A map that takes its true partner (the stored order) in k rows and a wrong y in the others."""
    a = np.arange(10)
    for i in rng.choice(10, 10 - k, replace=False):
        a[i] = rng.choice([j for j in range(10) if j != i])
    return a


def test_lu_never_agrees_of_maps_that_collapsed_and_names_the_scheme_it_speaks_of():
    """main said "this study agrees" of a one G whose maps collapsed: two seeds on one y scored kappa 0 with no
    spread, and the sentence quoted CycleGAN's map whatever the scheme."""
    for scheme, whose in (("cyclelike", "the one G's maps"), ("cyclegan", "cyclegan's maps")):
        text = questions.unpaired_answers(_unpaired(4, 2, maps=lambda d, s: np.full(10, 3), scheme=scheme))[0]
        assert "this study agrees" not in text and "the maps collapsed" in text
        assert f"of {whose} here, this study could not test it (every seed pair collapsed onto one y" in text


def test_a_modest_effect_over_three_data_sets_of_three_seeds_is_found():
    """3 of 10 true partners in every run (p = 0.08 each alone): main's rule, every seed at p < 0.05 in enough data
    sets, said they did not find them; the sum over seeds and data sets does."""
    rng = np.random.default_rng(2)
    text = questions.unpaired_answers(_unpaired(3, 3, maps=lambda d, s: _hits(3, rng)))[0]
    assert "they found the stored order's partners (27 of 90 rows, p = " in text


def test_one_data_set_gets_an_answer_on_its_own_images():
    """A user's own two folders are one data set: main said "not tested" of every claim, even at 10 of 10."""
    g = _unpaired(1, 3, maps=lambda d, s: np.arange(10))
    text = questions.unpaired_answers(g)[0]
    assert "on these images, one-to-one maps formed" in text and "they found the stored order's partners" in text
    assert "across data sets not tested (1 data set; this scope needs 3 or more)" in text
    said = claims.condition_claims([g])[0]
    assert said["order"].images.said == "yes" and said["order"].sets.said == "not tested"


def test_a_test_that_ran_without_a_verdict_says_not_detected_with_its_power():
    """main printed "no more one-to-one than a random map", "shared no more partners" and "none of 8 candidates
    explains them": absence stated as fact, whatever the power."""
    text = questions.unpaired_answers(_unpaired(3, 2))[0]
    for fact in ("no more one-to-one", "shared no more partners", "none of"):
        assert fact not in text
    assert "one-to-one against a uniformly random map not detected (" in text and "; power " in text
    assert "seed sharing not detected (kappa " in text
    assert "no candidate explanation detected (8 tested; each power" in text


def test_lu_agrees_only_of_maps_whose_one_to_one_sentence_says_yes_after_holm(monkeypatch):
    """The Lu rule read one-to-one's raw p while its sentence printed the Holm-corrected one: a study could say
    "one-to-one ... not detected" and "this study agrees (... one-to-one ...)" of the same maps."""
    monkeypatch.setattr(claims.inference, "lu_codes", lambda *args: np.array(["yes"]))  # the rule's other gates
    said = claims.condition_claims([_unpaired(3, 2)])[0]  # random maps: one-to-one not detected
    assert said["one_to_one"].images.said == "not detected"
    assert said["lu"].said == "inconclusive" and "one-to-one not detected" in said["lu"].detail


def test_primary_claims_are_holm_corrected_across_conditions():
    """unpaired.toml's two conditions each tested at 0.05: about 9% family-wise error on main."""
    rng = np.random.default_rng(4)
    one = _unpaired(3, 2, maps=lambda d, s: _hits(2, rng))
    alone = claims.condition_claims([one])[0]["order"].images.p
    both = claims.condition_claims([one, one.assign(scheme="cyclelike")])
    # the two conditions' Monte Carlo p differ a little (their own draws): Holm doubles the smaller of them
    assert all(c["order"].images.p >= 1.6 * alone for c in both)
    assert "after Holm over 2 conditions" in both[0]["order"].images.detail


def test_n90_is_where_every_smaller_n_held_not_the_largest_that_passed():
    """main took the largest N whose mean passed: 0.55 at N = 10 and 1.0 at N = 20 gave N90 = 20."""
    assert claims.n90(pd.Series({10: 0.55, 20: 1.0})) is None
    assert claims.n90(pd.Series({10: 1.0, 20: 0.95, 40: 0.6, 80: 0.92})) == 20
    rows = [{"pairing": "fixed", "arch": "unet", "lambda_l1": 10.0, "epochs": 40, "n_images": n, "seed": 0,
             "pair/forward_top1": v} for n, v in ((10, 0.55), (20, 1.0))]
    row = capacity.n90_table(pd.DataFrame(rows)).iloc[0]
    assert row["N90"] == "-" and row["top1 per N"] == "10: 0.55, 20: 1.00"  # the later pass is shown, not taken


def test_without_partners_no_sentence_says_the_pairs_are_unexplained():
    """main said "nor explained by a data-only predictor" for a study that had logged none."""
    g = _unpaired(3, 2, partners=False)
    said = claims.condition_claims([g])[0]
    assert said["explained_pixel"].images.said == "not tested" and "no run logged its partners" in str(
        said["explained_pixel"].images)
    text = questions.unpaired_answers(g)[0]
    assert "nor explained" not in text and "no candidate explanation detected (1 tested" in text
    assert "this study agrees" not in text and "not every data-only predictor was logged" in text
    assert questions.unpaired_answers(g.drop(columns=["initial"]))[0].count("no candidate explanation was logged")


def test_lu_agrees_only_when_sharing_could_have_been_seen_and_disagrees_when_seeds_share():
    rng = np.random.default_rng(3)
    perms = [rng.permutation(10) for _ in range(6)]
    shared = claims.condition_claims([_unpaired(6, 2, maps=lambda d, s: perms[d])])[0]
    assert shared["lu"].said == "no" and shared["share"].images.said == "yes"
    random = _unpaired(6, 2, maps=lambda d, s: np.random.default_rng(100 + 10 * d + s).permutation(10))
    said = claims.condition_claims([random])[0]
    assert said["share"].images.said == "not detected" and said["one_to_one"].images.said == "yes"
    assert said["lu"].said == "yes" and "the critical value" in said["lu"].detail
    two = claims.condition_claims([random[random["data_seed"] < 2]])[0]["lu"]
    assert two.said == "inconclusive" and "agreeing needs 3" in two.detail


def test_seeds_collapsed_onto_one_y_are_left_out_of_kappa():
    """Their marginals force every agreement: kappa is undefined there, not 0 (main averaged in a 0)."""
    said = claims.condition_claims([_unpaired(3, 2, maps=lambda d, s: np.full(10, 3))])[0]
    assert said["share"].images.said == "not tested" and said["lu"].said != "yes"
    mixed = _unpaired(3, 2, maps=lambda d, s: np.full(10, 3) if d < 2 else np.arange(10))
    assert claims.condition_claims([mixed])[0]["share"].images.detail.startswith("kappa 1.00,")


def test_data_sets_are_counted_by_their_images_not_their_data_seed():
    """A pool of exactly N + n_holdout images gives every data_seed the same training images."""
    x, y = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    one = Domains(x, y, x[:0], y[:0], "shuffled", torch.arange(4))
    again = Domains(x.clone(), y.clone(), x[:0], y[:0], "shuffled", torch.arange(4))
    assert one.content_hash() == again.content_hash() != Domains(y, x, x[:0], y[:0], "aligned",
                                                                  torch.arange(4)).content_hash()
    t = pd.DataFrame({"data_seed": [0, 0, 1, 1], "seed": [0, 1, 0, 1], "tags.data_hash": [one.content_hash()] * 4})
    assert data_sets(t) == 1
    assert data_sets(t.drop(columns="tags.data_hash")) == 2  # runs logged before the hash: their data seeds
    # edge maps and grey faces against the same colour faces: one shared side, one data set
    shared = pd.DataFrame({"data_seed": [0, 0], "tags.data_hash": ["edges+faces", "grey+faces"],
                           "tags.data_hash.x": ["edges", "grey"], "tags.data_hash.y": ["faces", "faces"]})
    assert data_sets(shared) == 1 and data_sets(shared.assign(**{"tags.data_hash.y": ["a", "b"]})) == 2


def test_the_untrained_map_is_a_candidate_scored_against_its_own_marginals():
    a = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 0])
    assert agreement_pvalue(a, a) < 0.01
    collapsed = np.full(10, 2)
    assert agreement_pvalue(collapsed, collapsed) == 1.0  # both on one y: agreement forced by the marginals


def test_locked_holds_over_frequent_evaluations():
    """main asked the last patience + 1 evaluations to span patience_epochs: with eval_every 2, never."""
    epochs = list(range(0, 42, 2))
    fixed, other = np.arange(4), np.array([1, 0, 2, 3])
    maps = [other if e < 12 else fixed for e in epochs]
    assert is_locked(epochs, maps, [1.0] * len(epochs), patience=3, patience_epochs=20, need_top1=True)
    assert not is_locked(epochs[:15], maps[:15], [1.0] * 15, patience=3, patience_epochs=20, need_top1=True)


def test_an_unpaired_run_locks_only_when_both_directions_hold():
    epochs, a = [10, 20, 30, 40], [np.arange(4)] * 4
    b_moving = [np.arange(4), np.array([1, 0, 2, 3]), np.arange(4), np.array([1, 0, 2, 3])]
    assert is_locked(epochs, a, [0.0] * 4, 2, 20, need_top1=False)
    assert not is_locked(epochs, a, [0.0] * 4, 2, 20, need_top1=False, backward=b_moving)


def test_a_locked_run_on_a_collapse_says_so():
    g = pd.DataFrame({"stop": ["locked"] * 2, "tags.stop/reason": ["locked"] * 2, "stop/epoch": [200, 300],
                      "pair/bijectivity_p_collapse": [0.001, 0.4]})
    assert evidence.stop_text(g).startswith("1 of 2 runs locked (median epoch 300), 1 stopped on a collapse")
    assert "1 stopped on a collapse" in evidence.stop_text(g.assign(**{"tags.stop/reason": ["collapsed", "locked"],
                                                                       "pair/bijectivity_p_collapse": [0.5, 0.5]}))


def test_formation_epochs_are_intervals_between_evaluations():
    """main printed "at the first evaluation they had" for runs that reached 0.9 at their second."""
    formed = formation([0, 10, 20], [np.zeros(4, int), np.arange(4), np.arange(4)], [0.0, 0.8, 1.0])
    assert (formed.epochs_to_90_after, formed.epochs_to_90) == (10.0, 20.0)
    g = pd.DataFrame([{"pairing": "aligned", "lambda_l1": 10.0, "n_images": 4, "seed": s,
                       "pair/epochs_to_90": 20.0, "pair/epochs_to_90_after": 10.0} for s in (0, 1)])
    text = dynamics.formation_answers(g)[0]
    assert "2 of 2 runs reached forward_top1 >= 0.9, the last by epoch 20" in text
    assert "first evaluation they had" not in text
    assert dynamics.formation_intervals(g).iloc[0]["first reached (earliest run)"] == "(10, 20]"


def test_locked_epoch_is_the_whole_maps_so_it_never_precedes_reaching_0_9():
    """main's median row could lock at epoch 10 while forward_top1 still changed and reached 0.9 at 20."""
    maps = [np.array([0, 1, 3, 2]), np.array([0, 1, 2, 2]), np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3])]
    formed = formation([10, 20, 30, 40], maps, [0.5, 0.75, 1.0, 1.0])
    assert formed.locked_epoch == 30 and formed.epochs_to_90 <= formed.locked_epoch


def test_seconds_to_lock_count_each_seeds_share_and_the_epochs_before_a_resume():
    history = [EpochStats(e, 4.0, {}, seeds=4) for e in range(1, 6)] + [EpochStats(e, 1.5, {}) for e in range(6, 9)]
    result = TrainResult(RunConfig(), history, {}, None, "cpu", resumed_from_epoch=5)
    assert result.seed_seconds == pytest.approx(5 * 1.0 + 3 * 1.5)
    # the report reads them, not the seconds trained after the resume (time/train_s)
    g = pd.DataFrame([{"n_images": n, "tags.stop/reason": "locked", "stop/g_steps": 80, "time/train_s": 4.5,
                       "time/seed_train_s": 9.5, "budget/g_steps": 800} for n in (4, 8)])
    _, table = dynamics.steps_to_lock(g)
    assert (table["median seconds to lock"] == 9.5).all()


def test_a_fit_through_two_n_is_not_reliable_however_many_runs_sit_there():
    fit = fit_scaling(np.array([5, 5, 10, 10]), np.array([0.5, 0.52, 1.0, 1.01]))
    assert fit.distinct_n == 2 and fit.verdict().startswith("no: 2 distinct N")


def test_timing_series_keep_compute_apart_and_leave_contended_runs_out():
    t = pd.DataFrame([{"n_images": n, "threads": k, "time/sec_per_epoch": 0.1 * n / k,
                       "tags.timing.workers": w} for n in (5, 10, 20) for k in (1, 2) for w in ("1", "2")])
    assert dynamics.scaling_series(t).nunique() == 2
    fitted, caveat = dynamics.fitted_runs(t)
    assert (fitted["tags.timing.workers"] == "1").all() and "left out of the fits" in caveat
    text = dynamics.scaling_answers(t)[0]
    assert "threads=1" in text and "threads=2" in text and "3 N" in text


def test_timing_series_split_by_how_a_switch_was_executed_not_how_it_was_asked():
    """auto that resolved to on times the same computation as on; an older run logged the switch as a bool param."""
    t = pd.DataFrame([{"fused_upsample": "auto", "tags.resolved.fused_upsample": "on"},
                      {"fused_upsample": "on", "tags.resolved.fused_upsample": "on"},
                      {"fused_upsample": "True"},
                      {"fused_upsample": "auto", "tags.resolved.fused_upsample": "off"}])
    series = dynamics.scaling_series(t)
    assert series.iloc[0] == series.iloc[1] == series.iloc[2] == "fused_upsample=on"
    assert series.iloc[3] == "fused_upsample=off"


def test_fused_seeds_refuse_dropout():
    base = RunConfig(image_size=16, n_images=4, dropout=0.5)
    with pytest.raises(ConfigError, match="dropout"):
        check_fusable([base, base.replace(seed=1)])


def test_a_fused_bf16_seed_computes_in_bf16_or_is_refused():
    """A fused seed must compute what it computes alone. Alone, bf16 autocast runs G's convolutions (its last
    layer included) in bf16; under vmap on a CPU, torch leaves them in fp32, so fusing is refused there."""
    import torch

    from cyclelike.fused import StackedNet
    from cyclelike.nets import define_G

    configs = [RunConfig(image_size=16, n_images=4, base_filters=4, precision="bf16", device="cpu", seed=s)
               for s in (0, 1)]
    try:
        check_fusable(configs)
    except ConfigError as refused:
        assert "vmap" in str(refused) and "precision=fp32" in str(refused)
        return
    G = StackedNet([define_G(c) for c in configs])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert G(torch.zeros(2, 1, 3, 16, 16)).dtype == torch.bfloat16


def test_fused_seeds_execute_one_way():
    base = RunConfig(image_size=16, n_images=4)
    with pytest.raises(ConfigError, match="differ in fused_adam"):
        check_fusable([base, base.replace(seed=1, fused_adam="off")])


def test_one_vocabulary_for_given_a_pair_given_none_and_a_new_partner_every_epoch():
    """main called shuffled runs with an L1 target "no pair is given" in one section and given one in another."""
    noisy = pd.DataFrame({"pairing": ["shuffled"], "lambda_l1": [10.0], "scheme": ["cyclelike"]})
    assert evidence.reference_text(noisy) == "the stored order (given a new random partner every epoch)"
    assert evidence.unpaired(noisy).empty
    none = noisy.assign(lambda_l1=0.0)
    assert evidence.reference_text(none) == "the stored order (given no pair)"


def test_figures_show_every_value_of_kappa_and_copy_excess():
    from analysis.study_sections import plot_metric

    t = pd.DataFrame({"pairing": ["aligned", "fixed"] * 2, "n_images": [10] * 4,
                      "pair/seed_kappa": [-0.32, 0.1, -0.2, 0.3], "mem/holdout_copy_excess": [-0.95, -0.6, 0.0, 0.1]})
    for metric, low in (("pair/seed_kappa", -0.32), ("mem/holdout_copy_excess", -0.95)):
        fig = plot_metric(t, metric, ["pairing"])
        assert fig.axes[0].get_ylim()[0] < low
        assert not math.isnan(fig.axes[0].get_ylim()[1])


def _partners(x: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
    """Each predictor's partners as a trial records them (PairingResult.partners, what the claims read)."""
    return evaluate_pairing(lambda im: im, None, x, y).partners


def test_the_new_predictors_recover_what_they_measure():
    """Silhouette (where the subject is), orientation (which way it points) and brightness (how light), each on
    images that differ only in that, with Y a recoloured copy of X in another order."""
    n, size = 6, 32
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    blobs = torch.stack([((xx - 5 - 4 * i) ** 2 + (yy - 16) ** 2 < 16).float() for i in range(n)])
    angles = torch.linspace(0, 2.5, n)
    bars = torch.stack([(((xx - 16) * torch.cos(t) + (yy - 16) * torch.sin(t)).abs() < 2).float()
                        * (((xx - 16) ** 2 + (yy - 16) ** 2) < 100) for t in angles])
    for name, shapes in (("silhouette", blobs), ("orientation", bars)):
        x = (shapes * 2 - 1)[:, None].expand(-1, 3, -1, -1)
        y = (-(shapes * 2 - 1) * 0.8)[:, None].expand(-1, 3, -1, -1)[order]  # another colour, another order
        assert (_partners(x, y)[name] == torch.argsort(order).numpy()).all(), name
    levels = torch.linspace(-0.8, 0.8, n)[:, None, None, None].expand(-1, 3, size, size)
    y = levels[order] + 0.01 * torch.randn(n, 3, size, size)
    assert (_partners(levels, y)["brightness"] == torch.argsort(order).numpy()).all()


def test_the_chosen_partners_rank_on_a_predictors_cost():
    cost = np.array([[0.1, 0.2, 0.3], [0.3, 0.1, 0.2], [0.2, 0.3, 0.1]])
    assert chosen_rank(np.array([0, 1, 2]), cost) == 1.0
    assert chosen_rank(np.array([2, 0, 1]), cost) == 3.0


def test_the_first_screen_says_each_clause_once_per_question_not_once_per_condition():
    """main repeated "... all 2 runs trained their whole budget (stop = off)" once per architecture and width."""
    rows = [{"pairing": "fixed", "scheme": "cyclelike", "lambda_l1": 10.0, "epochs": 40, "arch": a, "base_filters": w,
             "n_images": n, "seed": s, "pair/forward_top1": 1.0, "model/generator_params": 1e6}
            for a in ("unet", "encdec") for w in (8, 16, 32, 64) for n in (10, 20) for s in (0, 1)]
    sentence = capacity.capacity_answers(pd.DataFrame(rows))
    assert len(sentence) == 1
    assert sentence[0].count("trained their whole budget") == 1 and sentence[0].count("N90") == 8


def test_one_data_set_whose_seeds_share_their_map_says_so_in_the_sentence_and_the_table():
    """The sentence said "not tested here" while its table said Lu et al. disagree (p = 0.002)."""
    perm = np.random.default_rng(5).permutation(10)
    g = _unpaired(1, 3, maps=lambda d, s: perm, **{"pair/agree_pixel_pvalue": 0.6})
    text = questions.unpaired_answers(g)[0]
    assert "this study does not agree (the seeds of a data set share their partners)" in text
    assert questions.unpaired_table(g).iloc[0]["Lu et al. agree"] == "no"


def test_one_letter_names_one_condition_in_every_section():
    given = _unpaired(2, 2).assign(pairing="aligned", scheme="cyclelike", lambda_l1=10.0)
    t = pd.concat([given, _unpaired(2, 2)], ignore_index=True)
    letters = {row["condition"]: row["forward_top1 against"] for _, row in questions.findings_table(t).iterrows()}
    unpaired_letter = questions.predictor_table(evidence.unpaired(t).assign(**{"pair/agree_pixel": 0.1,
                                                                               "pair/agree_pixel_pvalue": 0.5}),
                                                t)["condition"].iloc[0]
    assert letters[unpaired_letter] == "stored order (given no pair)"


def test_conditions_given_a_noisy_pair_are_one_sentence_and_one_table():
    """main wrote one near-identical bijectivity paragraph per condition (eight in the default study)."""
    rng = np.random.default_rng(6)
    rows = [{"pairing": "shuffled", "scheme": "cyclelike", "lambda_l1": 10.0, "epochs": 60, "arch": a, "n_images": n,
             "seed": s, "pair/bijectivity": 0.1, "tags.data_hash": f"{n}",
             "assignment": np.zeros(n, int) if a == "encdec" else rng.permutation(n)}
            for a in ("encdec", "unet") for n in (5, 10) for s in (0, 1)]
    t = pd.DataFrame(rows)
    sentences = questions.collapse_answers(t)
    assert len(sentences) == 1 and "collapsed onto fewer targets than a random map on these images in 2 of 4 (A, C)" \
        in sentences[0]
    assert len(questions.collapse_table(t)) == 4


def test_a_capacity_study_without_held_out_images_draws_its_figure():
    """n_holdout = 0 left an empty copy-excess panel on a log axis: "Data cannot be log-scaled", and the report
    exited 1 on an ordinary study."""
    import io

    rows = [{"pairing": p, "scheme": "cyclelike", "lambda_l1": 10.0, "epochs": 4, "arch": "unet", "n_images": n,
             "seed": s, "pair/forward_top1": 0.5, "pair/mutual": 0.4, "mem/holdout_copy_excess": float("nan")}
            for p in ("aligned", "fixed") for n in (4, 8) for s in (0, 1)]
    fig = capacity.capacity_figure(evidence.given(pd.DataFrame(rows)))
    fig.savefig(io.BytesIO(), format="png")
    assert [ax.get_title() for ax in fig.axes] == ["pair/forward_top1", "pair/mutual"]


def test_the_words_say_what_held_and_how_long_it_took():
    """main: "held forward_top1 >= 0.9 at every N up to N90 ... N90 below every N tried", and "Wall time 0.0 min"
    for a study of 20 s."""
    from analysis.study_sections import duration_text

    rows = [{"pairing": "fixed", "scheme": "cyclelike", "lambda_l1": 10.0, "epochs": 40, "arch": a, "n_images": n,
             "seed": 0, "pair/forward_top1": v} for a, v in (("unet", 1.0), ("encdec", 0.55)) for n in (10, 20)]
    text = capacity.capacity_answers(pd.DataFrame(rows))[0]
    assert "up to N90" not in text and "below every N tried" not in text
    assert "encdec at no N tried (the smallest, N = 10, reached 0.55)" in text
    assert "unet at every N tried, up to N = 20 (N90 at least that)" in text
    assert (duration_text(20.0), duration_text(258.0), duration_text(7560.0)) == ("20 s", "4.3 min", "2.1 h")
