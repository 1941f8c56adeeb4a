"""How a run is executed on this machine: device, precision and the switches that compute the same maths faster.

`fused_upsample`, `fused_adam`, `channels_last` and `replay` compute the same function either way, so they are
execution choices, not part of the condition. Each defaults to `auto`: the value measured faster on this kind of
device, read from `defaults/<kind>.json` beside this file, which also names the measurement each value rests on (or
none). Precision changes the maths, so it stays in the condition; its `auto` is resolved from the same file. A run
records what they resolved to and whether that rests on a measurement of its kind of device (`resolved_tags`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import EXECUTION_KEYS, SWITCH_WORDS, SWITCHES, TIMING_KEYS, ConfigError, RunConfig

DEFAULTS_DIR = Path(__file__).resolve().parent / "defaults"
KINDS = ("cpu", "cpu-bf16", "cuda")
AUTO_KEYS = ("precision", *SWITCHES)


def load_defaults(kind: str, folder: Path = DEFAULTS_DIR) -> dict:
    """One kind's defaults file, checked: every auto key with a value and a basis that is null or one of its
    measurements. A file that says less would leave a run's execution to chance, so it is refused by name."""
    path = folder / f"{kind}.json"
    try:
        data = json.loads(path.read_text())
        auto, basis, measured = data["auto"], data["basis"], data["measurements"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a defaults file ({type(err).__name__}: {err})") from None

    def valid(k: str) -> bool:
        value = auto.get(k)
        return value in ("fp32", "bf16") if k == "precision" else type(value) is bool

    problems = [f"auto.{k}" for k in AUTO_KEYS if not valid(k)]
    problems += [f"basis.{k}" for k in AUTO_KEYS if k not in basis or basis[k] is not None and basis[k] not in measured]
    if problems:
        raise ConfigError(f"{path}: missing or invalid {', '.join(problems)}: precision is fp32 or bf16, a switch true "
                          "or false, a basis null or a key of measurements")
    return data


DEFAULTS: dict[str, dict] = {kind: load_defaults(kind) for kind in KINDS}
# each kind's switches as auto resolves them (cyclelike/defaults/<kind>.json says what each rests on)
AUTO: dict[str, dict[str, bool]] = {kind: {k: d["auto"][k] for k in SWITCHES} for kind, d in DEFAULTS.items()}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': torch sees no CUDA device on this machine; use device=auto or cpu")
    return torch.device(name)


def native_bf16_cpu() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: the precision measured faster on this kind of device (its defaults file), where the device computes it:
    bf16 only natively (AVX512-BF16/AMX CPUs, the cpu-bf16 kind; Ampere and later GPUs)."""
    if name != "auto":
        return name
    precision = DEFAULTS[device_kind(device)]["auto"]["precision"]
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp32"
    return precision


def device_kind(device: torch.device) -> str:
    """The defaults file a device reads: cuda, cpu-bf16 (native bf16) or cpu."""
    if device.type == "cuda":
        return "cuda"
    return "cpu-bf16" if native_bf16_cpu() else "cpu"


def condition(config: RunConfig) -> dict:
    """The identity of the experimental condition: every field except the seed, how it is executed and how its
    time is read; precision=auto as what it resolves to on this machine (bf16 or fp32), so that a study spread over
    machines of both kinds never pools two arithmetics as seeds of one condition."""
    values = {k: v for k, v in config.to_dict().items() if k != "seed" and k not in EXECUTION_KEYS + TIMING_KEYS}
    if config.precision == "auto":
        values["precision"] = resolve_precision("auto", resolve_device(config.device))
    return values


# the switches' values in the condition of the studies made before they were execution settings (their defaults)
RETIRED_CONDITION = {"channels_last": False, "fused_upsample": True, "fused_adam": True}


def identity(config: RunConfig) -> dict:
    """condition() as a study's keys hash it (config_key, fixed_key): the switches were part of the condition
    until they became execution settings, and a study begun then must still find its trials, so they stay in,
    at the values every condition then had by default."""
    return {**condition(config), **RETIRED_CONDITION}


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


def basis(config: RunConfig, device: torch.device) -> str:
    """Whether what this run left at auto rests on measurements of its kind of device: `measured`, `partly measured`,
    `none`, or `set` when it left nothing at auto. Replay off a GPU is no choice (graphs are a CUDA feature)."""
    keys = [k for k in AUTO_KEYS if getattr(config, k) == "auto" and (k != "replay" or device.type == "cuda")]
    measured = [k for k in keys if DEFAULTS[device_kind(device)]["basis"][k] is not None]
    return "set" if not keys else "measured" if measured == keys else "partly measured" if measured else "none"


def resolved_tags(config: RunConfig, device: str, precision: str, execution: dict[str, bool | str]) -> dict[str, str]:
    """What a run executed with, as its `resolved.*` tags: device, precision, each switch on/off (replay `fallback`
    where a shape fell back to eager, cyclelike.replay) and the basis of its auto values."""
    return {"resolved.device": device, "resolved.precision": precision,
            **{f"resolved.{k}": v if isinstance(v, str) else "on" if v else "off" for k, v in execution.items()},
            "resolved.basis": basis(config, torch.device(device))}
