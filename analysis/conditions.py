"""Which runs belong together. A study's numbers are grouped by the whole condition it varied (pairing,
scheme, N, lambdas, budget, ...), never pooled across any of them without saying so; seeds and data seeds
are the replicates inside a condition, and only data seeds are independent of each other.

The vocabulary is RunConfig's own: a condition is every field except the replicates, how a run is executed
and what only affects timing, the same identity the sweep uses for its `config_key`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields

import pandas as pd

from cyclelike.config import EXECUTION_KEYS, TIMING_KEYS, RunConfig

REPLICATES = ("seed", "data_seed")
CONDITION_KEYS = tuple(f.name for f in fields(RunConfig) if f.name not in REPLICATES + EXECUTION_KEYS + TIMING_KEYS)
SHORT = {"n_images": "N", "direction_schedule": "schedule"}


def varied(t: pd.DataFrame, without: tuple[str, ...] = ()) -> list[str]:
    """The condition keys that take more than one value in `t`, in RunConfig's order. With N pooled, a budget
    that grows with N (the same epochs per image everywhere, a sweep's epochs_per_image) goes with it: it is
    part of what N means in that study, not a condition of its own."""
    keys = [k for k in CONDITION_KEYS if k in t and k not in without and t[k].nunique(dropna=True) > 1]
    if "n_images" in without and "epochs" in keys and (t["epochs"] / t["n_images"]).nunique(dropna=True) == 1:
        keys.remove("epochs")
    return keys


def groups(t: pd.DataFrame, without: tuple[str, ...] = ()) -> Iterator[tuple[dict, pd.DataFrame]]:
    """(the varied keys' values, the runs) for each whole condition of `t`, `without` some keys pooled."""
    keys = varied(t, without)
    if not keys:
        if len(t):
            yield {}, t
        return
    for values, g in t.groupby(keys, dropna=False):
        yield dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True)), g


def describe(condition: dict) -> str:
    """'scheme=cyclegan, N=10': a condition as a reader finds it in the sweep file."""
    return ", ".join(f"{SHORT.get(k, k)}={_plain(v)}" for k, v in condition.items()) or "every run"


def _plain(value) -> str:
    if isinstance(value, str) and "/" in value:  # a file: its name (and dataset) is what tells conditions apart
        return value.rsplit("/", 1)[1]
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def labelled(t: pd.DataFrame, named_by: pd.DataFrame | None = None) -> list[tuple[str, dict, pd.DataFrame]]:
    """groups() with a short label each (A, B, ...): a condition is named once, in a legend, and the label
    stands for it in sentences and tables. With `named_by` (the whole study, of which t is a part), each group
    keeps the label it has there, so that one letter means one condition in every section."""
    if named_by is not None and len(named_by) > len(t):
        letter = {index: label for label, _, g in labelled(named_by) for index in g.index}
        return [(letter.get(g.index[0], "?"), condition, g) for condition, g in groups(t)]
    return [(chr(ord("A") + k) if k < 26 else f"C{k + 1}", condition, g)
            for k, (condition, g) in enumerate(groups(t))]


def legend(labelled_groups: list[tuple[str, dict, pd.DataFrame]]) -> str:
    if not labelled_groups:
        return ""
    return "Conditions: " + "; ".join(f"{label} = {describe(c)}" for label, c, _ in labelled_groups) + "."


def data_set_ids(g: pd.DataFrame) -> pd.Series:
    """Which data set each run trained on, by the images it trained on (tags.data_hash), not its data_seed: data
    seeds that re-split a pool into the same images count once. Runs that share either domain's images
    (data_hash.x or .y: edge maps and grey faces against the same colour faces) are one data set too, since
    a shared side is no independent evidence. Runs logged before the hashes fall back to their data_seed."""
    seeds = g["data_seed"].astype(str) if "data_seed" in g else pd.Series("0", index=g.index)
    if "tags.data_hash" not in g:
        return "seed " + seeds
    ids = g["tags.data_hash"].where(g["tags.data_hash"].notna(), "seed " + seeds).astype(str)
    parent = {k: k for k in ids}

    def root(k: str) -> str:
        while parent[k] != k:
            k = parent[k]
        return k

    for side in ("tags.data_hash.x", "tags.data_hash.y"):
        if side not in g:
            continue
        for _, same in ids[g[side].notna()].groupby(g[side]):  # runs whose images on this side are equal
            first = root(same.iloc[0])
            for k in same:
                parent[root(k)] = first
    return ids.map(root)


def data_sets(g: pd.DataFrame) -> int:
    """Independent data sets behind a group: its distinct training images (seeds of one data set share them)."""
    return int(data_set_ids(g).nunique()) if len(g) else 0


def _same(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def missing_cells(t: pd.DataFrame, space: dict, seeds: list) -> list[dict]:
    """The grid's (cell, seed) pairs with no complete or pruned run: what a sweep has yet to run, or lost.
    `space` as the sweep file gives it; ranges (random, TPE) have no cells to miss."""
    if not space or not all(isinstance(v, list) for v in space.values()):
        return []
    import itertools

    done = t[t["state"].isin(["COMPLETE", "PRUNED"])] if "state" in t else t.iloc[:0]
    names = sorted(space)
    lost = []
    for values in itertools.product(*(space[n] for n in names)):
        cell = dict(zip(names, values, strict=True))
        for seed in seeds:
            mask = pd.Series(True, index=done.index)
            for k, v in {**cell, "seed": seed}.items():
                mask &= done[k].map(lambda x, v=v: _same(x, v)) if k in done else False
            if not mask.any():
                lost.append({**cell, "seed": seed})
    return lost
