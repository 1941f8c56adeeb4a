"""Figures shared by the tracked runs and the reports. Each returns a matplotlib Figure; callers save it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: sweeps and reports run without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402


def reference_label(pairing: str | None) -> str:
    """What pi is for a run: the pair given, except under shuffled pairing, where no pair is ever given and
    the metrics are scored against the stored (aligned) order."""
    if pairing == "shuffled":
        return "stored order (shuffled: no pair given)"
    return "given pair (pi(i))"


def distance_heatmap(D: np.ndarray, a: np.ndarray | None = None, pi: np.ndarray | None = None,
                     title: str = "D_xy[i, j] = d(G(x_i), y_j)", row_label: str = "x_i",
                     col_label: str = "y_j", pairing: str | None = None) -> plt.Figure:
    """The distance matrix with the nearest target of each row (a, white square; none on a tied row) and the
    pairing scored against (pi, red dot) marked: where they coincide, the pair given is the pair formed."""
    n_rows, n_cols = D.shape
    side = min(10.0, 2.0 + 0.35 * max(n_rows, n_cols))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    sns.heatmap(D, ax=ax, cmap="mako", square=True, cbar_kws={"label": "mean |difference| in [-1, 1]"},
                xticklabels=max(1, n_cols // 20), yticklabels=max(1, n_rows // 20))
    rows = np.arange(n_rows)
    if a is not None:
        a = np.asarray(a)
        ax.scatter(a[a >= 0] + 0.5, rows[a >= 0] + 0.5, marker="s", s=120, facecolors="none", edgecolors="white",
                   linewidths=1.8, label="nearest y (a(i))")
    if pi is not None:
        ax.scatter(np.asarray(pi) + 0.5, rows + 0.5, marker="o", s=22, color="orangered",
                   label=reference_label(pairing))
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title)
    if a is not None or pi is not None:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def distance_heatmap_image(D: np.ndarray, a: np.ndarray | None = None, pi: np.ndarray | None = None,
                           cell: int | None = None):
    """The same picture as `distance_heatmap` without axes, as a (3, H, W) tensor in [0, 1].

    Drawn directly from the colour map in a few milliseconds: every trial logs one, and a matplotlib
    figure per trial cost a tenth of a short trial's wall time."""
    import torch

    n_rows, n_cols = D.shape
    cell = cell or max(6, min(24, 320 // max(n_rows, n_cols)))
    span = float(D.max() - D.min()) or 1.0
    rgb = matplotlib.colormaps["viridis"]((D - D.min()) / span)[..., :3]
    image = np.kron(rgb, np.ones((cell, cell, 1)))
    for i in range(n_rows):
        if a is not None and a[i] >= 0:  # white frame: the nearest target a(i); none on a tied row
            r0, c0 = i * cell, int(a[i]) * cell
            image[r0 : r0 + cell, [c0, c0 + cell - 1]] = 1.0
            image[[r0, r0 + cell - 1], c0 : c0 + cell] = 1.0
        if pi is not None:  # red dot: the pair given pi(i)
            q, r0, c0 = max(1, cell // 4), i * cell + cell // 2, int(pi[i]) * cell + cell // 2
            image[r0 - q // 2 : r0 + q - q // 2, c0 - q // 2 : c0 + q - q // 2] = (1.0, 0.27, 0.0)
    return torch.from_numpy(image).permute(2, 0, 1).float()
