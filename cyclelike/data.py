"""Domains X and Y as tensors in memory, their train/held-out split and the pairing pi.

A few dozen images fit in memory many times over, so there is no DataLoader: forking workers every
epoch doubled the reference code's time per epoch on this kind of data. Files the user owns are only
ever opened for reading.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import DataError, RunConfig
from .lfw import lfw_domains
from .synthetic import synthetic_domain

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
HDF5_TRAIN_KEYS = ("train_data_raw", "train_data_gen")
HDF5_VAL_KEYS = ("val_data_raw", "val_data_gen")


@dataclass
class Pool:
    """All images of one domain before the split, in stored order (file-name order for folders)."""

    images: torch.Tensor
    names: list[str]
    source: str
    holdout: torch.Tensor | None = None  # a held-out part stored apart, such as the HDF5 val_data_*


@dataclass
class Domains:
    """The train and held-out parts of X and Y and the pairing in force.

    x[i] is trained against y[pi[i]] for aligned and fixed pairing; shuffled pairing draws a fresh pi
    each epoch (see `pairing_for_epoch`) and keeps `pi` at the aligned order for reporting.
    """

    x: torch.Tensor
    y: torch.Tensor
    x_holdout: torch.Tensor
    y_holdout: torch.Tensor
    pairing: str
    pi: torch.Tensor
    x_names: list[str] = field(default_factory=list)
    y_names: list[str] = field(default_factory=list)
    x_holdout_names: list[str] = field(default_factory=list)  # which images were held out, for the record
    y_holdout_names: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def pairing_for_epoch(self, generator: torch.Generator) -> torch.Tensor:
        if self.pairing == "shuffled":
            return torch.randperm(self.n, generator=generator)
        return self.pi

    def content_hash(self, domains: str = "xy") -> str:
        """A hash of the training images of the `domains` ("x", "y" or both), as trained on: two runs are on one
        data set exactly when "xy" is equal, whatever their data_seed (a folder that holds only N + n_holdout
        images gives every data_seed the same training images)."""
        import hashlib

        digest = hashlib.sha1()
        for name in domains:
            digest.update(getattr(self, name).detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def to(self, device: torch.device | str) -> Domains:
        moved = {k: getattr(self, k).to(device) for k in ("x", "y", "x_holdout", "y_holdout")}
        return dataclasses.replace(self, **moved)


def _to_unit_range(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 or float 0..255 NCHW -> float [-1, 1], resized (shorter side) and centre-cropped."""
    from torchvision.transforms.v2 import functional as TF  # lazy: torchvision's import loads torch._dynamo

    if images.dtype == torch.uint8:
        images = TF.to_dtype(images, torch.float32, scale=True)
    else:
        images = images.float() / 255.0
    if images.shape[-3] == 1:
        images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    if images.shape[-2:] != (size, size):
        images = TF.center_crop(TF.resize(images, size, antialias=True), [size, size])
    return (images.clamp(0, 1) * 2 - 1).contiguous()


def _read_image(path: Path) -> torch.Tensor:
    """One file as a uint8 CHW RGB tensor.

    Pillow decodes: torchvision's decoders are deprecated since 0.29 and do not read BMP. 16-bit
    greys are scaled down here because Pillow's own conversion to RGB clips them to white."""
    from torchvision.transforms.v2 import functional as TF

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I"):
                im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
            return TF.pil_to_tensor(im.convert("RGB"))
    except Exception as err:  # Pillow raises several types for a bad or truncated file
        raise DataError(f"cannot read image {path}: {err}") from err


