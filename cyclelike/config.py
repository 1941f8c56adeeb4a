"""RunConfig: the one dataclass that describes a run.

Sweep files override its defaults and `--set key=value` overrides the sweep file, so every knob a
study can turn lives here, with a default and a help string.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

CHOICES: dict[str, tuple[str, ...]] = {
    "data": ("synthetic", "folders", "hdf5", "lfw"),
    "pairing": ("aligned", "fixed", "shuffled"),
    "scheme": ("cyclelike", "cyclegan", "pix2pix"),
    "arch": ("encdec", "unet"),
    "norm": ("batch", "instance", "none"),
    "gan_loss": ("vanilla", "lsgan"),
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "fp32", "bf16"),
    "direction_schedule": ("alternate", "interleave", "joint"),
    "stop": ("off", "locked"),
    "x_domain": ("faces", "planes", "edges"),
    "y_domain": ("faces", "planes"),
}

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 256
MAX_SEED = 2**63 - 1
# the same maths computed another way, each auto, on or off (cyclelike.execution resolves auto per device)
SWITCHES = ("fused_upsample", "fused_adam", "channels_last", "replay")
CHOICES.update({k: ("auto", "on", "off") for k in SWITCHES})
# how a run is executed, not what it computes: two runs that differ only here are the same condition
EXECUTION_KEYS = ("threads", "device", "compile", *SWITCHES)
# a switch's on/off may be written as a bool (TOML, older configs and checkpoints) or true/false on a command line
SWITCH_WORDS = {True: "on", False: "off", "true": "on", "false": "off", "yes": "on", "no": "off", "1": "on",
                "0": "off"}
# what only changes how a run's time is read (the epochs left out of sec_per_epoch): not the condition either
TIMING_KEYS = ("warmup_epochs",)


class ConfigError(ValueError):
    """A RunConfig field holds a value it cannot take; the message names field, value and what is allowed."""


class DataError(ValueError):
    """Input data that cannot be used; the message names the file or folder."""


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or inf; training stops rather than burn the rest of its budget."""

    def __init__(self, message: str, epoch: int | None = None):
        super().__init__(message)
        self.epoch = epoch


def _help(text: str, default: Any, **kw: Any) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text}, **kw)


