import numpy as np
import pytest
import torch

from analysis.assignment import NO_MATCH, assignment, chance_level, distinct_values_null, fixed_point_pvalue
from analysis.pairing import (
    bijectivity,
    evaluate_pairing,
    hungarian_agreement,
    margin,
    mutual,
    partner_rank,
    seed_agreement,
    top1,
)

N = 5


def matrix_for(perm, near=0.1, far=1.0):
    """D with D[i, perm[i]] = near and everything else far: G maps x_i onto y_perm[i]."""
    D = np.full((N, N), far)
    D[np.arange(N), perm] = near
    return D


def test_identity_permutation_is_perfect():
    D = matrix_for(np.arange(N))
    assert top1(D, np.arange(N)).value == 1.0
    assert bijectivity(D.argmin(1), N).value == 1.0
    assert partner_rank(D, np.arange(N)) == 1.0
    assert hungarian_agreement(D) == 1.0
    assert margin(D) == pytest.approx((1.0 - 0.1) / 0.1)


def test_known_permutation_against_aligned_and_against_itself():
    perm = np.array([2, 0, 1, 4, 3])
    D = matrix_for(perm)
    assert top1(D, perm).value == 1.0
    assert top1(D, np.arange(N)).value == 0.0  # none of them is the aligned partner
    a = D.argmin(1)
    b = matrix_for(np.argsort(perm)).argmin(1)  # the way back undoes the permutation
    assert mutual(a, b).value == 1.0
    assert mutual(a, np.arange(N)).value == 0.0
    assert partner_rank(D, np.arange(N)) == pytest.approx((2 + 3 + 4 + 5) / 4)  # far entries tie at ranks 2..5


def test_collapse_onto_one_target():
    D = np.tile(np.array([0.1, 0.5, 0.6, 0.7, 0.8]), (N, 1))
    a = D.argmin(1)
    assert bijectivity(a, N).value == pytest.approx(1 / N)
    assert top1(D, np.arange(N)).k == 1  # only x_0, whose partner happens to be the collapse target
    assert hungarian_agreement(D) == pytest.approx(1 / N)


def test_ties_never_score():
    D = np.ones((N, N))
    assert top1(D, np.arange(N)).k == 0
    assert partner_rank(D, np.arange(N)) == pytest.approx((N + 1) / 2)  # chance level
    D = matrix_for(np.arange(N))
    D[0, 1] = D[0, 0]  # x_0 is as near to y_1 as to its partner
    assert top1(D, np.arange(N)).k == N - 1


def test_share_has_chance_and_exact_interval():
    s = top1(matrix_for(np.arange(N)), np.arange(N))
    assert (s.k, s.n, s.chance) == (N, N, 1 / N)
    assert s.high == 1.0 and 0.45 < s.low < 0.6  # Clopper-Pearson lower bound for 5/5 is 0.478


def test_bijectivity_is_tested_against_the_random_map_null():
    """Not a binomial share: a permutation of 10 is what a random map gives with probability 10!/10^10."""
    pmf = distinct_values_null(10)
    assert sum(pmf) == pytest.approx(1.0)
    assert sum(k * p for k, p in enumerate(pmf)) / 10 == pytest.approx(chance_level("pair/bijectivity", 10))
    assert pmf[10] == pytest.approx(3628800 / 10**10)
    perfect = bijectivity(np.arange(10), 10)
    assert perfect.value == 1.0 and perfect.p_permutation == pytest.approx(3.6288e-4) and perfect.p_collapse == 1.0
    collapsed = bijectivity(np.zeros(10, dtype=int), 10)
    assert collapsed.p_collapse == pytest.approx(10 / 10**10) and collapsed.p_permutation == 1.0
    typical = bijectivity(np.array([0, 0, 1, 2, 3, 3, 4, 5, 6, 6]), 10)  # 7 distinct: what a random map does
    assert typical.p_collapse > 0.05 and typical.p_permutation > 0.05
    assert typical.null_low <= 0.65 <= typical.null_high
    # simulated random maps land in the central 95% range about 95% of the time
    rng = np.random.default_rng(0)
    inside = np.mean([perfect.null_low <= len(np.unique(rng.integers(0, 10, 10))) / 10 <= perfect.null_high
                      for _ in range(4000)])
    assert inside >= 0.95


