"""A trial's checkpoints in its MLflow run, verified before they are trusted.

Each is stored as `checkpoint/epoch_<E>-<sha256>.pt`: the name carries the checksum of the bytes, so a file cut
short by a kill during its upload, or damaged in the store, is known for what it is. A new one is uploaded before
the older one is deleted, so a kill at any point leaves the last whole one in place. A retry goes on from the
newest one whose bytes match its name and that loads; a damaged one is said in one line and deleted, and the
same attempt goes on from the one before it, or retrains from epoch 0, without using up a retry.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

from analysis.store import first_line
from cyclelike.checkpoint import check_resumable
from cyclelike.config import ConfigError, RunConfig

from .tracking import RunLogger

# a trial's whole state goes to its run this often (seconds of training) and at its end, and goes again once
# the trial is done: a killed trial resumes from it, training again at most this much
CHECKPOINT_S = float(os.environ.get("CYCLELIKE_CHECKPOINT_S", 300))
CHECKPOINT_DIR = "checkpoint"
NAME = re.compile(r"epoch_(\d+)-([0-9a-f]{64})\.pt$")
LEGACY = "checkpoint.pt"  # stored by older versions, without a checksum: trusted only if it loads


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def store_checkpoint(logger: RunLogger, path: Path, epoch: int) -> None:
    """Upload the local checkpoint under its checksummed name, then delete the run's older ones."""
    staging = path.parent / ".upload"
    named = staging / f"epoch_{epoch:06d}-{digest(path)}.pt"
    staging.mkdir(exist_ok=True)
    try:
        try:
            os.link(path, named)  # the upload takes the file's own name; a link costs no copy
        except OSError:
            shutil.copyfile(path, named)
        logger.log_file(named, CHECKPOINT_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in stored(logger):
        if Path(old).name != named.name:
            logger.delete_artifacts(old)


def stored(logger: RunLogger) -> list[str]:
    """The run's checkpoint files, newest first (by epoch; an unverifiable old-style one last)."""
    try:
        files = [f.path for f in logger.client.list_artifacts(logger.run_id, CHECKPOINT_DIR) if not f.is_dir]
    except Exception:  # a run without artifacts yet
        return []

    def epoch(path: str) -> int:
        found = NAME.search(path)
        return int(found.group(1)) if found else -1

    return sorted(files, key=epoch, reverse=True)


def fetch_checkpoint(logger: RunLogger, into: str | Path, config: RunConfig) -> tuple[Path, dict] | None:
    """The newest checkpoint of the run that is whole, downloaded into `into`, with its state; None when there is
    none (the run trains from epoch 0). A damaged one is said in one line and deleted from the run. A whole one
    made with other settings raises ConfigError (check_resumable)."""
    for path in stored(logger):
        try:
            local = Path(logger.client.download_artifacts(logger.run_id, path, str(into)))
            found = NAME.search(path)
            if found is None and Path(path).name != LEGACY:
                raise ValueError("not a checkpoint this harness writes")
            if found is not None and digest(local) != found.group(2):
                raise ValueError(f"its {local.stat().st_size} bytes do not match its checksum")
            return local, check_resumable(local, config)
        except ConfigError:
            raise
        except Exception as err:  # a short, empty or overwritten file: torch's reader raises many types
            rest = [p for p in stored(logger) if p != path]
            print(f"checkpoint {path} of run {logger.run_id} is damaged ({first_line(err)}): deleted; the trial "
                  f"goes on from {rest[0] if rest else 'epoch 0'} in the same attempt", file=sys.stderr, flush=True)
            logger.delete_artifacts(path)
    return None


def drop_checkpoint(logger: RunLogger, outcome) -> None:
    """A done trial's checkpoint: megabytes a run that nothing will read again."""
    if outcome.checkpointed:
        logger.delete_artifacts(CHECKPOINT_DIR)
