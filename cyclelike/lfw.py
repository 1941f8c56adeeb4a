"""Real photographs that need no download: the 100 faces of Labeled Faces in the Wild that scikit-image ships
inside its wheel (`skimage.data.lfw_subset()`, 25 x 25 grey), as domains of disjoint data sets.

Two designs, by x_domain:
- `edges`: X is each face drawn another way, its Canny edge map (black strokes on white, as pix2pix's
  edges-to-photo sets are made), Y the faces; row i of X is the partner of row i of Y, a truth to score against;
- `faces`: X is k faces, Y k OTHER faces (the original's situation: no pair is true).
Data set d (data_seed) takes faces d * k up to (d + 1) * k for `edges` and twice as many for `faces`, where
k = n_images + n_holdout: data sets never share a face, so each is independent evidence.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .config import DataError, RunConfig

FACES = 100  # lfw_subset holds 100 faces, then 100 patches that are not faces
EDGE_SIGMA = 1.5  # Canny's Gaussian at 32 px, scaled with the side: strokes of the face's outlines, not its noise


@lru_cache(maxsize=1)
def faces() -> np.ndarray:
    from skimage.data import lfw_subset  # read from the installed wheel: nothing is downloaded

    return lfw_subset()[:FACES]  # (100, 25, 25) floats in [0, 1]


def _resized(images: np.ndarray, size: int) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(torch.from_numpy(images).float()[:, None], [size, size], antialias=True).clamp(0, 1)


def edge_maps(images: torch.Tensor) -> torch.Tensor:
    """(k, 1, S, S) grey in [0, 1] -> Canny edge maps at that size, black edges on white, in [0, 1]."""
    from skimage.feature import canny

    sigma = EDGE_SIGMA * images.shape[-1] / 32
    return torch.from_numpy(np.stack([~canny(g, sigma=sigma) for g in images[:, 0].numpy()])).float()[:, None]


def lfw_domains(config: RunConfig) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """X and Y of data set `config.data_seed` as uint8-range floats (k, 1, S, S) in 0..255, with their names."""
    k = config.n_images + config.n_holdout
    per_set = k if config.x_domain == "edges" else 2 * k
    sets = FACES // per_set
    if config.data_seed >= sets:
        raise DataError(f"data_seed={config.data_seed}: data=lfw with x_domain={config.x_domain} and "
                        f"n_images + n_holdout = {k} has {sets} disjoint data set(s) of its {FACES} faces "
                        f"(data_seed 0 to {sets - 1})")
    start = config.data_seed * per_set
    y_index = np.arange(start, start + k) if config.x_domain == "edges" else np.arange(start + k, start + 2 * k)
    y = _resized(faces()[y_index], config.image_size)
    if config.x_domain == "edges":
        x, x_names = edge_maps(y), [f"lfw-edges[{i}]" for i in y_index]
    else:
        x_index = np.arange(start, start + k)
        x, x_names = _resized(faces()[x_index], config.image_size), [f"lfw[{i}]" for i in x_index]
    return x * 255, y * 255, x_names, [f"lfw[{i}]" for i in y_index]
