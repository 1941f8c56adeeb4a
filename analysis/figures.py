"""Figures shared by the tracked runs and the reports. Each returns a matplotlib Figure; callers save it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: sweeps and reports run without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402


def distance_heatmap(D: np.ndarray, a: np.ndarray | None = None, pi: np.ndarray | None = None,
                     title: str = "D_xy[i, j] = d(G(x_i), y_j)", row_label: str = "x_i",
                     col_label: str = "y_j") -> plt.Figure:
    """The distance matrix with the nearest target of each row (a, white square) and the pairing in force
    (pi, black dot) marked: where they coincide, the pair given is the pair formed."""
    n_rows, n_cols = D.shape
    side = min(10.0, 2.0 + 0.35 * max(n_rows, n_cols))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    sns.heatmap(D, ax=ax, cmap="mako", square=True, cbar_kws={"label": "mean |difference| in [-1, 1]"},
                xticklabels=max(1, n_cols // 20), yticklabels=max(1, n_rows // 20))
    rows = np.arange(n_rows)
    if a is not None:
        ax.scatter(np.asarray(a) + 0.5, rows + 0.5, marker="s", s=120, facecolors="none", edgecolors="white",
                   linewidths=1.8, label="nearest y (a(i))")
    if pi is not None:
        ax.scatter(np.asarray(pi) + 0.5, rows + 0.5, marker="o", s=18, color="black", label="given pair (pi(i))")
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title)
    if a is not None or pi is not None:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    fig.tight_layout()
    return fig