@dataclass
class RunConfig:
    # data
    data: str = _help("data source: synthetic (embedded), folders (two image folders), hdf5, or lfw (scikit-image's "
                      "bundled Labeled Faces in the Wild: 100 photographs, 25 px grey)", "synthetic")
    x_path: str = _help("domain X: an image folder, or for hdf5 a file (optionally FILE:DATASET)", "")
    y_path: str = _help("domain Y: an image folder, or for hdf5 a file (defaults to x_path)", "")
    x_domain: str = _help("synthetic: the domain used as X (faces or planes); lfw: edges (each Y face's edge map, "
                          "row i the partner of row i: a known truth) or faces (other people's faces: none)", "faces")
    y_domain: str = _help("synthetic: the domain used as Y (faces or planes); lfw: faces", "planes")
    n_images: int = _help("N: images per domain used for training", 10)
    n_holdout: int = _help("held-out images per domain (for mem/holdout_copy_rate)", 4)
    image_size: int = _help("square image side in pixels, a power of two in 16..256", 32)
    data_seed: int = _help("seed of the data set: which synthetic images are drawn, the train/held-out split and "
                           "the fixed pairing (independent data sets, the unit of evidence)", 0)
    pairing: str = _help("aligned (stored order), fixed (one seeded derangement: no x keeps its aligned partner) "
                         "or shuffled (a new random pairing each epoch)", "aligned")
    # model
    scheme: str = _help("cyclelike (one G both ways), cyclegan (G, F, D_X, D_Y) or pix2pix (X -> Y only)",
                        "cyclelike")
    arch: str = _help("generator: encdec (no skips) or unet (skip connections)", "unet")
    base_filters: int = _help("filters of the first generator layer; layer i has base*min(8, 2^i)", 32)
    d_filters: int = _help("filters of the first discriminator layer", 32)
    norm: str = _help("normalisation layer: instance, batch or none (batch statistics mix the two domains G sees)",
                     "instance")
    dropout: float = _help("dropout in the three innermost decoder blocks", 0.0)
    # losses
    lambda_l1: float = _help("weight of L1 to the paired target", 10.0)
    lambda_adv: float = _help("weight of the adversarial loss", 1.0)
    lambda_cyc: float = _help("weight of the cycle loss L1(G(G(x)), x)", 0.0)
    lambda_id: float = _help("weight of the identity loss L1(G(y), y) and L1(F(x), x): cyclegan only, since one G "
                             "cannot map y to x (L1 term) and y to y (identity) at once", 0.0)
    gan_loss: str = _help("GAN objective: vanilla (BCE) or lsgan (least squares)", "vanilla")
    # optimisation
    lr: float = _help("Adam learning rate", 1e-3)
    beta1: float = _help("Adam beta1", 0.5)
    beta2: float = _help("Adam beta2", 0.999)
    batch_size: int = _help("images per batch and direction", 5)
    epochs: int = _help("epochs; one epoch = all N pairs in both directions", 30)
    direction_schedule: str = _help(
        "cyclelike's order of the two directions in an epoch, each batch with its own D and G step: alternate "
        "(the original's: every X->Y batch, then every Y->X batch), interleave (X->Y and Y->X batches take turns) "
        "or joint (both directions in ONE batch: half the optimizer steps, a different algorithm)", "alternate")
    seed: int = _help("seed of initialisation, batch order and shuffled pairings", 0)
    # stopping: part of the condition, since a run that stops early has a different budget
    stop: str = _help("off (train every epoch of the budget) or locked (end once the assignment a(i) has not changed "
                      "for `patience` evaluations spanning >= `patience_epochs` epochs; runs given a pair also need "
                      "forward_top1 >= 0.9)", "off")
    patience: int = _help("stop=locked: consecutive evaluations with the same assignment", 3)
    patience_epochs: int = _help("stop=locked: the least number of epochs those evaluations must span", 20)
    # execution
    device: str = _help("auto (cuda when available), cpu or cuda", "auto")
    precision: str = _help("auto (what was measured faster on this kind of device, cyclelike/defaults/<kind>.json; "
                           "bf16 autocast only where the CPU or GPU computes it natively), fp32 or bf16", "auto")
    threads: int = _help("torch intra-op threads; 0 keeps torch's default", 0)
    channels_last: str = _help("channels-last memory format for convolutions: auto (what make bench measured faster "
                               "on this kind of device; the run records what it resolved to), on or off", "auto")
    fused_upsample: str = _help("decoder upsample+3x3 conv as four 2x2 convs on the small input, the same maths with "
                                "2.25x fewer multiply-adds: auto, on or off", "auto")
    fused_adam: str = _help("the fused Adam kernel (the same update, one pass over the parameters): auto, on or off",
                            "auto")
    replay: str = _help("capture each training step (D and G updates, both directions, the optimizers) once as a CUDA "
                        "graph and replay it, the same maths without the kernel launches: auto (as measured on this "
                        "kind of device: off until a GPU run showed equal pairs and a gain), on (CUDA only) or off",
                        "auto")
    compile: bool = _help("torch.compile the networks (pays off only on long runs: minutes of compile time)", False)
    warmup_epochs: int = _help("epochs left out of time/sec_per_epoch (allocator and cache warm-up)", 1)

    def validate(self) -> RunConfig:
        for name in SWITCHES:
            value = getattr(self, name)
            if isinstance(value, bool) or isinstance(value, str) and value.lower() in SWITCH_WORDS:
                setattr(self, name, SWITCH_WORDS[value if isinstance(value, bool) else value.lower()])
        for f in fields(self):
            value = getattr(self, f.name)
            expected = type(f.default) if f.default is not dataclasses.MISSING else None
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            if expected is not None and not isinstance(value, expected) or (
                expected is int and isinstance(value, bool)
            ):
                raise ConfigError(
                    f"{f.name}={value!r}: expected {expected.__name__}, got {type(value).__name__}"
                )
            if f.name in CHOICES and value not in CHOICES[f.name]:
                raise ConfigError(f"{f.name}={value!r}: allowed values are {', '.join(CHOICES[f.name])}")
        size = self.image_size
        if not (MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE and size & (size - 1) == 0):
            raise ConfigError(
                f"image_size={size!r}: allowed values are powers of two from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"
            )
        self._at_least("n_images", 2)
        self._at_least("n_holdout", 0)
        self._at_least("batch_size", 1)
        self._at_least("epochs", 1)
        self._at_least("base_filters", 1)
        self._at_least("d_filters", 1)
        self._at_least("threads", 0)
        self._at_least("seed", 0)
        self._at_least("data_seed", 0)
        for name in ("seed", "data_seed"):  # torch's generators take a signed 64-bit seed, and overflowed past it
            if getattr(self, name) > MAX_SEED:
                raise ConfigError(f"{name}={getattr(self, name)!r}: allowed values are integers up to {MAX_SEED}")
        self._at_least("warmup_epochs", 0)
        self._at_least("patience", 1)
        self._at_least("patience_epochs", 0)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name}={value!r}: expected a finite number")
        for name in ("lambda_l1", "lambda_adv", "lambda_cyc", "lambda_id"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: allowed values are >= 0")
        if self.lambda_id > 0 and self.scheme != "cyclegan":
            raise ConfigError(
                f"lambda_id={self.lambda_id!r}: the identity loss is for scheme=cyclegan only; with "
                f"scheme={self.scheme} one G would have to map y to its partner x (L1 term) and y to y (identity) "
                "at once, which contradict")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout!r}: allowed values are 0 <= dropout < 1")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr!r}: allowed values are > 0")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: allowed values are 0 <= {name} < 1")
        if self.data in ("folders", "hdf5") and not self.x_path:
            raise ConfigError(f"x_path={self.x_path!r}: data={self.data} needs a path for domain X")
        if self.data == "folders" and not self.y_path:
            raise ConfigError(f"y_path={self.y_path!r}: data=folders needs a folder for domain Y")
        if self.data == "synthetic" and self.x_domain == self.y_domain:
            raise ConfigError(f"y_domain={self.y_domain!r}: must differ from x_domain={self.x_domain!r}")
        if self.data == "synthetic" and self.x_domain == "edges":
            raise ConfigError("x_domain='edges': edge maps are of data=lfw's photographs; synthetic domains are faces "
                              "or planes")
        if self.data == "lfw" and (self.y_domain != "faces" or self.x_domain == "planes"):
            raise ConfigError(f"x_domain={self.x_domain!r}, y_domain={self.y_domain!r}: data=lfw has y_domain=faces "
                              "and x_domain=edges (their edge maps) or faces (other faces)")
        return self

    def _at_least(self, name: str, low: int) -> None:
        if getattr(self, name) < low:
            raise ConfigError(f"{name}={getattr(self, name)!r}: allowed values are integers >= {low}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown RunConfig key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**values).validate()

    def g_steps_per_epoch(self) -> int:
        """Generator optimizer steps in one epoch, the unit budgets are compared in across N, schemes and
        schedules: cyclelike's alternate and interleave take one per batch and direction, joint half that;
        pix2pix has one direction; cyclegan updates G and F together once per batch."""
        batches = math.ceil(self.n_images / self.batch_size)
        return 2 * batches if self.scheme == "cyclelike" and self.direction_schedule != "joint" else batches

    def budget(self) -> dict[str, int]:
        """The run's budget in the original's unit (epochs at N) and in G steps, in total and per pair."""
        steps = self.epochs * self.g_steps_per_epoch()
        return {"budget/epochs": self.epochs, "budget/g_steps": steps,
                "budget/g_steps_per_pair": round(steps / self.n_images)}

    def replace(self, **changes: Any) -> RunConfig:
        return RunConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    @classmethod
    def keys_help(cls) -> str:
        """Every key with its default and help, for the epilog of each command that takes --set."""
        lines = []
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} (default {default!r}): {f.metadata.get('help', '')}")
        return "RunConfig keys for --set KEY=VALUE:\n" + "\n".join(lines)


def idle_threads() -> int:
    """Torch threads for a run started by hand: the cores idle now (1-minute load average), at least one.
    Torch's default of every core collapses when other work shares them (OpenMP spin: 7x slower was seen)."""
    import os

    return max(1, (os.cpu_count() or 1) - round(os.getloadavg()[0]))


def parse_value(name: str, text: str) -> Any:
    """Turn the text of `--set name=text` into the type of RunConfig.name."""
    types = {f.name: type(f.default) for f in fields(RunConfig)}
    if name not in types:
        raise ConfigError(f"unknown RunConfig key {name!r}; known keys: {', '.join(sorted(types))}")
    kind = types[name]
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        return kind(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected {kind.__name__}") from None


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs from a command line, each typed as its RunConfig field."""
    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        values[key.strip()] = parse_value(key.strip(), text)
    return values
