"""How a run is executed on this machine: device, precision and the switches that compute the same maths faster.

`fused_upsample`, `fused_adam`, `channels_last` and `replay` compute the same function either way, so they are
execution choices, not part of the condition. Each defaults to `auto`: the value `make bench` measured faster on
this kind of device (AUTO below). A run records what they resolved to. Precision changes the maths, so it stays
in the condition; its `auto` is resolved here too, by the hardware.
"""

from __future__ import annotations

import torch

from .config import SWITCH_WORDS, SWITCHES, ConfigError, RunConfig

# what `make bench` measured faster on each kind of device, the same maths either way:
# - CPU with native bf16 (Sapphire Rapids, 2 cores, `python -m study.bench_cuda --device cpu --quick --only
#   switches`, s/epoch on / off): fused_upsample 1.03 / 1.36 (seed workload) and 0.146 / 0.151 (default cell);
#   fused_adam 1.01 / 1.19 and 0.148 / 0.162; channels_last 1.05 / 1.04 and 0.153 / 0.153, no gain, so off.
#   The plain CPU row (AVX2, bf16 emulated) keeps the same values; measure it there with the same command.
# - CUDA (one H200, issue 27): the plain path beat the CPU's fast path by 20-30% (0.069 against 0.083 s/epoch on
#   the seed workload): the fused upsample's pad/stack/permute kernels cost more launches than its FLOPs save.
#   Whole steps replayed as CUDA graphs remove the launch cost that dominates small images
#   (study/bench_cuda.py measures each switch on and off).
AUTO: dict[str, dict[str, bool]] = {
    "cpu": {"fused_upsample": True, "fused_adam": True, "channels_last": False, "replay": False},
    "cpu-bf16": {"fused_upsample": True, "fused_adam": True, "channels_last": False, "replay": False},
    "cuda": {"fused_upsample": False, "fused_adam": True, "channels_last": False, "replay": True},
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': torch sees no CUDA device on this machine; use device=auto or cpu")
    return torch.device(name)


def native_bf16_cpu() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(name: str, device: torch.device) -> str:
    """bf16 halves the time per epoch where the hardware computes it natively (AVX512-BF16/AMX CPUs,
    Ampere and later GPUs) and the pairing metrics stay as good as fp32; elsewhere it is emulated and slow."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if native_bf16_cpu() else "fp32"


def device_kind(device: torch.device) -> str:
    """The row of AUTO a device reads: cuda, cpu-bf16 (native bf16) or cpu."""
    if device.type == "cuda":
        return "cuda"
    return "cpu-bf16" if native_bf16_cpu() else "cpu"


def switch(config: RunConfig, name: str, device: torch.device | None = None) -> bool:
    """One switch as this run executes it: `on`/`off` as set, `auto` as AUTO says for the device's kind."""
    value = getattr(config, name)
    value = SWITCH_WORDS.get(value, value) if isinstance(value, bool | str) else value  # an unvalidated config
    if value != "auto":
        return value == "on"
    return AUTO[device_kind(device if device is not None else resolve_device(config.device))][name]


def resolve_execution(config: RunConfig, device: torch.device | None = None) -> dict[str, bool]:
    """Every switch as this run executes it. replay=on needs CUDA: graphs are a CUDA feature."""
    device = device if device is not None else resolve_device(config.device)
    resolved = {k: switch(config, k, device) for k in SWITCHES}
    if config.compile and config.replay == "auto":
        resolved["replay"] = False  # compile=true on CUDA replays graphs itself (mode reduce-overhead)
    if config.replay == "on" and device.type != "cuda":
        raise ConfigError(f"replay=on: step replay captures CUDA graphs, and this run is on {device.type}; "
                          "use replay=auto or off")
    if resolved["replay"] and config.compile:
        raise ConfigError("replay=on with compile=true: pick one (compile=true on CUDA already replays graphs in its "
                          "reduce-overhead mode); use replay=off or compile=false")
    return resolved
