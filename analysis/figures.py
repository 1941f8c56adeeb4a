"""Figures shared by the tracked runs and the reports. Each returns a matplotlib Figure; callers save it.

`plt`, `sns` and `PAIRING_COLOURS` load pyplot and seaborn on first use (`from .figures import plt`): a sweep
process that never draws (a parent of workers, a bad sweep file) skips their second of imports."""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _plotting():
    import matplotlib

    matplotlib.use("Agg")  # headless: sweeps and reports run without a display
    import matplotlib.pyplot as plt
    import seaborn as sns

    # one colour per pairing in every figure of a report, so that a reader learns it once
    colours = dict(zip(("aligned", "fixed", "shuffled"), sns.color_palette("deep"), strict=False))
    return {"plt": plt, "sns": sns, "PAIRING_COLOURS": colours}


def __getattr__(name: str):
    if name in ("plt", "sns", "PAIRING_COLOURS"):
        return _plotting()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def legend_outside(ax) -> None:
    """The legend beside the panel, never over the data, in one place and size in every figure."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def reference_label(pairing: str | None) -> str:
    """What pi is for a run: the pair given, except under shuffled pairing, where no pair is ever given and
    the metrics are scored against the stored (aligned) order."""
    if pairing == "shuffled":
        return "stored order (shuffled: no pair given)"
    return "given pair (pi(i))"


def matrix_image(D: np.ndarray, a: np.ndarray | None = None, ref: np.ndarray | None = None,
                 cell: int = 12) -> np.ndarray:
    """A distance matrix as an (H, W, 3) uint8 image in distance_heatmap's colours: each row's nearest column
    framed in white, the reference partner as a red dot. For a run's artifacts, once per run: a labelled
    figure costs a third of a second, this a millisecond (the report draws the labelled one)."""
    span = np.ptp(D) or 1.0
    mako = _plotting()["sns"].color_palette("mako", as_cmap=True)
    rgb = (mako((D - D.min()) / span)[..., :3] * 255).astype(np.uint8)
    image = rgb.repeat(cell, 0).repeat(cell, 1)
    rows = range(len(D))
    for i, j in zip(rows, a if a is not None else [], strict=False):
        y, x = i * cell, int(j) * cell
        image[y:y + cell, [x, x + 1, x + cell - 2, x + cell - 1]] = 255
        image[[y, y + 1, y + cell - 2, y + cell - 1], x:x + cell] = 255
    dot = slice(cell // 2 - 2, cell // 2 + 2)
    for i, j in zip(rows, ref if ref is not None else [], strict=False):
        image[i * cell:(i + 1) * cell, int(j) * cell:(int(j) + 1) * cell][dot, dot] = (220, 30, 30)
    return image


def distance_heatmap(D: np.ndarray, a: np.ndarray | None = None, pi: np.ndarray | None = None,
                     title: str = "D_xy[i, j] = d(G(x_i), y_j)", row_label: str = "x_i",
                     col_label: str = "y_j", pairing: str | None = None, row_names: list[str] | None = None,
                     col_names: list[str] | None = None):
    """The distance matrix with the nearest target of each row (a, white square; none on a tied row) and the
    pairing scored against (pi, red dot) marked: where they coincide, the pair given is the pair formed."""
    from matplotlib.lines import Line2D

    plt, sns = _plotting()["plt"], _plotting()["sns"]
    n_rows, n_cols = D.shape
    side = min(10.0, 2.0 + 0.35 * max(n_rows, n_cols))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    # the images' own names (faces[2], ...) where they fit, so the axes read as assignment.json does
    xticks = col_names if col_names and n_cols <= 20 else max(1, n_cols // 20)
    yticks = row_names if row_names and n_rows <= 20 else max(1, n_rows // 20)
    sns.heatmap(D, ax=ax, cmap="mako", square=True, cbar_kws={"label": "mean |difference| in [-1, 1]"},
                xticklabels=xticks, yticklabels=yticks)
    if col_names and n_cols <= 20:
        ax.tick_params(axis="x", labelrotation=90)
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
        # the white square is drawn on the dark map; in the (white) legend it needs a dark outline to be seen
        handles = []
        if a is not None:
            handles.append(Line2D([], [], marker="s", ls="", markersize=10, markerfacecolor="none",
                                  markeredgecolor="black", markeredgewidth=1.8,
                                  label="nearest y (a(i)), white on the map"))
        if pi is not None:
            handles.append(Line2D([], [], marker="o", ls="", color="orangered", label=reference_label(pairing)))
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
        fig.tight_layout(rect=(0, 0.07, 1, 1))  # room under the x label, whatever N is
    else:
        fig.tight_layout()
    return fig
