"""What a trial's run holds besides its metrics: the pictures (assignment strips, sample grids, distance
matrices), the tables (evaluation history, distance matrices, the images trained on) and the weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from analysis.figures import matrix_image
from analysis.pairing import PairingResult
from cyclelike.config import RunConfig
from cyclelike.data import Domains, data_key
from cyclelike.samples import (
    HOLDOUT_ROWS,
    PNG_OPTIONS,
    SAMPLE_ROWS,
    STRIP_ROWS,
    assignment_strip,
    holdout_strip,
    labelled,
    sample_grid,
)

from .tracking import dataset_inputs


def _matrix_csv(D: np.ndarray, row: str, col: str) -> str:
    """D with named rows and columns (x0.., y0..) under a corner `x\\y`, six decimals."""
    table = pd.DataFrame(D, index=[f"{row}{i}" for i in range(len(D))],
                         columns=[f"{col}{j}" for j in range(D.shape[1])]).rename_axis(f"{row}\\{col}")
    return table.to_csv(float_format="%.6f", lineterminator="\n")


_INPUTS: dict[tuple, list] = {}


def run_inputs(config: RunConfig, data: Domains) -> list:
    """The trained-on images and the held-out ones as two MLflow inputs, named by N and data set (the UI tells
    datasets of different N apart by name, not by their hash alone). Built once per data set and process:
    hashing the images and MLflow's digest of the table cost ~10 ms a run."""
    key = data_key(config)
    if key not in _INPUTS:
        synthetic = config.data == "synthetic"
        source = f"synthetic:{config.x_domain}-{config.y_domain}" if synthetic else \
            f"{config.data}:{Path(config.x_path).name}-{Path(config.y_path or config.x_path).name}"
        table = _dataset_table(data)
        if len(_INPUTS) >= 8:
            _INPUTS.clear()
        drawn = f"data_seed={config.data_seed}"
        _INPUTS[key] = dataset_inputs(
            {"training": (table[table["part"] == "train"], f"{source} N={config.n_images} {drawn}"),
             "evaluation": (table[table["part"] == "held-out"], f"{source} held-out={config.n_holdout} {drawn}")},
            None if synthetic else str(Path(config.x_path.split(":")[0]).resolve()))
    return _INPUTS[key]


def _dataset_table(data: Domains):
    """Every image of the run: domain, part, index, name and a hash of its pixels as trained on."""
    rows = []
    for domain, part, images, names in (("X", "train", data.x, data.x_names), ("Y", "train", data.y, data.y_names),
                                        ("X", "held-out", data.x_holdout, data.x_holdout_names),
                                        ("Y", "held-out", data.y_holdout, data.y_holdout_names)):
        for i, image in enumerate(images.cpu()):
            digest = hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()[:16]
            rows.append({"domain": domain, "part": part, "index": i,
                         "name": names[i] if i < len(names) else "", "sha1": digest})
    return pd.DataFrame(rows)


def pairing_strip(data: Domains, result: PairingResult) -> Image.Image:
    """The evaluation's assignment as a picture, drawn from the outputs it measured (no forward pass)."""
    rows = STRIP_ROWS if "G(G(x))" in result.outputs else STRIP_ROWS[:3]
    return labelled(assignment_strip(None, data, result.a, outputs=result.outputs), rows)


def history_csv(history: list[tuple[int, PairingResult]]) -> str:
    """One row per evaluation and x_i: epoch, i, a(i), b(i), the row's minimum distance and its margin over
    the second nearest (relative)."""
    rows = []
    for epoch, r in history:
        part = np.sort(r.D_xy, axis=1)
        second = part[:, 1] if part.shape[1] > 1 else np.full(len(part), np.nan)
        rows.append(pd.DataFrame({"epoch": epoch, "i": np.arange(len(r.a)), "a": r.a.astype(int),
                                  "b": pd.array(r.b if r.b is not None else [None] * len(r.a), dtype="Int64"),
                                  "row_min": part[:, 0], "margin": (second - part[:, 0]) / (part[:, 0] + 1e-12)}))
    return pd.concat(rows).to_csv(index=False, float_format="%.6f", lineterminator="\n")


def _samples(data: Domains, result: PairingResult) -> Image.Image:
    rows = SAMPLE_ROWS if "G(y)" in result.outputs else SAMPLE_ROWS[:3]
    return labelled(sample_grid(None, data, outputs=result.outputs), rows)


def _png(picture: Image.Image, path: Path) -> None:
    picture.save(path, **PNG_OPTIONS)


def write_final_artifacts(root: Path, result, final: PairingResult, strip: Image.Image, data: Domains,
                           epoch: int, weights: bool, initial: PairingResult | None = None) -> None:
    """The end-of-run artifacts: samples, assignment strip, distance matrices, weights, config."""
    _png(_samples(data, final), root / "samples" / f"epoch_{epoch:04d}.png")
    _png(strip, root / "pairing" / "strip.png")
    held = holdout_strip(result.translator, data, outputs=final.outputs)
    if held is not None:
        _png(labelled(held, HOLDOUT_ROWS), root / "pairing" / "holdout.png")
    (root / "pairing" / "D_xy.csv").write_text(_matrix_csv(final.D_xy, "x", "y"))
    # rows x_i, columns y_j: white frames the nearest y of each x, a red dot the pair given (the report
    # draws the same matrices labelled)
    _png(Image.fromarray(matrix_image(final.D_xy, final.a, final.pi)), root / "pairing" / "D_xy.png")
    if final.D_yx is not None:
        (root / "pairing" / "D_yx.csv").write_text(_matrix_csv(final.D_yx, "y", "x"))
        _png(Image.fromarray(matrix_image(final.D_yx, final.b, np.argsort(final.pi))), root / "pairing" / "D_yx.png")
    (root / "pairing" / "assignment.json").write_text(json.dumps(
        {"a": final.a.tolist(), "b": None if final.b is None else final.b.tolist(), "pi": final.pi.tolist(),
         # the untrained map (epoch 0): where the pairs started from
         "a0": None if initial is None else initial.a.tolist(),
         "b0": None if initial is None or initial.b is None else initial.b.tolist(),
         "partners": {name: p.tolist() for name, p in final.partners.items()},
         "x_names": data.x_names, "y_names": data.y_names}, indent=1))
    (root / "config.json").write_text(json.dumps(result.config.to_dict(), indent=2))
    for name, net in result.nets.items():
        if weights and name in ("G", "F"):
            torch.save({k: v.cpu() for k, v in net.state_dict().items()}, root / "model" / f"{name}.pt")
