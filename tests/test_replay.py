"""Step replay and per-device execution switches.

A replayed step reads its inputs from buffers captured once and writes its outputs into the graph's own
tensors, overwritten by the next replay. Off CUDA, `Recorded` below plays the graph's part with the eager step
(a replay runs the captured function on the captured buffers and copies its results into fixed outputs), so the
engine's bookkeeping around a replay (inputs copied in, outputs read before the next replay, one graph per
shape, graphs dropped when a seed leaves) is tested on CPU against training without replay. The CUDA tests
(`-k cuda`) need a GPU and skip without one.
"""

import logging

import pytest
import torch

import cyclelike.replay as replay_module
from cyclelike.checkpoint import Checkpoints
from cyclelike.config import ConfigError, RunConfig
from cyclelike.execution import AUTO, condition, resolve_execution
from cyclelike.replay import EAGER_STEPS
from cyclelike.train import train

BASE = RunConfig(image_size=16, n_images=7, n_holdout=0, batch_size=3, base_filters=4, d_filters=4, epochs=3,
                 pairing="shuffled", lambda_cyc=1.0, precision="fp32", threads=1)


class Recorded:
    """A capture backend without CUDA: the step is recorded, not run, at capture; each replay runs it on the
    captured buffers and writes the results into the same output tensors."""

    def __init__(self):
        self.captures, self.replays = [], 0

    def eager(self, fn):
        return fn()

    def capture(self, fn):
        graph = {"fn": fn, "out": {}}
        self.captures.append(graph)
        return graph, graph["out"]

    def replay(self, graph):
        self.replays += 1
        for k, v in graph["fn"]().items():
            if k in graph["out"]:
                graph["out"][k].copy_(v)
            else:
                graph["out"][k] = v.clone()


def replaying_on_cpu(monkeypatch, backend: type) -> list:
    """replay=auto replays on this CPU with `backend` in place of CUDA graphs; replay=off runs eagerly. The backends
    made, one per run."""
    backends = []
    for kind in ("cpu", "cpu-bf16"):
        monkeypatch.setitem(AUTO[kind], "replay", True)
    monkeypatch.setattr(replay_module, "CudaGraphs", lambda device: backends.append(backend()) or backends[-1])
    return backends


@pytest.fixture
def recorded(monkeypatch):
    return replaying_on_cpu(monkeypatch, Recorded)


def _losses(result):
    return [s.losses for s in result.history]


def _same_run(a, b) -> None:
    assert _losses(a) == _losses(b)
    for name, net in a.nets.items():
        for p, q in zip(net.parameters(), b.nets[name].parameters(), strict=True):
            assert torch.equal(p, q), name


@pytest.mark.parametrize("change", [{}, {"scheme": "cyclegan", "pairing": "aligned", "lambda_id": 0.5},
                                    {"scheme": "pix2pix", "norm": "batch"}, {"dropout": 0.3}])
def test_a_replayed_run_is_the_eager_run(recorded, change):
    """N = 7 in batches of 3: two shapes (3 and the last batch's 1), so two graphs, each replayed with every
    batch of its shape after its warm-up. Same losses every epoch and the same weights at the end: a graph that
    kept reading the batch it was captured with, or an epoch's sum that kept a replay's output tensor (the next
    replay overwrites it), would change them; so would a check of the first replay that left a second step taken, or
    the random state (dropout) moved on."""
    config = BASE.replace(**change)
    eager = train([config.replace(replay="off")])[0]
    replayed = train([config])[0]
    _same_run(replayed, eager)
    assert replayed.execution["replay"] is True  # the checks passed: no shape fell back
    (backend,) = recorded
    sizes = (3, 3, 1) * (2 if config.scheme == "cyclelike" else 1)  # cyclelike steps each batch both ways
    steps = {size: sizes.count(size) * config.epochs for size in set(sizes)}
    assert len(backend.captures) == sum(n > EAGER_STEPS for n in steps.values()) >= 1
    assert backend.replays == sum(max(0, n - EAGER_STEPS) for n in steps.values())


