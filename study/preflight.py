"""Before the first trial: what a sweep or a run will train on is checked once, up front.

Every data source is loaded here (the folder, the file and its key, the count, the pixel values), and each
condition's memory is estimated against what the machine has free, so that a missing folder, a corrupt image,
too few images, a bad FILE:KEY, non-finite pixels or an N that cannot fit end with one line and exit 2 before a
study, a trial or a run exists, instead of failing each trial (and using up its retries) one by one.
"""

from __future__ import annotations

import itertools
import os

from cyclelike.config import ConfigError, DataError, RunConfig
from cyclelike.data import data_key, shared_domains

from .spec import SweepError, SweepSpec

MAX_CHECKED = 256  # conditions drawn from a random or TPE study's space: its corners, at most this many
# what one condition holds at once besides its networks: the images of both domains (train and held-out), about
# four translations of them in an evaluation, and the N x N distance matrices both ways (float64)
IMAGE_COPIES = 6


def conditions(spec: SweepSpec) -> list[RunConfig]:
    """The conditions a sweep may train: every cell of a grid; for a sampler, every combination of the space's
    list values and the two ends of its integer ranges (float ranges are loss weights and the like: their low end)."""
    if spec.sampler == "grid":
        return [spec.config_for(cell, spec.seeds[0]) for cell in spec.grid_cells()]
    names = sorted(spec.space)
    values = [dim if isinstance(dim, list) else ([dim.low, dim.high] if dim.is_int else [dim.low])
              for dim in (spec.space[n] for n in names)]
    combos = itertools.islice(itertools.product(*values), MAX_CHECKED)
    return [spec.config_for(dict(zip(names, combo, strict=True)), spec.seeds[0]) for combo in combos]


def memory_bytes(config: RunConfig) -> int:
    """A rough lower bound of what a condition holds in memory at once (see IMAGE_COPIES), networks aside."""
    images = 2 * (config.n_images + config.n_holdout) * 3 * config.image_size ** 2 * 4
    return IMAGE_COPIES * images + 2 * config.n_images ** 2 * 8


def available_bytes() -> int:
    """Memory free for new work: MemAvailable where Linux says it, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check(configs: list[RunConfig], workers: int = 1) -> None:
    """Raise SweepError (exit 2) naming the first condition that cannot run: too large for this machine's memory
    with `workers` processes each holding one, or data that cannot be loaded. Each data set is loaded once, and
    stays in this process's cache (cyclelike.data.shared_domains) for a trial run here."""
    free = available_bytes()
    largest = max(configs, key=memory_bytes)
    need = memory_bytes(largest) * workers
    if need > free:
        raise SweepError(f"n_images={largest.n_images}, image_size={largest.image_size}: about {need / 2**30:.1f} "
                         f"GiB in memory ({workers} worker(s) x the images, their translations and the N x N "
                         f"distances), more than the {free / 2**30:.1f} GiB free here; use fewer images or a smaller "
                         "image_size")
    seen = set()
    for config in configs:
        if config.data == "synthetic":  # drawn by this code: nothing to find missing or damaged
            continue
        try:
            key = data_key(config)
            if key not in seen:
                seen.add(key)
                shared_domains(config)
        except (DataError, ConfigError) as err:
            raise SweepError(str(err)) from None
        except OSError as err:  # a file that vanished or cannot be read while it was listed
            raise SweepError(f"{config.x_path or config.data}: {err}") from None


def check_sweep(spec: SweepSpec, workers: int | str = 1) -> None:
    check(conditions(spec), workers if isinstance(workers, int) else 1)


def check_run(config: RunConfig) -> None:
    check([config])
