"""Training: the cyclelike scheme and the cyclegan and pix2pix baselines.

`train(config, data, callback)` runs epochs; one epoch is every one of the N pairs in both directions,
discriminator and generator steps included. Each scheme's step is one function that reads top to
bottom. The callback sees every epoch's stats and the current translator (to evaluate pairing for
pruning) and stops the run by returning True. Nothing here knows about Optuna or MLflow.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import EXECUTION_KEYS, ConfigError, NonFiniteLossError, RunConfig
from .data import Domains, load_domains
from .execution import resolve_device, resolve_execution, resolve_precision, switch
from .nets import define_D, define_G

LOSS_WEIGHTS = {"adv": "lambda_adv", "l1": "lambda_l1", "cyc": "lambda_cyc", "id": "lambda_id"}


@dataclass
class EpochStats:
    epoch: int  # 1-based
    epoch_s: float  # wall time of the whole epoch, device synchronised
    losses: dict[str, float]  # raw `loss/G_l1` and weighted `loss/G_l1_w`, means over the epoch's steps
    seeds: int = 1  # how many seeds shared the epoch's time: K for a fused group (cyclelike.fused), else 1


@dataclass
class Translator:
    """The trained mappings as plain tensor functions: forward X -> Y, backward Y -> X (None for pix2pix)."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    backward: Callable[[torch.Tensor], torch.Tensor] | None


@dataclass
class TrainResult:
    config: RunConfig
    history: list[EpochStats]
    nets: dict[str, nn.Module]
    translator: Translator
    device: str
    precision: str = "fp32"  # what precision=auto resolved to
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    optims: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    diverged: NonFiniteLossError | None = None  # a fused seed whose losses went non-finite: left the stack
    build_s: float = 0.0  # building the networks and optimizers (a fused seed: its share of the stack's)

    @property
    def timing_seeds(self) -> int:
        """The seeds that shared the epochs sec_per_epoch is read from: a run resumed alone after its fused group
        was killed has epochs of both kinds, and its time is the kind it has more of (ties: the later)."""
        timed = [s.seeds for s in self.history if s.epoch > self.config.warmup_epochs] or [1]
        counts = Counter(timed)
        return next(k for k in reversed(timed) if counts[k] == max(counts.values()))

    @property
    def sec_per_epoch(self) -> float:
        """Median epoch time after the warm-up epochs (the first epochs pay for allocator and cache set-up), of
        the epochs timed as timing_seeds. NaN when no epoch lies after them (warmup_epochs >= epochs): no timed
        epochs, never warm-up time."""
        seeds = self.timing_seeds
        times = [s.epoch_s for s in self.history if s.epoch > self.config.warmup_epochs and s.seeds == seeds]
        return statistics.median(times) if times else float("nan")


def timed_text(sec_per_epoch: float, warmup_epochs: int) -> str:
    """What the commands print for a run's time per epoch, or why there is none."""
    if sec_per_epoch != sec_per_epoch:
        return f"no timed epochs (warmup_epochs={warmup_epochs} >= epochs)"
    return f"{sec_per_epoch:.3f} s/epoch (median after {warmup_epochs} warm-up)"


def gan_criterion(kind: str, per_seed: bool = False) -> Callable[[torch.Tensor, bool], torch.Tensor]:
    """The GAN loss on D's logits: their mean, or with `per_seed` (fused seeds, logits (K, ...)) each
    seed's own mean, as it computes alone."""
    def criterion(logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        loss = F.mse_loss if kind == "lsgan" else F.binary_cross_entropy_with_logits
        return seed_means(loss(logits, target, reduction="none")) if per_seed else loss(logits, target)

    return criterion


def seed_means(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).mean(1)  # (K, ...) -> (K,): each seed's own mean, as F.*_loss computes alone


def l1_loss(per_seed: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return (lambda a, b: seed_means((a - b).abs())) if per_seed else F.l1_loss


def set_requires_grad(nets: list, flag: bool) -> None:
    # D gets no gradients during the G step: it is not updated there, so they would be wasted work
    for net in nets:
        net.requires_grad_(flag)  # a module's, or a fused Stack's (cyclelike.fused)


def build(config: RunConfig, device: torch.device) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer]]:
    if config.scheme == "cyclegan":
        nets = {"G": define_G(config, device), "F": define_G(config, device),
                "D_X": define_D(config, conditional=False), "D_Y": define_D(config, conditional=False)}
        groups = {"G": ["G", "F"], "D": ["D_X", "D_Y"]}
    else:
        nets = {"G": define_G(config, device), "D": define_D(config, conditional=True)}
        groups = {"G": ["G"], "D": ["D"]}
    memory = torch.channels_last if switch(config, "channels_last", device) else torch.contiguous_format
    for net in nets.values():
        net.to(device=device, memory_format=memory)
    optims = {name: adam(chain(*(nets[k].parameters() for k in members)), config, device)
              for name, members in groups.items()}
    return nets, optims


