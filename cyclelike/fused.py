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
one (never fused again), each resuming from its own seed's state. The epoch loop is cyclelike.train's, the one a
seed alone runs; `FusedSeeds` is the seed group it drives here.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from .config import SWITCHES, ConfigError, RunConfig
from .execution import condition, resolve_device, resolve_precision
from .nets import adam


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


class StackedNet:
    """K copies of one network as stacked tensors, run once under vmap."""

    def __init__(self, modules: list[nn.Module]):
        self.template = copy.deepcopy(modules[0]).to("meta")
        self.params, self.buffers = stack_module_state(modules)
        self.forward = torch.vmap(self._call, randomness="error")  # check_fusable refuses dropout

    def _call(self, params, buffers, *args):
        return functional_call(self.template, (params, buffers), args)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        return self.forward(self.params, self.buffers, *args)

    def requires_grad_(self, flag: bool) -> StackedNet:
        for p in self.params.values():
            p.requires_grad_(flag)
        return self

    def select(self, index: torch.Tensor) -> None:
        """Keep only the copies at `index`."""
        self.params = {k: v.detach()[index].requires_grad_(v.requires_grad) for k, v in self.params.items()}
        self.buffers = {k: v[index] for k, v in self.buffers.items()}

    def copy_into(self, k: int, module: nn.Module) -> None:
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(self.params[name][k])
            for name, b in module.named_buffers():
                if name in self.buffers:
                    b.copy_(self.buffers[name][k])


def stacked_adam(net: StackedNet, config: RunConfig, state: dict | None = None,
                 index: torch.Tensor | None = None) -> torch.optim.Adam:
    """One Adam over the stacked tensors (elementwise, so K independent Adams); with `state` (snapshot), the
    moments of the seeds in `index` carried over from the previous stack."""
    params = list(net.params.values())
    opt = adam(params, config, params[0].device)
    if state is not None:
        for p, old in zip(params, state["params"], strict=True):
            if old is not None:
                opt.state[p] = {k: (v if v.dim() == 0 else v[index].clone()) for k, v in old.items()}
    return opt


def snapshot(opt: torch.optim.Adam) -> dict:
    return {"params": [opt.state.get(p) for g in opt.param_groups for p in g["params"]]}


class FusedSeeds:
    """K seeds of one condition as one stacked G and one stacked D (cyclelike.train's seed group for K > 1): each
    step runs once for all of them, each seed's losses are its own (K,) and their sum's gradient is each seed's."""

    per_seed = True
    batch_dim = 1  # axis 0 is the seed

    def __init__(self, seeds: list[tuple[dict[str, nn.Module], dict]], configs: list[RunConfig]):
        self.configs = configs
        self.nets = [nets for nets, _ in seeds]  # each seed's own modules; the stacks train copies of them
        self.live = list(range(len(seeds)))
        self.G = StackedNet([nets["G"] for nets in self.nets])
        self.D = StackedNet([nets["D"] for nets in self.nets])
        self.step_nets = {"G": self.G, "D": self.D}
        self.optims = {"G": stacked_adam(self.G, configs[0]), "D": stacked_adam(self.D, configs[0])}
        self.left: dict[int, dict[str, torch.optim.Adam]] = {}  # the optimizers of the seeds that left, their own

    def batch(self, images: torch.Tensor, index: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([images[idx] for idx in index])

    def trained(self, k: int) -> dict[str, nn.Module]:
        """Seed k's modules, with its slice of the stacks copied into them while it trains."""
        if k in self.live:
            pos = self.live.index(k)
            self.G.copy_into(pos, self.nets[k]["G"])
            self.D.copy_into(pos, self.nets[k]["D"])
        return self.nets[k]

    def optimizers(self, k: int) -> dict[str, torch.optim.Adam]:
        """An Adam of seed k's own per network, holding its slice of the stacked moments: what a run of the seed
        alone holds, and what its checkpoint saves."""
        if k not in self.live:
            return self.left[k]
        pos, own = self.live.index(k), {}
        for name, stack in (("G", self.G), ("D", self.D)):
            params = list(self.nets[k][name].parameters())
            opt = adam(params, self.configs[k], params[0].device)
            for p, stacked in zip(params, stack.params.values(), strict=True):
                if stacked in self.optims[name].state:
                    opt.state[p] = {key: v.clone() if v.dim() == 0 else v[pos].clone()
                                    for key, v in self.optims[name].state[stacked].items()}
            own[name] = opt
        return own

    def leave(self, seeds: list[int]) -> None:
        for k in seeds:  # their modules and optimizers as they end, while their slices are in the stacks
            self.trained(k)
            self.left[k] = self.optimizers(k)
        kept = [pos for pos, k in enumerate(self.live) if k not in seeds]
        self.live = [k for k in self.live if k not in seeds]
        if not kept:
            return
        index = torch.tensor(kept, dtype=torch.long, device=next(iter(self.G.params.values())).device)
        states = {name: snapshot(opt) for name, opt in self.optims.items()}
        for stack in (self.G, self.D):
            stack.select(index)
        self.optims = {"G": stacked_adam(self.G, self.configs[0], states["G"], index),
                       "D": stacked_adam(self.D, self.configs[0], states["D"], index)}
