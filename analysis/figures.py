"""Figures shared by the tracked runs and the reports. Each returns a matplotlib Figure; callers save it.

`plt`, `sns` and `PAIRING_COLOURS` load pyplot and seaborn on first use (`from .figures import plt`): a sweep
process, whose only picture is matrix_image's, skips their second of imports."""

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


# seaborn's "mako" colour map in 8-bit RGB, for matrix_image: a run's picture needs only these 256 colours, and
# importing seaborn for them (with pyplot and scipy's statistics) cost every sweep process a second
_MAKO = np.frombuffer(bytes.fromhex(
    "0b03050c04060d04070e05090f060a10070b11070d12080e130910140a11150b13160b14170c16180d17190e191a0f1a"
    "1b0f1b1c101d1d111e1e12201f122120132321142422152623152724162925172b26172c27182e28192f291a312a1a32"
    "2b1b342b1c362c1d372d1d392e1e3a2f1f3c2f1f3e30203f31214132224332224433234634244834254a35264b36264d"
    "36274f372850372952382a54382a55392b573a2c593a2d5b3b2e5c3b2e5e3b2f603c30623c31633d32653d33673d3369"
    "3e346b3e356c3e366e3f37703f38723f3974403975403a77403b79403c7b403d7c403e7e403f80404082404183404285"
    "40438640448840458940468b3f478c3f488e3f498f3f4b903e4c913e4d923d4e933d4f943d50953c52963c53973b5497"
    "3b55983b57993a58993a599a395a9a395b9b395d9b385e9b385f9c38609c37619d37629d37649d37659d36669e36679e"
    "36689e36699f366b9f356c9f356d9f356ea0356fa03570a03571a03573a03574a13575a13576a13577a13478a23479a2"
    "347aa2347ca2347da3347ea3347fa33480a43481a43482a43483a43484a53486a53487a53488a53389a6338aa6338ba6"
    "338ca6338da7338ea73390a73391a73392a83393a83394a83495a83496a93497a93499a9349aa9349ba9349caa349daa"
    "359eaa359faa35a0aa35a1ab36a3ab36a4ab36a5ab37a6ab37a7ab37a8ab38a9ac38aaac39acac39adac3aaeac3bafac"
    "3bb0ac3cb1ac3db2ac3db3ac3eb4ac3fb6ad40b7ad41b8ad41b9ad42baad43bbad44bcad45bdad46bead48bfad49c1ad"
    "4ac2ad4bc3ad4dc4ad4ec5ac50c6ac51c7ac53c8ac55c9ac57caac59cbac5bccac5dcdac5fceac62cfac64d0ac67d1ac"
    "6ad1ac6dd2ac70d3ad73d4ad76d5ad79d5ae7cd6ae7fd7af82d7b085d8b088d9b18bd9b28edab290dbb393dbb496dcb5"
    "99ddb69bdeb79edeb8a1dfb9a3e0baa6e0bba8e1bdabe2beade2bfafe3c1b2e4c2b4e4c3b6e5c5b9e6c6bbe7c8bde7ca"
    "bfe8cbc1e9cdc3eacfc5ebd0c8ebd2caecd4ccedd5ceeed7d0eed9d2efdad4f0dcd6f1ded8f2dfdaf3e1dcf3e3def4e4"
), np.uint8).reshape(256, 3)


def _mako(values: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours of values in [0, 1], as matplotlib looks them up: 256 equal bins with 1 in the
    top one, NaN black."""
    x = np.array(values, copy=True)
    x *= 256
    x[x == 256] = 255
    bad = np.isnan(x)
    rgb = _MAKO[np.clip(np.where(bad, 0, x), 0, 255).astype(int)]
    rgb[bad] = 0
    return rgb


def matrix_image(D: np.ndarray, a: np.ndarray | None = None, ref: np.ndarray | None = None,
                 cell: int = 12) -> np.ndarray:
    """A distance matrix as an (H, W, 3) uint8 image in distance_heatmap's colours: each row's nearest column
    framed in white, the reference partner as a red dot. For a run's artifacts, once per run: a labelled
    figure costs a third of a second, this a millisecond (the report draws the labelled one)."""
    span = np.ptp(D) or 1.0
    rgb = _mako((D - D.min()) / span)
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
    # at least 5 inches: at N = 5 the names ("faces[2]") ran into each other on a smaller matrix
    side = min(10.0, max(5.0, 2.0 + 0.35 * max(n_rows, n_cols)))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    # the images' own names (faces[2], ...) where they fit, so the axes read as assignment.json does
    xticks = col_names if col_names and n_cols <= 20 else max(1, n_cols // 20)
    yticks = row_names if row_names and n_rows <= 20 else max(1, n_rows // 20)
    sns.heatmap(D, ax=ax, cmap="mako", square=True, cbar_kws={"label": "mean |difference| in [-1, 1]"},
                xticklabels=xticks, yticklabels=yticks)
    if col_names and n_cols <= 20:
        ax.tick_params(axis="x", labelrotation=90)
    if row_names and n_rows <= 20:
        ax.tick_params(axis="y", labelrotation=0)  # one name per line, never stacked end to end
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