def adam(params, config: RunConfig, device: torch.device) -> torch.optim.Adam:
    """Adam as the run executes it: the fused kernel updates all parameters in one pass (a tenth of the
    optimizer's time on CPU); a replayed step keeps its step counts on the device (capturable)."""
    execution = resolve_execution(config, device)
    return torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, config.beta2), fused=execution["fused_adam"],
                            capturable=execution["replay"])


def paired_step(nets, optims, src, tgt, config, gan, autocast, two_way=True, l1=F.l1_loss) -> dict[str, torch.Tensor]:
    """One D step and one G step on the batch src -> tgt. cyclelike (two_way): the one G serves both
    directions, so src is x (target y) or y (target x), or both stacked for the joint schedule.
    pix2pix (not two_way): X -> Y only, so there is no way back for a cycle. Fused seeds run this same step
    on stacked networks with per-seed losses (K,) (cyclelike.fused); their sum's gradient is each seed's."""
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


def run_epoch(nets, optims, data: Domains, config: RunConfig, gen: torch.Generator, gan, autocast):
    """One pass over all N pairs in both directions; returns the summed losses and the step count."""
    n, bs = data.n, config.batch_size
    pi = data.pairing_for_epoch(gen).to(data.x.device)
    order = torch.randperm(n, generator=gen).to(data.x.device)
    sums: dict[str, torch.Tensor] = {}
    steps = 0

    def add(losses: dict[str, torch.Tensor]) -> None:
        nonlocal steps
        steps += 1
        for k, v in losses.items():
            sums[k] = sums[k] + v if k in sums else v.float()  # stays on the device: no per-step sync

    batches = order.split(bs)
    if config.scheme == "cyclegan":
        for idx in batches:
            # unpaired: Y batches come from an independent order
            y_idx = torch.randperm(n, generator=gen)[: len(idx)].to(data.x.device)
            add(cyclegan_step(nets, optims, data.x[idx], data.y[y_idx], config, gan, autocast))
        return sums, steps
    pairs = [(data.x[idx], data.y[pi[idx]]) for idx in batches]
    for src, tgt in scheduled(pairs, config):
        add(paired_step(nets, optims, src, tgt, config, gan, autocast, two_way=config.scheme != "pix2pix"))
    return sums, steps


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


def epoch_losses(sums: dict[str, torch.Tensor], steps: int, config: RunConfig) -> dict[str, float]:
    if not sums:
        return {}
    keys = list(sums)
    means = (torch.stack([sums[k] for k in keys]) / steps).tolist()  # the epoch's one host sync
    raw = dict(zip(keys, means, strict=True))
    out = {"loss/D": raw.pop("D")}
    total = 0.0
    for k, v in raw.items():
        weighted = getattr(config, LOSS_WEIGHTS[k]) * v
        out[f"loss/G_{k}"] = v
        out[f"loss/G_{k}_w"] = weighted
        total += weighted
    out["loss/G_total"] = total
    return out


