"""Training: the cyclelike scheme and the cyclegan and pix2pix baselines.

`train(config, data, callback)` runs epochs; one epoch is every one of the N pairs in both directions,
discriminator and generator steps included. Each scheme's step is one function that reads top to
bottom. The callback sees every epoch's stats and the current translator (to evaluate pairing for
pruning) and stops the run by returning True. Nothing here knows about Optuna or MLflow.

One engine: `run_seeds` is the only epoch loop, for one seed (`Alone`, its plain modules) or the K seeds of one
condition stacked (cyclelike.fused). How a step executes (fused kernels, channels-last, steps replayed as CUDA
graphs) is resolved per device by cyclelike.execution and never changes the maths.
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
from .replay import Eager, Replay, stepper

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
    execution: dict[str, bool | str] = field(default_factory=dict)  # the switches as resolved; replay may be "fallback"

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
                            capturable=execution["replay"] and device.type == "cuda")


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


class Alone:
    """One seed on its own modules and optimizers: the engine's stack at K = 1, with no vmap, so a seed alone
    runs exactly the modules it is evaluated and checkpointed with (cyclelike.fused.Stacked is K > 1)."""

    per_seed = False  # the step's losses are scalars
    batch_dim = 0  # a joint batch stacks both directions here

    def __init__(self, nets: dict[str, nn.Module], optims: dict[str, torch.optim.Optimizer], config: RunConfig,
                 device: torch.device):
        self.nets, self.optims = nets, optims
        # compiled wrappers share the parameters; checkpoints and evaluation keep using the plain modules. On CUDA
        # reduce-overhead replays CUDA graphs of the compiled networks (replay=on captures whole steps instead)
        self.graphed = config.compile and device.type == "cuda"
        mode = "reduce-overhead" if self.graphed else None
        self.step_nets = {k: torch.compile(v, mode=mode) for k, v in nets.items()} if config.compile else nets

    def step_begin(self) -> None:
        if self.graphed:  # compiled graphs may reuse the previous step's outputs from here on
            torch.compiler.cudagraph_mark_step_begin()

    def batch(self, images: torch.Tensor, index: list[torch.Tensor]) -> torch.Tensor:
        return images[index[0]]

    def modules(self, k: int) -> dict[str, nn.Module]:
        return self.nets

    def optims_of(self, k: int) -> dict[str, torch.optim.Optimizer]:
        return self.optims

    def train_mode(self) -> None:
        for net in self.nets.values():
            if not net.training:  # a callback's evaluation restores the mode itself; the walk costs ~1 ms
                net.train()

    def sync(self, pos: int, k: int) -> None:
        pass  # the modules are the ones trained

    def save(self, pos: int, k: int, checkpoint: Checkpoints, epoch: int, config: RunConfig, gen: torch.Generator,
             history: list[EpochStats]) -> None:
        checkpoint.save(epoch, config, self.nets, self.optims, gen, history)

    def keep(self, positions: list[int]) -> None:
        raise AssertionError("a seed alone leaves by ending the run")

    def finish(self, live: list[int]) -> None:
        pass


def run_epoch(group, data: Domains, config: RunConfig, gens: list[torch.Generator], gan, autocast,
              steps: Eager | Replay) -> tuple[dict[str, torch.Tensor], int]:
    """One pass over all N pairs in both directions for each seed of the group: each seed draws its pairing and
    batch order from its own generator, in the same order as alone. Returns per-seed (K,) loss sums on the
    device and the step count."""
    n, bs, device = data.n, config.batch_size, data.x.device
    pis = [data.pairing_for_epoch(g).to(device) for g in gens]
    orders = [torch.randperm(n, generator=g).to(device) for g in gens]
    nets, optims = group.step_nets, group.optims
    sums: dict[str, torch.Tensor] = {}
    count = 0

    def add(losses: dict[str, torch.Tensor]) -> None:
        nonlocal count
        count += 1
        for k, v in losses.items():
            v = v.float().reshape(-1)  # (K,); a seed alone's scalar as K = 1
            # stays on the device (no per-step sync); a copy, since a replay overwrites its outputs next step
            sums[k] = sums[k] + v if k in sums else v.clone()

    batches = list(zip(*(o.split(bs) for o in orders), strict=True))
    if config.scheme == "cyclegan":  # never fused (check_fusable): one seed
        for (idx,) in batches:
            # unpaired: Y batches come from an independent order
            y_idx = torch.randperm(n, generator=gens[0])[: len(idx)].to(device)
            group.step_begin()
            add(steps("cyclegan", lambda x, y: cyclegan_step(nets, optims, x, y, config, gan, autocast),
                      data.x[idx], data.y[y_idx]))
        return sums, count
    pairs = [(group.batch(data.x, list(b)), group.batch(data.y, [pi[idx] for idx, pi in zip(b, pis, strict=True)]))
             for b in batches]
    two_way, l1 = config.scheme != "pix2pix", l1_loss(per_seed=group.per_seed)
    for src, tgt in scheduled(pairs, config, batch_dim=group.batch_dim):
        group.step_begin()
        add(steps("paired", lambda s, t: paired_step(nets, optims, s, t, config, gan, autocast, two_way, l1),
                  src, tgt))
    return sums, count


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


def host_means(sums: dict[str, torch.Tensor], steps: int) -> list[dict[str, float]]:
    """Each seed's mean losses over the epoch's steps, read in the epoch's one host sync."""
    keys = list(sums)
    if not keys:
        return []
    rows = (torch.stack([sums[k] for k in keys], 1) / steps).tolist()  # (K, losses)
    return [dict(zip(keys, row, strict=True)) for row in rows]


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


