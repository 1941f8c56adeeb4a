"""Data-only predictors of the pairs: features of the ORIGINAL images whose optimal one-to-one assignment is
what the pairs would be if that feature were all they were based on, and how far a learned map agrees with them.
Every function takes tensors or arrays and returns plain values."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import rankdata

from .assignment import NO_MATCH, Share, chance_level, distances, matches, share


def _colour_stats(images: torch.Tensor) -> torch.Tensor:
    flat = images.flatten(2).float()
    return torch.cat([flat.mean(2), flat.std(2)], 1)  # (N, 6): mean and spread per channel


def _edges(images: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the grey image (scikit-image's): where the outlines are, whatever their colours."""
    from skimage.filters import sobel

    grey = _grey(images).cpu().numpy()
    return torch.from_numpy(np.stack([sobel(g) for g in grey]))[:, None].float()


def blur(images: torch.Tensor, per_side: int) -> torch.Tensor:
    """Gaussian blur of sigma = side / per_side pixels, at least one: the same share of the image at any size."""
    from torchvision.transforms.v2 import functional as TF  # lazy: torchvision's import loads torch._dynamo

    sigma = max(1.0, images.shape[-1] / per_side)
    kernel = 2 * math.ceil(2 * sigma) + 1
    return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def lowpass(images: torch.Tensor) -> torch.Tensor:
    """The predictor "lowpass": a strong blur (sigma = side/16) keeps the layout of the image, not its detail."""
    return blur(images.float(), 16)


def _grey(images: torch.Tensor) -> torch.Tensor:
    return images.float().mean(1)  # (N, H, W) in [-1, 1]


def _foreground(images: torch.Tensor) -> torch.Tensor:
    """The silhouette: pixels whose colour differs from the background's (the median of the border pixels) by
    more than a tenth of the range. A photograph's subject, an edge map's strokes, whatever their colours."""
    im = images.float()
    border = torch.cat([im[..., 0, :], im[..., -1, :], im[..., :, 0], im[..., :, -1]], dim=-1)  # (N, C, 4S)
    background = border.median(dim=-1).values[..., None, None]
    return ((im - background).abs().mean(1) > 0.2).float()  # (N, H, W)


def _silhouette(images: torch.Tensor) -> torch.Tensor:
    return _foreground(images)[:, None]


def _orientation(images: torch.Tensor) -> torch.Tensor:
    """Where the silhouette lies and which way it points, from its image moments: centroid, and the axis of
    least inertia as (cos 2theta, sin 2theta) scaled by the elongation (a disc has no orientation)."""
    mask = _foreground(images)
    n, h, w = mask.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    mass = mask.sum((1, 2)).clamp(min=1.0)
    cx, cy = (mask * xs).sum((1, 2)) / mass, (mask * ys).sum((1, 2)) / mass
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    mu20, mu02 = (mask * dx**2).sum((1, 2)) / mass, (mask * dy**2).sum((1, 2)) / mass
    mu11 = (mask * dx * dy).sum((1, 2)) / mass
    spread = torch.sqrt((mu20 - mu02) ** 2 + 4 * mu11**2)
    elongation = spread / (mu20 + mu02).clamp(min=1e-6)
    theta2 = torch.atan2(2 * mu11, mu20 - mu02)
    return torch.stack([cx, cy, elongation * torch.cos(theta2), elongation * torch.sin(theta2)], 1)


def _brightness(images: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """The grey-level histogram (shares of pixels in 16 bins): how light or dark, whatever the layout."""
    grey = ((_grey(images) + 1) / 2).clamp(0, 1).flatten(1)
    index = (grey * bins).long().clamp(max=bins - 1)
    return torch.nn.functional.one_hot(index, bins).float().mean(1)


PREDICTORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "pixel": lambda im: im.float(), "lowpass": lowpass, "colour": _colour_stats, "edges": _edges,
    "silhouette": _silhouette, "orientation": _orientation, "brightness": _brightness,
}
# not data-only: the untrained G's own assignment at epoch 0, the candidate "the initialisation decides"
INITIAL = "initial"


def predictor_costs(x: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
    """For each data-only predictor, the distance between every ORIGINAL x_i and y_j on that predictor's
    feature: the cost of Lu et al.'s transport view of the pairing."""
    return {name: distances(feature(x.cpu()), feature(y.cpu())).numpy() for name, feature in PREDICTORS.items()}


def predictor_agreement(a: np.ndarray, partners: dict[str, np.ndarray]) -> dict[str, Share]:
    """pair/agree_<predictor>: share of i whose learned a(i) is that predictor's partner, chance 1/N."""
    n = len(a)
    return {f"pair/agree_{name}": share(int(matches(a, p).sum()), n, chance_level("pair/agree_", n))
            for name, p in partners.items()}


def chosen_rank(a: np.ndarray, cost: np.ndarray) -> float:
    """pair/rank_<predictor>: where the learned partner a(i) ranks in x_i's row of the predictor's cost (1 =
    the nearest y on that predictor; ties averaged), mean over the rows with a partner; chance (N + 1) / 2.
    Top-1 agreement misses a predictor whose second choice the map keeps taking; the rank does not."""
    a = np.asarray(a)
    ranks = rankdata(np.asarray(cost), axis=1, method="average")
    rows = np.flatnonzero(a != NO_MATCH)
    return float(ranks[rows, a[rows]].mean()) if len(rows) else float("nan")


def agreement_pvalue(a: np.ndarray, other: np.ndarray, draws: int = 999, seed: int = 0) -> float:
    """P(as many i with a(i) = other(i) when other's rows are shuffled): a permutation test that keeps both
    maps' marginals, so two maps that collapse onto the same y do not agree beyond chance."""
    a, other = np.asarray(a), np.asarray(other)
    observed = int(matches(a, other).sum())
    shuffled = np.random.default_rng(seed).permuted(np.tile(other, (draws, 1)), axis=1)
    null = ((shuffled == a) & (a != NO_MATCH)).sum(1)
    return float((1 + (null >= observed).sum()) / (1 + draws))