def test_fused_seeds_replayed_keep_each_seed_and_recapture_when_one_leaves(recorded):
    """A pruned seed leaves the stack: the graphs captured the old stacked tensors and Adam, so they are
    dropped and captured again; the seeds that stay train as without replay."""
    configs = [BASE.replace(seed=s, n_images=6, batch_size=3, epochs=3) for s in (0, 1, 2)]

    def prune_at(epoch):
        return lambda stats, translator: stats.epoch == epoch

    callbacks = [None, prune_at(1), None]
    eager = train([c.replace(replay="off") for c in configs], callbacks=callbacks)
    replayed = train(configs, callbacks=callbacks)
    for e, r in zip(eager, replayed, strict=True):
        assert _losses(r) == _losses(e) and r.stopped_early == e.stopped_early
    (backend,) = recorded
    assert len(backend.captures) == 2  # one shape, captured again after seed 1 left


class CaptureRaises(Recorded):
    def capture(self, fn):
        fn(), fn()  # it moved the state (two steps' worth, not what the eager step leaves) before it raised
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")


class FirstReplayRaises(Recorded):
    def replay(self, graph):
        super().replay(graph)
        graph["fn"]()  # it moved the state (two steps' worth) before the error surfaced
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


class LossesDiffer(Recorded):
    def replay(self, graph):
        super().replay(graph)
        for v in graph["out"].values():
            v.mul_(1.5)


class UpdateTwice(Recorded):
    """The losses are right, but the graph steps the weights and optimizers twice."""

    def replay(self, graph):
        super().replay(graph)
        graph["fn"]()


@pytest.mark.parametrize("backend", [CaptureRaises, FirstReplayRaises, LossesDiffer, UpdateTwice])
def test_a_shape_whose_replay_fails_or_differs_goes_on_eagerly_said_once(monkeypatch, caplog, backend):
    """N = 6 in batches of 3: one shape, captured at step 4. Whether its capture or first replay raises or computes
    other numbers than the eager step, the run neither crashes nor changes: every epoch's losses and the final
    weights are the eager run's (one step taken at the check, not two), the shape is never replayed again, one
    warning line says why, and the run records replay = fallback."""
    backends = replaying_on_cpu(monkeypatch, backend)
    config = BASE.replace(n_images=6)
    eager = train([config.replace(replay="off")])[0]
    with caplog.at_level(logging.WARNING, logger="cyclelike.replay"):
        replayed = train([config])[0]
    _same_run(replayed, eager)
    assert replayed.execution["replay"] == "fallback"
    (warning,) = [r for r in caplog.records if r.name == "cyclelike.replay"]
    assert "eagerly for the rest of the run" in warning.getMessage() and "\n" not in warning.getMessage()
    (used,) = backends
    assert len(used.captures) <= 1 and used.replays <= 1


def test_replay_on_without_cuda_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"replay=on: .*CUDA graphs.*cpu"):
        train([BASE.replace(device="cpu", replay="on")])[0]


def test_auto_switches_follow_the_device_kind_and_an_explicit_value_wins():
    """auto reads the AUTO row of the device's kind; on/off override it; a run records what it resolved to."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_execution(BASE, cuda) == AUTO["cuda"]
    assert resolve_execution(BASE, cpu)["replay"] is False
    assert resolve_execution(BASE.replace(fused_upsample="on", replay="off"), cuda) == \
        {**AUTO["cuda"], "fused_upsample": True, "replay": False}
    assert resolve_execution(BASE.replace(compile=True), cuda)["replay"] is False  # compile replays by itself
    result = train([BASE.replace(epochs=1, fused_adam="off")])[0]
    assert result.execution["fused_adam"] is False and result.execution["replay"] is False


def test_switches_are_execution_not_condition():
    """The same maths computed another way is the same condition: its runs are seeds of one another's."""
    a = BASE.replace(fused_upsample="on", fused_adam="off", channels_last="on", replay="off")
    b = BASE.replace(fused_upsample="off", fused_adam="on", channels_last="off", replay="auto")
    assert condition(a) == condition(b)
    assert RunConfig.from_dict({"fused_adam": False}).fused_adam == "off"  # older configs and checkpoints