def autocaster(precision: str, device: torch.device, cache: bool = True) -> Callable:
    """The context each forward pass runs in: bf16 autocast, or nothing. A replayed step casts the weights
    inside the graph on every replay (cache=False): a cast cached at capture would be stale after an update."""
    def autocast():
        if precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)

    return autocast


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


def load_optimizer(opt: torch.optim.Optimizer, saved: dict) -> None:
    """The saved moments and step counts into `opt`, which keeps its own execution (fused, capturable): a state
    dict carries the flags it was saved with, and a checkpoint from a CPU run resumed with CUDA graphs would
    otherwise refuse capture (capturable=False), and one from a replayed run refuse the CPU."""
    flags = [{k: g[k] for k in ("fused", "capturable", "foreach")} for g in opt.param_groups]
    opt.load_state_dict(saved)
    for group, own in zip(opt.param_groups, flags, strict=True):
        group.update(own)
        on_device = own["fused"] or own["capturable"]  # where Adam keeps the step count for this execution
        for p in group["params"]:
            if "step" in opt.state.get(p, {}):
                opt.state[p]["step"] = opt.state[p]["step"].to(torch.float32).to(p.device if on_device else "cpu")


def _resume(path: Path, config: RunConfig, nets, optims, gen) -> tuple[int, list[EpochStats]]:
    state = check_resumable(path, config)
    for k, net in nets.items():
        net.load_state_dict(state["nets"][k])
    for k, opt in optims.items():
        load_optimizer(opt, state["optims"][k])
    gen.set_state(state["rng"]["data"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["epoch"], [EpochStats(**s) for s in state["history"]]


def run_seeds(configs: list[RunConfig], group, data: Domains, gens: list[torch.Generator], device: torch.device,
              callbacks: list, checkpoints: list, build_s: float, progress: bool = False, desc: str = "train",
              start: int = 0, histories: list[list[EpochStats]] | None = None) -> list[TrainResult]:
    """The one epoch loop: the K seeds of `group` (Alone: K = 1; cyclelike.fused.Stacked: K > 1) trained side by
    side. Each seed's callback sees its own epochs and translator (epoch 0 once, before training, when starting
    from scratch) and stops (prunes) that seed by returning True; a seed whose losses go non-finite leaves with
    `diverged`; the others continue exactly as without them. Each seed's checkpoint, when due, is saved after its
    callback has seen the epoch."""
    config, K = configs[0], len(configs)
    precision = resolve_precision(config.precision, device)
    execution = resolve_execution(config, device)
    gan = gan_criterion(config.gan_loss, per_seed=group.per_seed)
    autocast = autocaster(precision, device, cache=not execution["replay"])
    steps = stepper(execution, device, lambda: (group.step_nets, group.optims))  # notes a fallback in execution
    live = list(range(K))  # seed positions still in the group, in stack order
    histories = histories if histories is not None else [[] for _ in range(K)]
    stopped, diverged = [False] * K, [None] * K
    translators = [make_translator(group.modules(k), config.scheme) for k in range(K)]
    for k, callback in enumerate(callbacks):
        if callback is not None and start == 0:
            callback(EpochStats(0, 0.0, {}), translators[k])  # the untrained map: where formation starts from
    bar = tqdm(range(start + 1, config.epochs + 1), desc=desc, unit="epoch", disable=not progress,
               initial=start, total=config.epochs, leave=False, dynamic_ncols=True)
    last_save = time.monotonic()
    for epoch in bar:
        group.train_mode()
        _sync(device)
        t0 = time.perf_counter()
        sums, count = run_epoch(group, data, config, [gens[k] for k in live], gan, autocast, steps)
        _sync(device)
        epoch_s = time.perf_counter() - t0
        drop = []
        for pos, (k, raw) in enumerate(zip(live, host_means(sums, count) or [{}] * len(live), strict=True)):
            stats = EpochStats(epoch, epoch_s, epoch_losses(raw, config), seeds=K)
            histories[k].append(stats)
            bad = {name: v for name, v in stats.losses.items() if v != v or v in (float("inf"), float("-inf"))}
            if bad:  # this seed alone fails; the others, independent in the stack, go on as without it
                diverged[k] = NonFiniteLossError(f"epoch {epoch}: non-finite loss {bad}", epoch)
                drop.append(pos)
                continue
            if callbacks[k] is not None:
                group.sync(pos, k)
                if callbacks[k](stats, translators[k]):
                    stopped[k] = True
                    drop.append(pos)
        saved = False
        for pos, k in enumerate(live):  # stack positions as they were this epoch, before any drop
            if checkpoints[k] is not None and diverged[k] is None and \
                    checkpoints[k].due(epoch, last_save, last=stopped[k] or epoch == config.epochs):
                group.save(pos, k, checkpoints[k], epoch, configs[k], gens[k], histories[k])
                saved = True
        if saved:
            last_save = time.monotonic()
        losses = histories[live[0]][-1].losses
        bar.set_postfix({"s/epoch": f"{epoch_s:.2f}", **({"seeds": len(live) - len(drop)} if K > 1 else
                         {"D": f"{losses.get('loss/D', 0):.3f}", "G": f"{losses.get('loss/G_total', 0):.3f}"})},
                        refresh=False)
        if drop:
            live = [k for pos, k in enumerate(live) if pos not in drop]
            if not live:
                break
            group.keep([pos for pos in range(len(live) + len(drop)) if pos not in drop])
            steps.reset()  # the graphs captured the networks and optimizers the group just replaced
    bar.close()
    group.finish(live)
    return [TrainResult(c, histories[k], group.modules(k), translators[k], str(device), precision, stopped[k],
                        start, group.optims_of(k), diverged[k], build_s, execution) for k, c in enumerate(configs)]


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
    step taken, no losses) once before training, then every epoch; its answer at epoch 0 is ignored. Raises
    NonFiniteLossError at the first epoch whose losses are not finite."""
    config.validate()
    device = resolve_device(config.device)
    resolve_execution(config, device)  # refuses replay=on without CUDA before any work
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    data = (data if data is not None else load_domains(config)).to(device)
    torch.manual_seed(config.seed)  # initialisation and dropout
    gen = torch.Generator().manual_seed(config.seed)  # batch order and shuffled pairings
    t0 = time.perf_counter()
    nets, optims = build(config, device)
    build_s = time.perf_counter() - t0
    start, history = 0, []
    if checkpoint is not None and not isinstance(checkpoint, Checkpoints):
        checkpoint = Checkpoints(Path(checkpoint), every=checkpoint_every)
    if checkpoint is not None and checkpoint.path.exists():
        start, history = _resume(checkpoint.path, config, nets, optims, gen)
    (result,) = run_seeds([config], Alone(nets, optims, config, device), data, [gen], device, [callback], [checkpoint],
                          build_s, progress, desc, start, [history])
    if result.diverged is not None:
        raise result.diverged
    return result
