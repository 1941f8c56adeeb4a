import numpy as np
import pytest
import torch

from analysis.pairing import evaluate_pairing
from cyclelike.checkpoint import Checkpoints
from cyclelike.config import NonFiniteLossError, RunConfig
from cyclelike.data import load_domains
from cyclelike.samples import assignment_strip, holdout_strip, labelled, sample_grid
from cyclelike.train import train

TINY = RunConfig(n_images=4, n_holdout=1, image_size=16, base_filters=8, d_filters=8, batch_size=2, epochs=2)


def weights(result):
    return {f"{k}.{n}": p.detach().clone() for k, net in result.nets.items() for n, p in net.state_dict().items()}


def test_cyclelike_learns_the_given_pairing_and_collapses_without_one():
    """The learning test: with a fixed pairing, G maps each x to its given partner and back; with a new
    pairing every epoch and an L1 term, no pair is learned and G collapses onto fewer targets than a
    random map would hit."""
    # fp32: bf16 arithmetic differs between CPUs (AMX, AVX512-BF16), and at N = 6 one image decides the collapse test
    # (an Intel Xeon's bf16 left 3 distinct targets, p = 0.25; fp32 leaves 2, p = 0.02)
    config = RunConfig(n_images=6, n_holdout=2, image_size=32, pairing="fixed", batch_size=3, epochs=30,
                       precision="fp32")
    scores = {}
    for pairing in ("fixed", "shuffled"):
        run = config.replace(pairing=pairing)
        data = load_domains(run)
        result = train([run], data)[0]
        scores[pairing] = evaluate_pairing(result.translator.forward, result.translator.backward, data.x, data.y,
                                           data.pi, data.x_holdout)
    fixed, shuffled = scores["fixed"], scores["shuffled"]
    assert fixed.metrics["pair/forward_top1"] >= 0.8 and fixed.metrics["pair/cycle_top1"] >= 0.8
    assert fixed.statistics["pair/forward_top1_pvalue"] < 0.05
    assert shuffled.statistics["pair/forward_top1_pvalue"] > 0.05  # the stored order is no better than a random one
    assert shuffled.distinct.p_collapse < 0.05, shuffled.distinct


def test_seeded_runs_are_reproducible_and_seeds_differ():
    a, b = train([TINY])[0], train([TINY])[0]
    assert [s.losses for s in a.history] == [s.losses for s in b.history]
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train([TINY.replace(seed=1)])[0]
    assert c.history[-1].losses != a.history[-1].losses


def test_resume_continues_with_the_same_optimizer_state(tmp_path):
    config = TINY.replace(epochs=4, pairing="shuffled", dropout=0.5)
    straight = train([config])[0]
    ckpt = tmp_path / "run.pt"
    first = train([config.replace(epochs=2)], checkpoints=[Checkpoints(ckpt, every=10)])[0]
    assert len(first.history) == 2
    state = torch.load(ckpt, weights_only=False)
    assert {"nets", "optims", "epoch", "config", "rng"} <= set(state) and state["epoch"] == 2
    assert state["optims"]["G"]["state"], "optimizer moments are saved"
    resumed = train([config], checkpoints=[Checkpoints(ckpt, every=10)])[0]
    assert resumed.resumed_from_epoch == 2 and [s.epoch for s in resumed.history] == [1, 2, 3, 4]
    ws, wr = weights(straight), weights(resumed)
    assert all(torch.allclose(ws[k], wr[k]) for k in ws)
    with pytest.raises(ValueError, match="lambda_l1"):
        train([config.replace(lambda_l1=1.0)], checkpoints=[Checkpoints(ckpt, every=10)])[0]


@pytest.mark.parametrize("scheme", ["cyclelike", "cyclegan", "pix2pix"])
def test_schemes_train_their_own_nets_and_losses(scheme):
    config = TINY.replace(scheme=scheme, lambda_cyc=2.0, lambda_id=0.5 if scheme == "cyclegan" else 0.0)
    result = train([config])[0]
    losses = result.history[-1].losses
    assert set(result.nets) == ({"G", "F", "D_X", "D_Y"} if scheme == "cyclegan" else {"G", "D"})
    terms = {k.removeprefix("loss/G_") for k in losses if k.startswith("loss/G_") and not k.endswith(("_w", "total"))}
    expected = {"cyclelike": {"adv", "l1", "cyc"}, "cyclegan": {"adv", "cyc", "id"}, "pix2pix": {"adv", "l1"}}
    assert terms == expected[scheme]
    assert (result.translator.backward is None) == (scheme == "pix2pix")
    grid = sample_grid(result.translator, load_domains(config), k=3)
    assert grid.shape == (3, 2 + (9 if scheme != "pix2pix" else 3) * 18, 2 + 3 * 18)  # 16 px images, 2 px padding


