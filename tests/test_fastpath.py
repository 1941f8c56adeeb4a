"""The fast path computes what the reference path computes: exactly where the maths is the same (fp32),
within a stated tolerance where it is not (bf16)."""

import contextlib

import pytest
import torch

from cyclelike.config import RunConfig
from cyclelike.data import load_domains
from cyclelike.nets import build
from cyclelike.steps import gan_criterion, paired_step
from cyclelike.train import train

REFERENCE = dict(fused_upsample=False, fused_adam=False, precision="fp32")
BF16_TOLERANCE = 0.05  # relative, on each loss of one step


def steps(config: RunConfig, n: int = 1):
    """Losses of n paired steps (both directions in one batch) from one seeded initialisation."""
    torch.manual_seed(0)
    nets, optims = build(config, torch.device("cpu"))
    data = load_domains(config)
    src, tgt = torch.cat([data.x, data.y]), torch.cat([data.y, data.x])
    bf16 = config.precision == "bf16"

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    gan = gan_criterion(config.gan_loss)
    return [{k: float(v) for k, v in paired_step(nets, optims, src, tgt, config, gan, autocast).items()}
            for _ in range(n)]


BASE = RunConfig(n_images=4, n_holdout=0, image_size=32, base_filters=8, d_filters=8, lambda_cyc=1.0)


def test_fp32_fast_path_matches_the_reference_steps():
    """Same losses step after step. (Weights are not compared one by one: Adam's first update is
    lr * sign(gradient), so an element whose gradient is rounding noise may move either way.)"""
    reference = steps(BASE.replace(**REFERENCE), 3)
    fast = steps(BASE.replace(**{**REFERENCE, "fused_upsample": True, "fused_adam": True}), 3)
    for step, (r, f) in enumerate(zip(reference, fast, strict=True)):
        assert f.keys() == r.keys()
        for k in r:
            assert f[k] == pytest.approx(r[k], rel=1e-4 if step else 1e-6, abs=1e-6), (step, k)


def test_fused_adam_makes_the_same_update():
    torch.manual_seed(0)
    params = [torch.randn(64, 32, 3, 3, requires_grad=True), torch.randn(64, requires_grad=True)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    plain = torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999))
    fused = torch.optim.Adam(twins, lr=1e-3, betas=(0.5, 0.999), fused=True)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(params, twins, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        plain.step()
        fused.step()
    for p, q in zip(params, twins, strict=True):
        assert torch.allclose(p, q, atol=1e-6)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU emulates bf16")
def test_bf16_step_stays_within_tolerance():
    (fp32,) = steps(BASE.replace(precision="fp32"))
    (bf16,) = steps(BASE.replace(precision="bf16"))
    for k in fp32:
        assert bf16[k] == pytest.approx(fp32[k], rel=BF16_TOLERANCE), k


def test_defaults_keep_the_original_schedule_and_the_maths_preserving_speed_ups():
    """The fast path may only change how the same steps are computed: by default the schedule is the
    original's, so an epoch takes as many optimizer steps as the plain path."""
    config = BASE.replace(n_images=6, batch_size=3, epochs=1)
    steps = {}
    for label, overrides in (("fast", {}), ("plain", REFERENCE),
                             ("joint", {"direction_schedule": "joint"})):
        result = train([config.replace(**overrides)])[0]
        steps[label] = {name: max(int(s["step"]) for s in opt.state_dict()["state"].values())
                        for name, opt in result.optims.items()}
    # N = 6 in batches of 3: two X->Y batches and two Y->X batches, each with its own D and G step
    assert steps["fast"] == steps["plain"] == {"G": 4, "D": 4}
    assert steps["joint"] == {"G": 2, "D": 2}
