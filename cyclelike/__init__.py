"""The cycle-like translator: data, networks and training. Knows nothing of Optuna or MLflow."""

from .config import ConfigError, RunConfig
from .data import DataError, Domains, load_domains
from .train import EpochStats, NonFiniteLossError, TrainResult, Translator, train

__all__ = [
    "ConfigError", "DataError", "Domains", "EpochStats", "NonFiniteLossError", "RunConfig", "TrainResult",
    "Translator", "load_domains", "train",
]