@pytest.mark.parametrize("scheme", ["cyclelike", "pix2pix"])
def test_pictures_from_an_evaluations_outputs_are_those_of_running_g(scheme):
    """A sweep draws its strips and sample grids from the images its evaluation already computed; they must
    be the pictures that running G again would draw, rows and a fixed pairing's order included."""
    config = TINY.replace(scheme=scheme, pairing="fixed", n_images=5)
    result = train([config])[0]
    data = load_domains(config)
    t = result.translator
    evaluation = evaluate_pairing(t.forward, t.backward, data.x, data.y, data.pi, data.x_holdout)
    assert not torch.equal(data.pi, torch.arange(5))  # the G(y) rows must follow pi
    assert torch.allclose(sample_grid(None, data, outputs=evaluation.outputs), sample_grid(t, data), atol=1e-5)
    assert torch.allclose(assignment_strip(None, data, evaluation.a, outputs=evaluation.outputs),
                          assignment_strip(t, data, evaluation.a), atol=1e-5)
    assert len(data.x_holdout) and torch.allclose(holdout_strip(None, data, outputs=evaluation.outputs),
                                                  holdout_strip(t, data), atol=1e-5)


def test_a_labelled_picture_holds_the_grid_pixel_for_pixel_beside_its_row_names():
    grid = torch.rand(3, 20, 40)
    picture = labelled(grid, ["x", "G(x)"], min_width=100)  # 40 px wide: upscaled 3 times
    pixels = torch.from_numpy(np.array(picture)).permute(2, 0, 1)
    margin = picture.width - 120
    expected = grid.mul(255).byte().repeat_interleave(3, 1).repeat_interleave(3, 2)
    assert picture.height == 60 and margin > 0
    assert torch.equal(pixels[:, :, margin:], expected)
    assert (pixels[:, :, :margin] < 128).any()  # the names are written in the margin


def test_the_end_of_training_checkpoints_only_what_is_worth_it(tmp_path):
    """A checkpoint at the end protects the training since the last one: a run whose last save is more recent
    than `final_after` skips it (a sweep deletes a finished trial's checkpoint anyway); 0 always saves."""
    skipped, saved = tmp_path / "skipped.pt", tmp_path / "saved.pt"
    train([TINY], checkpoints=[Checkpoints(skipped, seconds=3600, final_after=3600)])[0]
    train([TINY], checkpoints=[Checkpoints(saved, seconds=3600, final_after=0.0)])[0]
    assert not skipped.exists() and saved.exists()


def test_each_schedule_is_its_own_algorithm():
    """The schedules differ in what the optimizer sees, so their losses after two epochs differ."""
    ran = {s: train([TINY.replace(direction_schedule=s)])[0].history[-1].losses
           for s in ("alternate", "interleave", "joint")}
    assert ran["alternate"] != ran["interleave"] != ran["joint"] != ran["alternate"]


def test_callback_sees_every_epoch_and_can_stop():
    seen = []

    def callback(stats, translator):
        seen.append(stats.epoch)
        assert translator.forward(torch.zeros(1, 3, 16, 16)).shape == (1, 3, 16, 16)
        return stats.epoch == 3

    result = train([TINY.replace(epochs=10)], callbacks=[callback])[0]
    assert seen == [0, 1, 2, 3] and result.stopped_early and len(result.history) == 3  # 0: the untrained map


def test_non_finite_loss_stops_with_the_epoch_named():
    data = load_domains(TINY)
    data.x[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        train([TINY], data)[0]


def test_bf16_runs():
    result = train([TINY.replace(precision="bf16")])[0]
    assert all(v == v for v in result.history[-1].losses.values())


def test_make_train_folder_gives_its_pairing_metrics(tmp_path, capsys):
    """make train = python -m cyclelike train, then python -m analysis pairing on its folder."""
    from analysis.__main__ import main as analysis_main
    from cyclelike.__main__ import main as train_main

    sets = ["--set", "image_size=16", "--set", "n_images=4", "--set", "n_holdout=1", "--set", "epochs=2",
            "--set", "base_filters=4", "--set", "d_filters=4", "--set", "batch_size=2"]
    assert train_main(["train", "--out", str(tmp_path / "run"), *sets]) == 0
    assert "threads: " in capsys.readouterr().out  # the idle cores, never torch's every-core default
    assert analysis_main(["pairing", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "after 2 epochs, N = 4" in printed and "pair/forward_top1" in printed and "(chance 0.250)" in printed
    assert analysis_main(["pairing", str(tmp_path / "nothing")]) == 2