@pytest.mark.parametrize("before, after", [("off", "on"), ("on", "off")])
def test_a_resumed_run_executes_as_it_is_set_not_as_its_checkpoint_was(tmp_path, before, after):
    """A checkpoint's optimizer state carries the execution it was saved with (fused, capturable); resumed
    elsewhere (a CPU checkpoint replayed on CUDA, say), the run's own execution must hold, or capture refuses a
    non-capturable Adam. Here with fused Adam, which a CPU can show."""
    path = tmp_path / "checkpoint.pt"
    train([BASE.replace(epochs=2, fused_adam=before)], checkpoints=[Checkpoints(path, every=10)])[0]
    resumed = train([BASE.replace(epochs=3, fused_adam=after)], checkpoints=[Checkpoints(path, every=10)])[0]
    assert resumed.resumed_from_epoch == 2 and resumed.execution["fused_adam"] == (after == "on")
    for opt in resumed.optims.values():
        assert all(group["fused"] == (after == "on") for group in opt.param_groups)
        assert all(state["step"].item() == 3 * 6 for state in opt.state.values())  # 6 G and D steps an epoch


def cuda(test):
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


@pytest.fixture
def reproducible(monkeypatch):
    """cuDNN's default backward kernels are not bit-reproducible (atomics), and fp32 convolutions run as TF32 on
    Ampere and later: both would hide or fake a difference between replayed and eager."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@cuda
def test_cuda_replayed_fp32_step_equals_the_eager_step(reproducible):
    """N = 10 in batches of 5, both directions: 4 steps an epoch, so step 4 is the first replay (after EAGER_STEPS = 3
    eager steps and the capture). Epoch 1's losses (the mean of its 4 steps) and every weight after it, to 1e-5."""
    assert EAGER_STEPS == 3
    config = BASE.replace(device="cuda", threads=0, image_size=32, n_images=10, batch_size=5, epochs=1,
                          fused_upsample="off")
    eager = train([config.replace(replay="off")])[0]
    replayed = train([config.replace(replay="on")])[0]
    assert replayed.execution["replay"] is True and not eager.execution["replay"]  # True: no shape fell back
    assert _losses(replayed)[0] == pytest.approx(_losses(eager)[0], rel=1e-5, abs=1e-6)
    for name, net in eager.nets.items():
        for p, q in zip(net.parameters(), replayed.nets[name].parameters(), strict=True):
            assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), name


@cuda
def test_cuda_replayed_run_pairs_as_the_eager_run(reproducible):
    """A short run's losses and pairing metrics, replayed and eager, on the same seed."""
    from analysis.pairing import evaluate_pairing
    from cyclelike.data import load_domains

    config = BASE.replace(device="cuda", threads=0, image_size=32, n_images=10, batch_size=5, epochs=20,
                          pairing="aligned")
    data = load_domains(config)
    runs = {}
    for replay in ("off", "on"):
        result = train([config.replace(replay=replay)], data)[0]
        m = evaluate_pairing(result.translator.forward, result.translator.backward, data.x, data.y, data.pi).metrics
        runs[replay] = (_losses(result), {k: m[k] for k in ("pair/forward_top1", "pair/bijectivity", "pair/mutual")})
    for e, r in zip(runs["off"][0], runs["on"][0], strict=True):
        assert r == pytest.approx(e, rel=1e-3, abs=1e-4)
    assert runs["on"][1] == runs["off"][1]