def load_folder(path: str | Path, size: int) -> Pool:
    """Every image under a folder, searched recursively, in file-name order."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (data=folders needs one folder per domain)")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    images = torch.stack([_to_unit_range(_read_image(p), size) for p in files])
    return Pool(images, [str(p.relative_to(root)) for p in files], str(root))


def _hdf5_array(path: Path, key: str, size: int):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataError(f"{path} has no dataset {key!r}; it has {', '.join(sorted(f.keys())) or 'none'}")
            array = np.asarray(f[key][()])
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"cannot read HDF5 file {path}: {err}") from err
    if array.ndim == 3:  # (N, H, W) grey without a channel axis
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise DataError(f"{path}:{key} has shape {array.shape}; expected channels-last (N, H, W, 1 or 3)")
    if array.dtype.kind not in "uif":  # bool, complex, strings: no pixel values
        raise DataError(f"{path}:{key} has dtype {array.dtype}; expected pixels 0..255 (uint8, or integers or "
                        "floats in that range)")
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
    if tensor.dtype != torch.uint8:
        tensor = tensor.double()  # exact for every integer and float the file can hold
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:  # clamp() would keep a NaN, and the run would train on it
            raise DataError(f"{path}:{key} has {bad} NaN or infinite pixel value(s); fix or drop those images")
        low, high = (float(tensor.min()), float(tensor.max())) if tensor.numel() else (0.0, 0.0)
        if low < 0 or high > 255:  # clamping them would train on other pictures than the file holds
            raise DataError(f"{path}:{key} holds values {low:g}..{high:g}; expected pixels 0..255")
        if array.dtype.kind == "f" and 0 < high <= 1:  # read as 0..255 these would be near-black images
            raise DataError(f"{path}:{key} holds float values {low:g}..{high:g}, pixels scaled to [0, 1]; this "
                            "reader takes 0..255, as the original files stored them: multiply the array by 255")
        tensor = tensor.float()
    return _to_unit_range(tensor, size)


def load_hdf5(spec: str, default_key: str, size: int) -> Pool:
    """A domain from the original HDF5 layout: FILE, or FILE:DATASET to name the array.

    Without a dataset name X is `train_data_raw` and Y `train_data_gen`, as the original stored them;
    a matching `val_data_*` array in the same file becomes the held-out part. Pixels are 0..255 (uint8, or
    integers or floats in that range), channels last.
    """
    path, key = Path(spec).expanduser(), default_key
    if not path.exists() and ":" in spec:
        head, _, tail = spec.rpartition(":")
        path, key = Path(head).expanduser(), tail
    if not path.exists():
        raise DataError(f"HDF5 file {path} does not exist")
    if path.is_dir():
        raise DataError(f"{path} is a folder; data=hdf5 needs a file of the original layout")
    images = _hdf5_array(path, key, size)
    holdout = None
    if key.startswith("train_data_"):
        import h5py

        with h5py.File(path, "r") as f:
            val_key = key.replace("train_", "val_", 1)
            if val_key in f:
                holdout = _hdf5_array(path, val_key, size)
    return Pool(images, [f"{key}[{i}]" for i in range(len(images))], f"{path}:{key}", holdout)


def _split(pool_size: int, n: int, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(pool_size)
    # sorted, so that the train part keeps the stored order the aligned pairing relies on
    return np.sort(order[:n]), np.sort(order[n : n + n_holdout])


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded random permutation with no fixed point, so that `fixed` shares no pair with `aligned`.

    Rejection sampling draws uniformly among derangements; about e (2.7) draws are needed on average."""
    rng = np.random.default_rng((seed, 1))
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def load_domains(config: RunConfig) -> Domains:
    """The train and held-out parts of X and Y and the pairing pi that `config` asks for."""
    n, n_holdout, size = config.n_images, config.n_holdout, config.image_size
    if config.data == "synthetic":
        # each data_seed draws other images: an independent data set, the unit of evidence
        x_pool = Pool(synthetic_domain(config.x_domain, n + n_holdout, size, config.data_seed), [],
                      f"synthetic:{config.x_domain}")
        y_pool = Pool(synthetic_domain(config.y_domain, n + n_holdout, size, config.data_seed), [],
                      f"synthetic:{config.y_domain}")
        drawn = "" if config.data_seed == 0 else f"/d{config.data_seed}"
        x_pool.names = [f"{config.x_domain}{drawn}[{i}]" for i in range(n + n_holdout)]
        y_pool.names = [f"{config.y_domain}{drawn}[{i}]" for i in range(n + n_holdout)]
    elif config.data == "folders":
        x_pool, y_pool = load_folder(config.x_path, size), load_folder(config.y_path, size)
    elif config.data == "lfw":
        x, y, x_names, y_names = lfw_domains(config)
        x_pool = Pool(_to_unit_range(x, size), x_names, f"lfw:{config.x_domain}")
        y_pool = Pool(_to_unit_range(y, size), y_names, "lfw:faces")
    else:
        x_pool = load_hdf5(config.x_path, HDF5_TRAIN_KEYS[0], size)
        y_pool = load_hdf5(config.y_path or config.x_path, HDF5_TRAIN_KEYS[1], size)

    parts = []
    for pool in (x_pool, y_pool):
        needed = n + (0 if pool.holdout is not None else n_holdout)
        if len(pool.images) < needed:
            raise DataError(
                f"{pool.source} has {len(pool.images)} images; n_images={n} and n_holdout={n_holdout} "
                f"need {needed}"
            )
    # one split for both domains when they are the same length, so aligned rows stay aligned
    same = len(x_pool.images) == len(y_pool.images)
    if not same and config.pairing == "aligned":  # the two splits would draw different rows
        raise DataError(f"pairing=aligned pairs row i of X with row i of Y, but {x_pool.source} has "
                        f"{len(x_pool.images)} images and {y_pool.source} has {len(y_pool.images)}; give both the "
                        "same images in matching order, or use pairing=fixed or shuffled")
    for k, pool in enumerate((x_pool, y_pool)):
        held = 0 if pool.holdout is not None else n_holdout
        train_idx, hold_idx = _split(len(pool.images), n, held, config.data_seed + (0 if same else k))
        if pool.holdout is not None:
            holdout, hold_names = pool.holdout[:n_holdout], [f"held-out[{i}]" for i in range(n_holdout)]
        else:
            holdout, hold_names = pool.images[hold_idx], [pool.names[i] for i in hold_idx]
        parts.append((pool.images[train_idx], holdout, [pool.names[i] for i in train_idx], hold_names))
    (x, x_hold, x_names, x_hold_names), (y, y_hold, y_names, y_hold_names) = parts

    if config.pairing == "fixed":
        pi = torch.from_numpy(derangement(n, config.data_seed))
    else:
        pi = torch.arange(n)
    return Domains(x, y, x_hold, y_hold, config.pairing, pi, x_names, y_names, x_hold_names, y_hold_names)


