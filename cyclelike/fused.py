"""Fused seeds: the K seeds of one condition trained as ONE stacked model (HFTA, Wang et al. 2021).

Each seed keeps its own initialisation, batch order, shuffled pairings and Adam state; only the
execution is shared. Parameters are stacked along a new first axis (`torch.func.stack_module_state`)
and each network runs once per step under `vmap`, whose convolution rule turns the K convolutions into
one grouped convolution. The loss is the sum of the K seeds' losses: seeds share no parameter, so each
slice's gradient is its own seed's, and one elementwise Adam over the stacked tensors is K Adams.

What differs from K runs alone: summation order in reductions (fp32 rounding, ~1e-6). Dropout is refused:
its masks would come from one generator for the whole stack, so no seed would be the seed alone and
dropping one seed would change the others' masks. A seed whose callback says stop (pruned) is removed
from the stack; the others continue exactly as before.

Checkpoints are per seed and in the format of a run alone: a killed group's trials are retried one by
one (never fused again), each resuming from its own seed's state.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state
from tqdm.auto import tqdm

from .config import ConfigError, NonFiniteLossError, RunConfig
from .data import Domains, load_domains
from .train import (
    Checkpoints,
    EpochStats,
    TrainResult,
    Translator,
    _sync,
    adam,
    build,
    epoch_losses,
    gan_criterion,
    l1_loss,
    make_translator,
    paired_step,
    resolve_device,
    resolve_precision,
    scheduled,
)

Callback = Callable[[EpochStats, Translator], bool | None]


def check_fusable(configs: list[RunConfig]) -> None:
    """One condition, several seeds, and a scheme and norm that a stacked model computes exactly."""
    if not configs:
        raise ConfigError("fuse_seeds: no configuration to train")
    first = configs[0].validate()
    for c in configs[1:]:
        c.validate()
        changed = sorted(k for k, v in first.condition().items() if c.condition()[k] != v)
        if changed:
            raise ConfigError(f"fuse_seeds: the runs differ in {', '.join(changed)}; only seeds of one condition fuse")
    if first.scheme == "cyclegan":
        raise ConfigError("fuse_seeds: scheme=cyclegan is not fused (two generators per seed); use cyclelike or "
                          "pix2pix, or fuse_seeds=false")
    if first.norm == "batch":
        raise ConfigError("fuse_seeds: norm=batch keeps running statistics that vmap cannot update per seed; "
                          "use norm=instance or none, or fuse_seeds=false")
    if first.compile:
        raise ConfigError("fuse_seeds: compile=true is not supported with fused seeds")
    if first.dropout > 0:
        raise ConfigError(f"fuse_seeds: dropout={first.dropout:g} draws every seed's masks from one generator, so a "
                          "fused seed would not be the seed alone; use dropout=0 or fuse_seeds=false")


class Stack:
    """K copies of one network as stacked tensors, run once under vmap."""

    def __init__(self, modules: list[nn.Module]):
        self.template = copy.deepcopy(modules[0]).to("meta")
        self.params, self.buffers = stack_module_state(modules)
        self.forward = torch.vmap(self._call, randomness="error")  # check_fusable refuses dropout

    def _call(self, params, buffers, *args):
        return functional_call(self.template, (params, buffers), args)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        return self.forward(self.params, self.buffers, *args)

    def requires_grad_(self, flag: bool) -> Stack:
        for p in self.params.values():
            p.requires_grad_(flag)
        return self

    def keep(self, index: torch.Tensor) -> None:
        self.params = {k: v.detach()[index].requires_grad_(v.requires_grad) for k, v in self.params.items()}
        self.buffers = {k: v[index] for k, v in self.buffers.items()}

    def copy_into(self, k: int, module: nn.Module) -> None:
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(self.params[name][k])
            for name, b in module.named_buffers():
                if name in self.buffers:
                    b.copy_(self.buffers[name][k])


def _adam(stacks: list[Stack], config: RunConfig, state: dict | None = None,
          index: torch.Tensor | None = None) -> torch.optim.Adam:
    """One Adam over the stacked tensors (elementwise, so K independent Adams); with `state`, the moments
    of the seeds in `index` carried over from the previous stack."""
    params = [p for s in stacks for p in s.params.values()]
    opt = adam(params, config, params[0].device)
    if state is not None:
        for p, old in zip(params, state["params"], strict=True):
            if old is not None:
                opt.state[p] = {k: (v if v.dim() == 0 else v[index].clone()) for k, v in old.items()}
    return opt


def _snapshot(opt: torch.optim.Adam) -> dict:
    return {"params": [opt.state.get(p) for g in opt.param_groups for p in g["params"]]}


def _save_seed(checkpoint: Checkpoints, pos: int, epoch: int, config: RunConfig, G: Stack, D: Stack,
               optims: dict[str, torch.optim.Adam], nets: dict[str, nn.Module], gen: torch.Generator,
               history: list[EpochStats]) -> None:
    """The seed at stack position `pos` saved as its run alone would save itself: its networks, its slice
    of the stacked Adam moments as an Adam of its own, its generator and history."""
    alone = {}
    for name, stack in (("G", G), ("D", D)):
        stack.copy_into(pos, nets[name])
        opt = adam(nets[name].parameters(), config, next(nets[name].parameters()).device)
        for p, stacked in zip(nets[name].parameters(), stack.params.values(), strict=True):
            if stacked in optims[name].state:
                opt.state[p] = {k: v.clone() if v.dim() == 0 else v[pos].clone()
                                for k, v in optims[name].state[stacked].items()}
        alone[name] = opt
    checkpoint.save(epoch, config, nets, alone, gen, history)


def run_epoch_fused(G, D, optims, data: Domains, config: RunConfig, gens: list[torch.Generator], gan, autocast):
    """cyclelike.train.run_epoch for K seeds: each seed draws its own pairing and batch order from its own
    generator, in the same order as alone; returns (K,) loss sums and the step count."""
    n, bs = data.n, config.batch_size
    device = data.x.device
    pis = [data.pairing_for_epoch(g).to(device) for g in gens]
    orders = [torch.randperm(n, generator=g).to(device) for g in gens]
    sums: dict[str, torch.Tensor] = {}
    steps = 0

    def add(losses):
        nonlocal steps
        steps += 1
        for k, v in losses.items():
            sums[k] = sums[k] + v if k in sums else v.float()

    batches = list(zip(*(o.split(bs) for o in orders), strict=True))
    pairs = [(torch.stack([data.x[idx] for idx in b]),
              torch.stack([data.y[pi[idx]] for idx, pi in zip(b, pis, strict=True)])) for b in batches]
    # the same order as alone; a joint batch stacks both directions on the batch axis, axis 1 here
    for src, tgt in scheduled(pairs, config, batch_dim=1):
        add(paired_step({"G": G, "D": D}, optims, src, tgt, config, gan, autocast, two_way=config.scheme != "pix2pix",
                        l1=l1_loss(per_seed=True)))
    return sums, steps


def train_fused(configs: list[RunConfig], data: Domains | None = None,
                callbacks: list[Callback | None] | None = None, progress: bool = False,
                desc: str = "fused", checkpoints: list[Checkpoints | None] | None = None) -> list[TrainResult]:
    """Train the seeds of one condition as one stacked model; one TrainResult per config, in order.

    Each callback sees its own seed's epochs and translator, as with cyclelike.train.train; a callback
    that returns True stops (prunes) that seed only. Each seed's `checkpoints` (when due, after its callback)
    are files that cyclelike.train.train resumes that seed from alone; the group itself never resumes.
    `epoch_s` is the whole group's epoch time: K seeds share it, and a run records `fuse_seeds` so that no
    one reads it as one seed's time."""
    check_fusable(configs)
    config = configs[0]
    K = len(configs)
    callbacks = list(callbacks) if callbacks is not None else [None] * K
    checkpoints = list(checkpoints) if checkpoints is not None else [None] * K
    device = resolve_device(config.device)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    data = (data if data is not None else load_domains(config)).to(device)
    gens, seeds_nets = [], []
    t0 = time.perf_counter()
    for c in configs:  # the order of train(): global seed (initialisation), generator, build
        torch.manual_seed(c.seed)
        gens.append(torch.Generator().manual_seed(c.seed))
        seeds_nets.append(build(c, device)[0])
    G = Stack([nets["G"] for nets in seeds_nets])
    D = Stack([nets["D"] for nets in seeds_nets])
    optims = {"G": _adam([G], config), "D": _adam([D], config)}
    build_s = (time.perf_counter() - t0) / K
    gan = gan_criterion(config.gan_loss, per_seed=True)
    precision = resolve_precision(config.precision, device)

    def autocast():
        if precision != "bf16":
            return torch.autocast(device_type=device.type, enabled=False)
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    live = list(range(K))  # seed positions still in the stack, in stack order
    histories: list[list[EpochStats]] = [[] for _ in range(K)]
    stopped = [False] * K
    diverged: list[NonFiniteLossError | None] = [None] * K
    translators = [make_translator(nets, config.scheme) for nets in seeds_nets]
    for k, callback in enumerate(callbacks):
        if callback is not None:
            callback(EpochStats(0, 0.0, {}), translators[k])  # each seed's untrained map, as train() does
    bar = tqdm(range(1, config.epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False,
               dynamic_ncols=True)
    last_save = time.monotonic()
    for epoch in bar:
        _sync(device)
        t0 = time.perf_counter()
        sums, steps = run_epoch_fused(G, D, optims, data, config, [gens[k] for k in live], gan, autocast)
        _sync(device)
        epoch_s = time.perf_counter() - t0
        drop = []
        for pos, k in enumerate(live):
            losses = epoch_losses({name: v[pos] for name, v in sums.items()}, steps, config)
            stats = EpochStats(epoch, epoch_s, losses, seeds=K)
            histories[k].append(stats)
            bad = {name: v for name, v in losses.items() if v != v or v in (float("inf"), float("-inf"))}
            if bad:  # this seed alone fails; the others, independent in the stack, go on as without it
                diverged[k] = NonFiniteLossError(f"epoch {epoch}: non-finite loss {bad}", epoch)
                drop.append(pos)
                continue
            if callbacks[k] is not None:
                G.copy_into(pos, seeds_nets[k]["G"])
                if callbacks[k](stats, translators[k]):
                    stopped[k] = True
                    drop.append(pos)
        saved = False
        for pos, k in enumerate(live):  # stack positions as they were this epoch, before any drop
            due = checkpoints[k] is not None and diverged[k] is None and \
                checkpoints[k].due(epoch, last_save, last=stopped[k] or epoch == config.epochs)
            if due:
                _save_seed(checkpoints[k], pos, epoch, configs[k], G, D, optims, seeds_nets[k], gens[k], histories[k])
                saved = True
        if saved:
            last_save = time.monotonic()
        if drop:
            keep = torch.tensor([p for p in range(len(live)) if p not in drop], dtype=torch.long)
            live = [live[p] for p in keep.tolist()]
            if not live:
                break
            states = {name: _snapshot(opt) for name, opt in optims.items()}
            for stack in (G, D):
                stack.keep(keep.to(device))
            optims = {"G": _adam([G], config, states["G"], keep.to(device)),
                      "D": _adam([D], config, states["D"], keep.to(device))}
        bar.set_postfix({"s/epoch": f"{epoch_s:.2f}", "seeds": len(live)}, refresh=False)
    bar.close()
    for pos, k in enumerate(live):
        G.copy_into(pos, seeds_nets[k]["G"])
        D.copy_into(pos, seeds_nets[k]["D"])
    return [TrainResult(c, histories[k], seeds_nets[k], translators[k], str(device), precision, stopped[k],
                        diverged=diverged[k], build_s=build_s) for k, c in enumerate(configs)]
