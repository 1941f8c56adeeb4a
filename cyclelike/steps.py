"""The training step of each scheme, each readable on one screen, and the losses they share.

`paired_step` is cyclelike's step (one G both ways, one conditional D) and pix2pix's (X -> Y only); `cyclegan_step`
is the CycleGAN baseline's (G, F, D_X, D_Y, unpaired). `scheduled` orders one epoch's batches as the direction
schedule says. Fused seeds (cyclelike.fused) run these same steps on stacked networks with per-seed losses (K,):
seeds share no parameter, so the gradient of their sum is each seed's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import RunConfig

LOSS_WEIGHTS = {"adv": "lambda_adv", "l1": "lambda_l1", "cyc": "lambda_cyc", "id": "lambda_id"}


def seed_means(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).mean(1)  # (K, ...) -> (K,): each seed's own mean, as F.*_loss computes alone


def gan_criterion(kind: str, per_seed: bool = False) -> Callable[[torch.Tensor, bool], torch.Tensor]:
    """The GAN loss on D's logits: their mean, or with `per_seed` (fused seeds, logits (K, ...)) each
    seed's own mean, as it computes alone."""
    def criterion(logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        loss = F.mse_loss if kind == "lsgan" else F.binary_cross_entropy_with_logits
        return seed_means(loss(logits, target, reduction="none")) if per_seed else loss(logits, target)

    return criterion


def l1_loss(per_seed: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return (lambda a, b: seed_means((a - b).abs())) if per_seed else F.l1_loss


def set_requires_grad(nets: list, flag: bool) -> None:
    # D gets no gradients during the G step: it is not updated there, so they would be wasted work
    for net in nets:
        net.requires_grad_(flag)  # a module's, or a fused StackedNet's (cyclelike.fused)


def autocaster(precision: str, device: torch.device, cache: bool = True) -> Callable:
    """The context each forward pass runs in: bf16 autocast, or nothing. A replayed step casts the weights
    inside the graph on every replay (cache=False): a cast cached at capture would be stale after an update."""
    def autocast():
        if precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)

    return autocast


def paired_step(nets, optims, src, tgt, config, gan, autocast, two_way=True, l1=F.l1_loss) -> dict[str, torch.Tensor]:
    """One D step and one G step on the batch src -> tgt. cyclelike (two_way): the one G serves both
    directions, so src is x (target y) or y (target x), or both stacked for the joint schedule.
    pix2pix (not two_way): X -> Y only, so there is no way back for a cycle."""
    G, D = nets["G"], nets["D"]
    with autocast():
        fake = G(src)
    # D: the real pair (src, tgt) against the generated one (src, G(src))
    set_requires_grad([D], True)
    optims["D"].zero_grad(set_to_none=True)
    with autocast():
        loss_d = 0.5 * (gan(D(tgt, src), True) + gan(D(fake.detach(), src), False))
    loss_d.sum().backward()
    optims["D"].step()
    # G: fool D, match the paired target, and come back to src when applied twice
    set_requires_grad([D], False)
    optims["G"].zero_grad(set_to_none=True)
    with autocast():
        raw = {"adv": gan(D(fake, src), True), "l1": l1(fake, tgt)}
        if two_way and config.lambda_cyc > 0:
            raw["cyc"] = l1(G(fake), src)
        total = config.lambda_adv * raw["adv"] + config.lambda_l1 * raw["l1"] + config.lambda_cyc * raw.get("cyc", 0)
    total.sum().backward()
    optims["G"].step()
    return {"D": loss_d.detach(), **{k: v.detach() for k, v in raw.items()}}


def cyclegan_step(nets, optims, x, y, config, gan, autocast) -> dict[str, torch.Tensor]:
    """G: X -> Y and F: Y -> X with unconditional D_Y, D_X; x and y are unpaired batches."""
    G, Fn, D_X, D_Y = nets["G"], nets["F"], nets["D_X"], nets["D_Y"]
    with autocast():
        fake_y, fake_x = G(x), Fn(y)
    set_requires_grad([D_X, D_Y], True)
    optims["D"].zero_grad(set_to_none=True)
    with autocast():
        loss_d = 0.5 * (gan(D_Y(y), True) + gan(D_Y(fake_y.detach()), False)
                        + gan(D_X(x), True) + gan(D_X(fake_x.detach()), False))
    loss_d.backward()
    optims["D"].step()
    set_requires_grad([D_X, D_Y], False)
    optims["G"].zero_grad(set_to_none=True)
    with autocast():
        raw = {"adv": gan(D_Y(fake_y), True) + gan(D_X(fake_x), True),
               "cyc": F.l1_loss(Fn(fake_y), x) + F.l1_loss(G(fake_x), y)}
        if config.lambda_id > 0:
            raw["id"] = F.l1_loss(G(y), y) + F.l1_loss(Fn(x), x)
        total = config.lambda_adv * raw["adv"] + config.lambda_cyc * raw["cyc"] + config.lambda_id * raw.get("id", 0)
    total.backward()
    optims["G"].step()
    return {"D": loss_d.detach(), **{k: v.detach() for k, v in raw.items()}}


def scheduled(pairs: list[tuple[torch.Tensor, torch.Tensor]], config: RunConfig,
              batch_dim: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (src, tgt) batches of one epoch in the order the scheme and direction schedule take them: pix2pix
    X -> Y only; cyclelike both ways. The schedule is part of the algorithm: joint takes half the steps on
    twice the batch (stacked on `batch_dim`)."""
    if config.scheme == "pix2pix":
        return list(pairs)
    if config.direction_schedule == "alternate":
        return [(x, y) for x, y in pairs] + [(y, x) for x, y in pairs]
    if config.direction_schedule == "interleave":
        return [step for x, y in pairs for step in ((x, y), (y, x))]
    return [(torch.cat([x, y], batch_dim), torch.cat([y, x], batch_dim)) for x, y in pairs]


def epoch_losses(raw: dict[str, float], config: RunConfig) -> dict[str, float]:
    """One seed's epoch means as logged: raw `loss/G_l1` and weighted `loss/G_l1_w`, and their total."""
    if not raw:
        return {}
    raw = dict(raw)
    out = {"loss/D": raw.pop("D")}
    total = 0.0
    for k, v in raw.items():
        weighted = getattr(config, LOSS_WEIGHTS[k]) * v
        out[f"loss/G_{k}"] = v
        out[f"loss/G_{k}_w"] = weighted
        total += weighted
    out["loss/G_total"] = total
    return out