def test_one_tie_rule_for_every_assignment_metric():
    """A row whose minimum is shared has no nearest neighbour: it scores in no share and adds no target."""
    D = matrix_for(np.arange(N))
    D[0, 1] = D[0, 0]
    a = assignment(D)
    assert a[0] == NO_MATCH and (a[1:] == np.arange(1, N)).all()
    assert top1(D, np.arange(N)).k == N - 1
    assert bijectivity(a, N).k == N - 1
    assert hungarian_agreement(D) == pytest.approx((N - 1) / N)
    assert mutual(a, np.arange(N)).k == N - 1
    tied = np.full(N, NO_MATCH)
    assert seed_agreement(tied, tied)["pair/seed_agreement"] == 0.0  # two ties are no agreement


def test_fixed_point_pvalues_match_the_design():
    assert fixed_point_pvalue(0, 10) == pytest.approx(1.0)
    assert fixed_point_pvalue(3, 10) == pytest.approx(0.080, abs=0.0005)
    assert fixed_point_pvalue(5, 10) == pytest.approx(0.0037, abs=0.00005)
    assert fixed_point_pvalue(10, 10) == pytest.approx(1 / 3628800)


def test_seed_agreement():
    a1 = np.array([0, 1, 2, 3, 4])
    out = seed_agreement(a1, np.array([0, 1, 2, 4, 3]))
    assert out["pair/seed_agreement"] == pytest.approx(0.6)
    assert out["pair/seed_kappa"] == pytest.approx((0.6 - 0.2) / 0.8)  # permutations: 1/N by chance
    with pytest.raises(ValueError):
        seed_agreement(a1, a1[:3])


def test_evaluate_pairing_with_a_known_generator():
    torch.manual_seed(0)
    x, y = torch.rand(N, 3, 8, 8) * 2 - 1, torch.rand(N, 3, 8, 8) * 2 - 1
    pi = torch.tensor([3, 1, 4, 0, 2])

    def G(images):  # a perfect one-generator translator for pairing pi, by lookup
        out = []
        for im in images:
            dx = (x - im).abs().flatten(1).mean(1)
            dy = (y - im).abs().flatten(1).mean(1)
            out.append(y[pi[dx.argmin()]] if dx.min() <= dy.min() else x[torch.argsort(pi)[dy.argmin()]])
        return torch.stack(out)

    holdout = torch.rand(3, 3, 8, 8) * 2 - 1
    result = evaluate_pairing(G, G, x, y, pi, x_holdout=holdout)
    m = result.metrics
    for key in ("pair/forward_top1", "pair/backward_top1", "pair/bijectivity", "pair/mutual", "pair/cycle_top1",
                "pair/hungarian_agreement"):
        assert m[key] == 1.0, key
    assert m["pair/partner_rank"] == 1.0
    assert result.statistics["pair/forward_top1_pvalue"] == pytest.approx(1 / 120)
    assert not any(k.endswith("_pvalue") for k in m)  # one value a run: a summary, never a charted metric
    assert m["mem/holdout_copy_rate"] == 1.0  # it outputs a training target whatever it is given
    assert result.statistics["pair/partner_rank_chance"] == (N + 1) / 2
    assert result.statistics["pair/bijectivity_p_permutation"] == pytest.approx(120 / 5**5)
    against_aligned = evaluate_pairing(G, G, x, y, None)
    assert against_aligned.metrics["pair/forward_top1"] == pytest.approx(1 / N)  # only pi(1) = 1
    one_way = evaluate_pairing(G, None, x, y, pi)
    assert np.isnan(one_way.metrics["pair/cycle_top1"]) and one_way.metrics["pair/forward_top1"] == 1.0