# the fields of a RunConfig that load_domains reads: two configs equal on these train on the same images
DATA_FIELDS = ("data", "x_path", "y_path", "x_domain", "y_domain", "image_size", "n_images", "n_holdout", "data_seed",
               "pairing")
_LOADED: OrderedDict[tuple, Domains] = OrderedDict()


def data_key(config: RunConfig) -> tuple:
    """What identifies the images `config` trains on: its data fields and, for files, every file's size and
    modification time (an edited image is a different data set)."""
    stamps = []
    for spec in {config.x_path, config.y_path} - {""}:
        path = Path(spec).expanduser()
        if not path.exists() and ":" in spec:  # FILE:DATASET
            path = Path(spec.rpartition(":")[0]).expanduser()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] * path.exists()
        stamps += [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return (*(getattr(config, k) for k in DATA_FIELDS), tuple(stamps))


def shared_domains(config: RunConfig, keep: int = 4) -> Domains:
    """load_domains, remembered for the last `keep` data sets of this process: a sweep's trials share a few
    data sets, and drawing or decoding them for every trial is repeated work. The Domains returned is shared:
    nothing may change its tensors in place."""
    key = data_key(config)
    if key not in _LOADED:
        _LOADED[key] = load_domains(config)
        while len(_LOADED) > keep:
            _LOADED.popitem(last=False)
    _LOADED.move_to_end(key)
    return _LOADED[key]
