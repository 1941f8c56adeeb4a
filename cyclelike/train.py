"""Training: `train(configs)` trains the seeds of one condition, one alone or K side by side.

One epoch is every one of the N pairs in both directions, discriminator and generator steps included; each scheme's
step is one function in cyclelike.steps. The callbacks see every epoch's stats and the current translator (to
evaluate pairing for pruning) and stop a seed by returning True. Nothing here knows about Optuna or MLflow.

The epoch loop is one for any number of seeds: it trains a `SeedGroup`, one seed on its plain modules (`OneSeed`)
or the K seeds of one condition as one stacked model (cyclelike.fused.FusedSeeds). How a step executes (fused
kernels, channels-last, steps replayed as CUDA graphs) is resolved per device by cyclelike.execution and never
changes the maths.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import Checkpoints, resume
from .config import NonFiniteLossError, RunConfig
from .data import Domains, load_domains
from .execution import resolve_device, resolve_execution, resolve_precision
from .fused import FusedSeeds, check_fusable
from .nets import build
from .replay import Eager, Replay, executor
from .steps import autocaster, cyclegan_step, epoch_losses, gan_criterion, l1_loss, paired_step, scheduled


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


Callback = Callable[[EpochStats, Translator], bool | None]


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

    @property
    def seed_seconds(self) -> float:
        """This seed's own training seconds over every epoch it trained, before a resume too (the checkpoint keeps
        the history): a fused epoch counts its time over the K seeds that shared it."""
        return sum(s.epoch_s / s.seeds for s in self.history)

    @property
    def trained_seconds(self) -> float:
        """The seconds of the epochs trained here (after any resume): training alone, without what a caller does
        between epochs (evaluations, logging, checkpoints)."""
        return sum(s.epoch_s for s in self.history if s.epoch > self.resumed_from_epoch)


def timed_text(sec_per_epoch: float, warmup_epochs: int) -> str:
    """What the commands print for a run's time per epoch, or why there is none."""
    if sec_per_epoch != sec_per_epoch:
        return f"no timed epochs (warmup_epochs={warmup_epochs} >= epochs)"
    return f"{sec_per_epoch:.3f} s/epoch (median after {warmup_epochs} warm-up)"


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


class SeedGroup(Protocol):
    """The seeds the epoch loop trains side by side, numbered 0..K-1 as their configs were given. A step runs once for
    all of them on `step_nets` and updates `optims`; each seed keeps networks and optimizers of its own, which its
    evaluation, checkpoints and result read."""

    per_seed: bool  # a step's losses are one per seed (K,), or one scalar
    batch_dim: int  # the axis a joint batch stacks both directions on
    live: list[int]  # the seeds still training, in the order of the step's losses
    step_nets: dict
    optims: dict

    def batch(self, images: torch.Tensor, index: list[torch.Tensor]) -> torch.Tensor:
        """The images at each live seed's `index`, as a step takes them."""

    def trained(self, k: int) -> dict[str, nn.Module]:
        """Seed k's own networks, holding what it has trained so far."""

    def optimizers(self, k: int) -> dict[str, torch.optim.Optimizer]:
        """Seed k's own optimizers, as a run of it alone would hold them."""

    def leave(self, seeds: list[int]) -> None:
        """These seeds stop training (pruned or diverged); the others go on exactly as without them."""


class OneSeed:
    """One seed on its own modules and optimizers, no vmap: it trains exactly the modules it is evaluated and
    checkpointed with."""

    per_seed = False
    batch_dim = 0

    def __init__(self, nets: dict[str, nn.Module], optims: dict[str, torch.optim.Optimizer], config: RunConfig,
                 device: torch.device):
        self.nets, self.optims = nets, optims
        self.live = [0]
        # compiled wrappers share the parameters; checkpoints and evaluation keep using the plain modules. On CUDA
        # reduce-overhead replays CUDA graphs of the compiled networks (replay=on captures whole steps instead)
        mode = "reduce-overhead" if device.type == "cuda" else None
        self.step_nets = {k: torch.compile(v, mode=mode) for k, v in nets.items()} if config.compile else nets

    def batch(self, images: torch.Tensor, index: list[torch.Tensor]) -> torch.Tensor:
        return images[index[0]]

    def trained(self, k: int) -> dict[str, nn.Module]:
        return self.nets

    def optimizers(self, k: int) -> dict[str, torch.optim.Optimizer]:
        return self.optims

    def leave(self, seeds: list[int]) -> None:
        self.live = [k for k in self.live if k not in seeds]


def run_epoch(group: SeedGroup, data: Domains, config: RunConfig, gens: list[torch.Generator], gan, autocast,
              run_step: Eager | Replay) -> tuple[dict[str, torch.Tensor], int]:
    """One pass over all N pairs in both directions for each live seed of the group: each seed draws its pairing and
    batch order from its own generator, in the same order as alone. Returns per-seed (K,) loss sums on the device
    and the number of steps."""
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
            add(run_step("cyclegan", lambda x, y: cyclegan_step(nets, optims, x, y, config, gan, autocast),
                         data.x[idx], data.y[y_idx]))
        return sums, count
    pairs = [(group.batch(data.x, list(b)), group.batch(data.y, [pi[idx] for idx, pi in zip(b, pis, strict=True)]))
             for b in batches]
    two_way, l1 = config.scheme != "pix2pix", l1_loss(per_seed=group.per_seed)
    for src, tgt in scheduled(pairs, config, batch_dim=group.batch_dim):
        add(run_step("paired", lambda s, t: paired_step(nets, optims, s, t, config, gan, autocast, two_way, l1),
                     src, tgt))
    return sums, count


