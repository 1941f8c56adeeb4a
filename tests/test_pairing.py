import numpy as np
import pytest
import torch

from analysis.pairing import (
    bijectivity,
    evaluate_pairing,
    fixed_point_pvalue,
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
    assert bijectivity(np.arange(N), N).chance == pytest.approx(1 - (1 - 1 / N) ** N)


def test_fixed_point_pvalues_match_the_design():
    assert fixed_point_pvalue(0, 10) == pytest.approx(1.0)
    assert fixed_point_pvalue(3, 10) == pytest.approx(0.080, abs=0.0005)
    assert fixed_point_pvalue(5, 10) == pytest.approx(0.0037, abs=0.00005)
    assert fixed_point_pvalue(10, 10) == pytest.approx(1 / 3628800)


def test_seed_agreement():
    a1 = np.array([0, 1, 2, 3, 4])
    out = seed_agreement(a1, np.array([0, 1, 2, 4, 3]))
    assert out["pair/seed_agreement"] == pytest.approx(0.6)
    assert out["pair/seed_agreement_adjusted"] == pytest.approx((0.6 - 0.2) / 0.8)
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
    assert m["pair/forward_top1_pvalue"] == pytest.approx(1 / 120)
    assert m["mem/holdout_copy_rate"] == 1.0  # it outputs a training target whatever it is given
    assert m["pair/cycle_top1_lowpass"] <= 1.0
    against_aligned = evaluate_pairing(G, G, x, y, None)
    assert against_aligned.metrics["pair/forward_top1"] == pytest.approx(1 / N)  # only pi(1) = 1
    one_way = evaluate_pairing(G, None, x, y, pi)
    assert np.isnan(one_way.metrics["pair/cycle_top1"]) and one_way.metrics["pair/forward_top1"] == 1.0
