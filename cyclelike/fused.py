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
one (never fused again), each resuming from its own seed's state. The epoch loop is cyclelike.train's
`run_seeds`, the one a seed alone runs; `Stacked` is the group it drives here.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from .config import SWITCHES, ConfigError, RunConfig
from .data import Domains, load_domains
from .execution import condition, resolve_device, resolve_execution, resolve_precision
from .train import Alone, Checkpoints, EpochStats, TrainResult, Translator, adam, build, run_seeds

Callback = Callable[[EpochStats, Translator], bool | None]


def check_fusable(configs: list[RunConfig]) -> None:
    """One condition, several seeds, and a scheme and norm that a stacked model computes exactly."""
    if not configs:
        raise ConfigError("fuse_seeds: no configuration to train")
    first = configs[0].validate()
    for c in configs[1:]:
        c.validate()
        changed = sorted(k for k, v in condition(first).items() if condition(c)[k] != v)
        changed += sorted(k for k in SWITCHES if getattr(c, k) != getattr(first, k))  # one stack runs one way
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
    device = resolve_device(first.device)
    if resolve_precision(first.precision, device) == "bf16" and not vmap_autocasts(device.type):
        raise ConfigError(f"fuse_seeds: precision=bf16 on {device.type}: this torch's autocast leaves convolutions "
                          "under vmap in fp32, so a fused seed would not compute what it computes alone (in bf16); use "
                          "precision=fp32 or fuse_seeds=false")


@functools.cache
def vmap_autocasts(device_type: str) -> bool:
    """Whether autocast casts a convolution under vmap on this kind of device, as it does one alone. On CPU (torch
    2.14) it does not: the batching rule calls the convolution past autocast, in fp32."""
    w, x = torch.zeros(2, 1, 1, 1, 1, device=device_type), torch.zeros(2, 1, 1, 2, 2, device=device_type)
    with torch.autocast(device_type, dtype=torch.bfloat16):
        return torch.vmap(torch.nn.functional.conv2d)(x, w).dtype == torch.bfloat16


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


class Stacked:
    """K seeds of one condition as one stacked G and one stacked D (the engine's group for K > 1): each step
    runs once for all of them, each seed's losses are its own (K,) and their sum's gradient is each seed's."""

    per_seed = True
    batch_dim = 1  # axis 0 is the seed

    def __init__(self, seeds_nets: list[dict[str, nn.Module]], config: RunConfig):
        self.seeds_nets, self.config = seeds_nets, config
        self.G = Stack([nets["G"] for nets in seeds_nets])
        self.D = Stack([nets["D"] for nets in seeds_nets])
        self.step_nets = {"G": self.G, "D": self.D}
        self.optims = {"G": _adam([self.G], config), "D": _adam([self.D], config)}

    def batch(self, images: torch.Tensor, index: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([images[idx] for idx in index])

    def step_begin(self) -> None:
        pass

    def modules(self, k: int) -> dict[str, nn.Module]:
        return self.seeds_nets[k]

    def optims_of(self, k: int) -> dict:
        return {}  # the stacked Adam is no seed's own; a checkpoint saves each seed's slice (save)

    def train_mode(self) -> None:
        pass  # the stacks run the template, always in training mode; evaluation uses the seed's own modules

    def sync(self, pos: int, k: int) -> None:
        self.G.copy_into(pos, self.seeds_nets[k]["G"])  # what the seed's translator evaluates

    def save(self, pos: int, k: int, checkpoint: Checkpoints, epoch: int, config: RunConfig, gen: torch.Generator,
             history: list[EpochStats]) -> None:
        """The seed at stack position `pos` saved as its run alone would save itself: its networks, its slice
        of the stacked Adam moments as an Adam of its own, its generator and history."""
        nets, alone = self.seeds_nets[k], {}
        for name, stack in (("G", self.G), ("D", self.D)):
            stack.copy_into(pos, nets[name])
            params = list(nets[name].parameters())
            opt = adam(params, config, params[0].device)
            for p, stacked in zip(params, stack.params.values(), strict=True):
                if stacked in self.optims[name].state:
                    opt.state[p] = {key: v.clone() if v.dim() == 0 else v[pos].clone()
                                    for key, v in self.optims[name].state[stacked].items()}
            alone[name] = opt
        checkpoint.save(epoch, config, nets, alone, gen, history)

    def keep(self, positions: list[int]) -> None:
        index = torch.tensor(positions, dtype=torch.long, device=next(iter(self.G.params.values())).device)
        states = {name: _snapshot(opt) for name, opt in self.optims.items()}
        for stack in (self.G, self.D):
            stack.keep(index)
        self.optims = {"G": _adam([self.G], self.config, states["G"], index),
                       "D": _adam([self.D], self.config, states["D"], index)}

    def finish(self, live: list[int]) -> None:
        for pos, k in enumerate(live):
            self.G.copy_into(pos, self.seeds_nets[k]["G"])
            self.D.copy_into(pos, self.seeds_nets[k]["D"])


def train_fused(configs: list[RunConfig], data: Domains | None = None,
                callbacks: list[Callback | None] | None = None, progress: bool = False,
                desc: str = "fused", checkpoints: list[Checkpoints | None] | None = None) -> list[TrainResult]:
    """Train the seeds of one condition as one stacked model; one TrainResult per config, in order.

    Each callback sees its own seed's epochs and translator, as with cyclelike.train.train; a callback
    that returns True stops (prunes) that seed only. Each seed's `checkpoints` (when due, after its callback)
    are files that cyclelike.train.train resumes that seed from alone; the group itself never resumes.
    `epoch_s` is the whole group's epoch time: K seeds share it, and a run records `fuse_seeds` so that no
    one reads it as one seed's time. K = 1 trains the seed's plain modules, with no vmap."""
    check_fusable(configs)
    config = configs[0]
    K = len(configs)
    device = resolve_device(config.device)
    resolve_execution(config, device)  # refuses replay=on without CUDA before any work
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    data = (data if data is not None else load_domains(config)).to(device)
    gens, seeds_nets, seeds_optims = [], [], []
    t0 = time.perf_counter()
    for c in configs:  # the order of train(): global seed (initialisation), generator, build
        torch.manual_seed(c.seed)
        gens.append(torch.Generator().manual_seed(c.seed))
        nets, optims = build(c, device)
        seeds_nets.append(nets)
        seeds_optims.append(optims)
    group = Alone(seeds_nets[0], seeds_optims[0], config, device) if K == 1 else Stacked(seeds_nets, config)
    build_s = (time.perf_counter() - t0) / K
    return run_seeds(configs, group, data, gens, device, list(callbacks or [None] * K),
                     list(checkpoints or [None] * K), build_s, progress, desc)