def host_means(sums: dict[str, torch.Tensor], count: int) -> list[dict[str, float]]:
    """Each seed's mean losses over the epoch's `count` steps, read in the epoch's one host sync."""
    keys = list(sums)
    if not keys:
        return []
    rows = (torch.stack([sums[k] for k in keys], 1) / count).tolist()  # (K, losses)
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(configs: list[RunConfig], data: Domains | None = None, callbacks: list[Callback | None] | None = None,
          checkpoints: list[Checkpoints | None] | None = None, progress: bool = False,
          desc: str = "train") -> list[TrainResult]:
    """Train the seeds of one condition; one TrainResult per config, in order. One config trains alone on its plain
    modules; K configs of one condition train as one stacked model (cyclelike.fused), each seed with its own
    initialisation, batch order, shuffled pairings and Adam state, as alone.

    Each seed's callback sees epoch 0 (no step taken, no losses) once before training, when starting from scratch,
    then each of its epochs with its translator; its answer at epoch 0 is ignored, and True later stops (prunes) that
    seed only. Each seed's `checkpoints` (when due, after its callback has seen the epoch) are files a run of that
    seed alone resumes from: one seed alone resumes from its file where it exists; a group never resumes (a killed
    group's seeds are retried one by one). A seed alone whose losses go non-finite raises NonFiniteLossError; in a
    group it leaves the stack with `diverged` and the others go on. A group's `epoch_s` is the whole group's epoch
    time: K seeds share it (EpochStats.seeds)."""
    K = len(configs)
    if K == 1:
        configs[0].validate()
    else:
        check_fusable(configs)
    config = configs[0]
    device = resolve_device(config.device)
    execution = resolve_execution(config, device)  # refuses replay=on without CUDA before any work
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    data = (data if data is not None else load_domains(config)).to(device)
    callbacks, checkpoints = list(callbacks or [None] * K), list(checkpoints or [None] * K)
    gens, seeds = [], []
    t0 = time.perf_counter()
    for c in configs:
        torch.manual_seed(c.seed)  # initialisation and dropout
        gens.append(torch.Generator().manual_seed(c.seed))  # batch order and shuffled pairings
        seeds.append(build(c, device))
    build_s = (time.perf_counter() - t0) / K
    start, histories = 0, [[] for _ in configs]
    if K == 1 and checkpoints[0] is not None and checkpoints[0].path.exists():
        start, saved = resume(checkpoints[0].path, config, *seeds[0], gens[0])
        histories = [[EpochStats(**s) for s in saved]]
    group = OneSeed(*seeds[0], config, device) if K == 1 else FusedSeeds(seeds, configs)
    precision = resolve_precision(config.precision, device)
    gan = gan_criterion(config.gan_loss, per_seed=group.per_seed)
    autocast = autocaster(precision, device, cache=not execution["replay"])
    run_step = executor(execution, device, lambda: (group.step_nets, group.optims), compiled=config.compile)
    stopped, diverged = [False] * K, [None] * K
    for k, callback in enumerate(callbacks):
        if callback is not None and start == 0:
            callback(EpochStats(0, 0.0, {}), make_translator(group.trained(k), config.scheme))  # the untrained map
    bar = tqdm(range(start + 1, config.epochs + 1), desc=desc, unit="epoch", disable=not progress,
               initial=start, total=config.epochs, leave=False, dynamic_ncols=True)
    last_save = time.monotonic()
    for epoch in bar:
        _synchronize(device)
        t0 = time.perf_counter()
        sums, count = run_epoch(group, data, config, [gens[k] for k in group.live], gan, autocast, run_step)
        _synchronize(device)
        epoch_s = time.perf_counter() - t0
        live, leaving = list(group.live), []
        for k, raw in zip(live, host_means(sums, count) or [{}] * len(live), strict=True):
            stats = EpochStats(epoch, epoch_s, epoch_losses(raw, config), seeds=K)
            histories[k].append(stats)
            bad = {name: v for name, v in stats.losses.items() if v != v or v in (float("inf"), float("-inf"))}
            if bad:  # this seed alone fails; the others, independent in the stack, go on as without it
                diverged[k] = NonFiniteLossError(f"epoch {epoch}: non-finite loss {bad}", epoch)
                leaving.append(k)
            elif callbacks[k] is not None and callbacks[k](stats, make_translator(group.trained(k), config.scheme)):
                stopped[k] = True
                leaving.append(k)
        saved = False
        for k in live:
            if checkpoints[k] is not None and diverged[k] is None and \
                    checkpoints[k].due(epoch, last_save, last=stopped[k] or epoch == config.epochs):
                checkpoints[k].save(epoch, configs[k], group.trained(k), group.optimizers(k), gens[k], histories[k])
                saved = True
        if saved:
            last_save = time.monotonic()
        losses = histories[live[0]][-1].losses
        bar.set_postfix({"s/epoch": f"{epoch_s:.2f}", **({"seeds": len(live) - len(leaving)} if K > 1 else
                         {"D": f"{losses.get('loss/D', 0):.3f}", "G": f"{losses.get('loss/G_total', 0):.3f}"})},
                        refresh=False)
        if leaving:
            group.leave(leaving)
            if not group.live:
                break
    bar.close()
    results = [TrainResult(c, histories[k], group.trained(k), make_translator(group.trained(k), config.scheme),
                           str(device), precision, stopped[k], start, group.optimizers(k), diverged[k], build_s,
                           execution) for k, c in enumerate(configs)]
    if K == 1 and diverged[0] is not None:
        raise diverged[0]
    return results
