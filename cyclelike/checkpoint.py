"""A run's whole state in one file: networks, optimizers, random state, epoch and history, so that a killed run goes
on exactly where its checkpoint left it. What may change on resume is only what does not change the maths."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .config import EXECUTION_KEYS, ConfigError, RunConfig


@dataclass
class Checkpoints:
    """Where and when training saves a seed's whole state: every `every` epochs and every `seconds` of training
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


def resume(path: Path, config: RunConfig, nets, optims, gen: torch.Generator) -> tuple[int, list[dict]]:
    """Load the checkpoint into the networks, optimizers and random state; its epoch and its history (one dict per
    epoch, as cyclelike.train.EpochStats holds it)."""
    state = check_resumable(path, config)
    for k, net in nets.items():
        net.load_state_dict(state["nets"][k])
    for k, opt in optims.items():
        load_optimizer(opt, state["optims"][k])
    gen.set_state(state["rng"]["data"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["epoch"], state["history"]
