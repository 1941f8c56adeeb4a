"""The cycle-like translator: data, networks and training. Knows nothing of Optuna or MLflow.

The heavy parts (torch) load on first use, so that `--help` and config checks answer at once."""

from importlib import import_module

from .config import ConfigError, DataError, NonFiniteLossError, RunConfig

_LAZY = {"Domains": ".data", "load_domains": ".data", "EpochStats": ".train", "TrainResult": ".train",
         "Translator": ".train", "train": ".train"}

__all__ = ["ConfigError", "DataError", "NonFiniteLossError", "RunConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