def make_translator(nets: dict[str, nn.Module], scheme: str, batch: int = 64) -> Translator:
    def apply(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(images: torch.Tensor) -> torch.Tensor:
            was_training = net.training
            net.eval()
            try:
                with torch.inference_mode():
                    weight = next(net.parameters())  # the net's own dtype: float64 tests evaluate in float64
                    return torch.cat([net(b.to(weight.device, weight.dtype)).float() for b in images.split(batch)])
            finally:
                net.train(was_training)

        return run

    backward = {"cyclelike": nets["G"], "cyclegan": nets.get("F"), "pix2pix": None}[scheme]
    return Translator(apply(nets["G"]), apply(backward) if backward is not None else None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Checkpoints:
    """Where and when train() saves its whole state: every `every` epochs and every `seconds` of training
    (0: never), and at the end once `final_after` seconds have passed since the last save (0: always).
    `extra()` adds the caller's own state (a tracked run's evaluations so far), given back by check_resumable;
    `saved(path)` hears of each new file (to send it to the store)."""
    path: Path
    every: int = 0
    seconds: float = 0.0
    extra: Callable[[], dict] | None = None
    saved: Callable[[Path], None] | None = None
    final_after: float = 0.0

    def due(self, epoch: int, last_save: float, last: bool = False) -> bool:
        since = time.monotonic() - last_save
        return bool(self.every and epoch % self.every == 0) or bool(self.seconds and since >= self.seconds) or \
            (last and since >= self.final_after)

    def save(self, epoch: int, config: RunConfig, nets, optims, gen, history) -> None:
        save_checkpoint(self.path, epoch, config, nets, optims, gen, history, self.extra() if self.extra else {})
        if self.saved is not None:
            self.saved(self.path)


def save_checkpoint(path: Path, epoch: int, config: RunConfig, nets, optims, gen, history,
                    extra: dict | None = None) -> None:
    state = {
        "epoch": epoch,
        "config": config.to_dict(),
        "nets": {k: v.state_dict() for k, v in nets.items()},
        "optims": {k: v.state_dict() for k, v in optims.items()},
        "rng": {"data": gen.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "history": [asdict(s) for s in history],
        "extra": extra or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


# epochs and execution settings may change on resume; anything that changes the maths may not
RESUMABLE_CHANGES = {"epochs", "warmup_epochs", *EXECUTION_KEYS}


def check_resumable(path: Path, config: RunConfig) -> dict:
    """The checkpoint's state, or a ConfigError naming every setting the checkpoint was made with otherwise."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    try:
        saved = RunConfig.from_dict(state["config"])
    except ConfigError as err:
        raise ConfigError(f"checkpoint {path} is from an incompatible version ({err}); use another output folder") \
            from None
    changed = sorted(k for k, v in saved.to_dict().items() if k not in RESUMABLE_CHANGES and getattr(config, k) != v)
    if changed:
        raise ConfigError(f"checkpoint {path} was made with other settings: "
                          + ", ".join(f"{k} ({getattr(saved, k)!r} -> {getattr(config, k)!r})" for k in changed)
                          + "; use another output folder or the same settings")
    return state


def _resume(path: Path, config: RunConfig, nets, optims, gen) -> tuple[int, list[EpochStats]]:
    state = check_resumable(path, config)
    for k, net in nets.items():
        net.load_state_dict(state["nets"][k])
    for k, opt in optims.items():
        opt.load_state_dict(state["optims"][k])
    gen.set_state(state["rng"]["data"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["epoch"], [EpochStats(**s) for s in state["history"]]


def train(
    config: RunConfig,
    data: Domains | None = None,
    callback: Callable[[EpochStats, Translator], bool | None] | None = None,
    checkpoint: str | Path | Checkpoints | None = None,
    checkpoint_every: int = 10,
    progress: bool = False,
    desc: str = "train",
) -> TrainResult:
    """Train one run. With `checkpoint` (a file, saved every `checkpoint_every` epochs, or Checkpoints),
    resume from that file when it exists and save to it as asked and at the end, optimizer state and random
    state included; an epoch's state is saved after the callback has seen it. The callback sees epoch 0 (no
    step taken, no losses) once before training, then every epoch; its answer at epoch 0 is ignored."""
    config.validate()
    device = resolve_device(config.device)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    data = (data if data is not None else load_domains(config)).to(device)
    torch.manual_seed(config.seed)  # initialisation and dropout
    gen = torch.Generator().manual_seed(config.seed)  # batch order and shuffled pairings
    t0 = time.perf_counter()
    nets, optims = build(config, device)
    build_s = time.perf_counter() - t0
    gan = gan_criterion(config.gan_loss)
    precision = resolve_precision(config.precision, device)
    use_bf16 = precision == "bf16"

    def autocast():
        if not use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    start, history = 0, []
    if checkpoint is not None and not isinstance(checkpoint, Checkpoints):
        checkpoint = Checkpoints(Path(checkpoint), every=checkpoint_every)
    if checkpoint is not None and checkpoint.path.exists():
        start, history = _resume(checkpoint.path, config, nets, optims, gen)
    last_save = time.monotonic()
    translator = make_translator(nets, config.scheme)
    # compiled wrappers share the parameters; checkpoints and evaluation keep using the plain modules
    step_nets = {k: torch.compile(v) for k, v in nets.items()} if config.compile else nets
    stopped = False
    if callback is not None and start == 0:
        callback(EpochStats(0, 0.0, {}), translator)  # the untrained map: where formation starts from
    bar = tqdm(range(start + 1, config.epochs + 1), desc=desc, unit="epoch", disable=not progress,
               initial=start, total=config.epochs, leave=False, dynamic_ncols=True)
    for epoch in bar:
        for net in nets.values():
            if not net.training:  # a callback's evaluation restores the mode itself; the walk costs ~1 ms
                net.train()
        _sync(device)
        t0 = time.perf_counter()
        sums, steps = run_epoch(step_nets, optims, data, config, gen, gan, autocast)
        losses = epoch_losses(sums, steps, config)
        _sync(device)
        stats = EpochStats(epoch, time.perf_counter() - t0, losses)
        history.append(stats)
        bad = {k: v for k, v in losses.items() if v != v or v in (float("inf"), float("-inf"))}
        if bad:
            raise NonFiniteLossError(f"epoch {epoch}: non-finite loss {bad}", epoch)
        bar.set_postfix({"s/epoch": f"{stats.epoch_s:.2f}", "D": f"{losses['loss/D']:.3f}",
                         "G": f"{losses['loss/G_total']:.3f}"}, refresh=False)
        stopped = callback is not None and bool(callback(stats, translator))
        if checkpoint is not None and checkpoint.due(epoch, last_save, last=stopped or epoch == config.epochs):
            checkpoint.save(epoch, config, nets, optims, gen, history)
            last_save = time.monotonic()
        if stopped:
            break
    bar.close()
    return TrainResult(config, history, nets, translator, str(device), precision, stopped, start, optims,
                       build_s=build_s)