def test_steganography_passes_the_cycle_but_not_the_lowpass_cycle():
    """A generator that hides the source index in invisible high-frequency detail (Chu et al. 2017) gets
    cycle_top1 = 1; blurring G(x) before the way back destroys the code, so the low-pass cycle is at chance."""
    n, size = 8, 16
    torch.manual_seed(0)
    x = torch.rand(n, 3, size, size) * 2 - 1
    y = torch.rand(n, 3, size, size).mul(2).sub(1)
    y = torch.nn.functional.avg_pool2d(y, 4).repeat_interleave(4, -1).repeat_interleave(4, -2)  # smooth targets
    checker = ((torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 * 2 - 1).float()
    stripe = size // n  # code i: a faint checkerboard on column stripe i

    def hide(i: int) -> torch.Tensor:
        code = torch.zeros(size, size)
        code[:, i * stripe : (i + 1) * stripe] = 0.02 * checker[:, i * stripe : (i + 1) * stripe]
        return code

    def G(images):
        out = []
        for im in images:
            source = (x - im).abs().flatten(1).mean(1)
            if source.min() < 1e-6:  # an x: hide its index in the image of an unrelated y
                i = int(source.argmin())
                out.append(y[(i + 3) % n] + hide(i))
            else:  # a y-like image: read the code back, or give x_0 when there is none
                strength = torch.stack([(im.mean(0) * hide(i)).sum() for i in range(n)])
                out.append(x[int(strength.argmax())] if strength.max() > 1e-3 else x[0])
        return torch.stack(out)

    m = evaluate_pairing(G, G, x, y, np.arange(n)).metrics
    assert m["pair/cycle_top1"] == 1.0
    assert m["pair/cycle_top1_lowpass"] <= 2 / n


def test_colour_predictor_finds_colour_shifted_partners():
    """y_j is x_pi(j) with every colour shifted: the colour predictor pairs them all, and a G that learned
    exactly that pairing agrees with it on every image."""
    from analysis.predictors import predictor_agreement

    n = 6
    rng = np.random.default_rng(0)
    base = torch.tensor(rng.uniform(-0.6, 0.6, (n, 3)), dtype=torch.float32)
    x = base[:, :, None, None] + 0.05 * torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pi = np.array([2, 0, 1, 5, 3, 4])
    y = torch.roll(x[pi], shifts=5, dims=-1) + 0.1  # the same colours, shifted, in another layout
    partners = evaluate_pairing(lambda im: im, None, x, y).partners  # what a trial records
    learned = np.argsort(pi)  # a(i): the y that holds x_i's colours
    assert (partners["colour"] == learned).all()
    agree = predictor_agreement(learned, partners)
    assert agree["pair/agree_colour"].value == 1.0 and agree["pair/agree_colour"].chance == 1 / n
    assert predictor_agreement(np.roll(learned, 1), partners)["pair/agree_colour"].value == 0.0


def test_formation_on_a_hand_made_history():
    from analysis.formation import formation

    epochs = [10, 20, 30, 40]
    a = [np.array([1, 1, 0, 3]), np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3]), np.array([0, 1, 3, 2])]
    top1 = [0.25, 1.0, 1.0, 0.5]
    seconds = {e: 0.5 for e in range(1, 41)}
    f = formation(epochs, a, top1, seconds)
    assert f.epochs_to_90 == 20 and f.seconds_to_pairs == 10.0
    assert f.flips == 2 + 2  # x_0 and x_2 change at epoch 20, x_2 and x_3 at epoch 40
    # x_0: 20, x_1: 10; x_2 and x_3 changed at the last evaluation, so they are not locked (right-censored):
    # the median falls between a locked and an unlocked row, and the run has no locked_epoch
    assert np.isnan(f.locked_epoch) and f.locked_rows == 2
    # the whole map stays from epoch 20 (x_1 and x_3 alone from 10)
    assert formation(epochs[:3], a[:3], top1[:3], seconds).locked_epoch == 20
    never = formation(epochs, a, [0.1] * 4, seconds)
    assert np.isnan(never.epochs_to_90) and np.isnan(never.seconds_to_pairs)
