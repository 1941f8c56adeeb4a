"""Who runs a trial, and whether it still can: the owner record a claim writes, the liveness rule the recovery
reads (study.ledger), and the lease or heartbeat thread a running trial keeps up.

A dead owner on this host is known at once (its process is gone), so its trial is recovered without waiting out
any grace. Only another host's trial needs one: its lease (a journal on a shared disk) or its heartbeats (an RDB
storage, where Optuna's stale check applies the grace).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from analysis.store import first_line

from .stores.optuna import StoreOutage, heartbeat_enabled, heartbeat_grace_s

LEASE_EVERY_S = 30.0
LEASE_GRACE_S = float(os.environ.get("CYCLELIKE_LEASE_GRACE_S", 300))  # another host's trial is dead past this
# a storage silent this long is lost, even where the grace is longer: the sweep ends with exit 3 within a minute
# of an outage (the same command goes on from the checkpoints), not minutes later
OUTAGE_S = float(os.environ.get("CYCLELIKE_OUTAGE_S", 30))
RETRY_S = 5.0  # how soon a missed heartbeat is tried again
HOST = socket.gethostname()


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process: a pid reused by another process has another one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_record(invocation: str) -> dict[str, Any]:
    return {"host": HOST, "pid": os.getpid(), "pid_start": _process_start(os.getpid()), "invocation": invocation}


def _has_heartbeat(storage, trial: FrozenTrial) -> bool:
    check = getattr(storage, "_has_heartbeat", None)
    return bool(heartbeat_enabled(storage) and check is not None and check(trial._trial_id))


def owner_alive(trial: FrozenTrial, storage=None, now: float | None = None) -> bool:
    """Whether the owner of a RUNNING trial may still be running it; asked under the coordinator lock.
    - On this host the process decides at once: gone, or reused by another, is dead; so is this very process,
      which runs no trial while it recovers others.
    - No owner: a claim writes it under the coordinator lock in the step that makes the trial RUNNING
      (ledger.claim), so a trial seen here without one was left by a process that died inside its claim. Dead,
      unless it has sent a heartbeat: then the heartbeat's grace decides, as for another host.
    - Another host: its heartbeats decide on an RDB storage (Optuna's stale check, not here), its lease on a journal.
    """
    owner, now = trial.user_attrs.get("owner"), now or time.time()
    if not owner:
        return _has_heartbeat(storage, trial)
    if owner.get("host") == HOST:
        if owner.get("pid") == os.getpid():
            return False
        start = _process_start(owner["pid"])
        return start is not None and start == owner.get("pid_start")
    if heartbeat_enabled(storage):
        return True
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    return now - float(trial.user_attrs.get("lease", started)) < LEASE_GRACE_S


class Lease:
    """A trial's heartbeat (or lease) thread, and when the storage last took it."""

    def __init__(self, storage, trial_id: int):
        beat = heartbeat_enabled(storage)
        self.storage, self.trial_id, self.beat = storage, trial_id, beat
        self.interval = storage.heartbeat_interval if beat else LEASE_EVERY_S
        # past this without a heartbeat, other workers fail the trial as stale and run its retry
        self.grace = heartbeat_grace_s(storage) if beat else LEASE_GRACE_S
        self.taken = time.monotonic()
        self.error: Exception | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._refresh, daemon=True, name=f"lease-{trial_id}")

    def _refresh(self) -> None:
        while True:
            try:  # a missed refresh is retried; the grace spans several
                if self.beat:
                    self.storage.record_heartbeat(self.trial_id)
                else:
                    self.storage.set_trial_user_attr(self.trial_id, "lease", time.time())
                self.taken, self.error = time.monotonic(), None
            except Exception as err:
                self.error = err
            if self.stop.wait(self.interval if self.error is None else min(self.interval, RETRY_S)):
                return

    def check(self) -> None:
        """Raise once the storage has taken no heartbeat for its grace period or OUTAGE_S, the shorter: the
        trial counts as dead to the other workers, or the storage is down, so training it on is lost work (an
        outage, or a network cut from this machine)."""
        silent, limit = time.monotonic() - self.taken, min(self.grace, OUTAGE_S)
        if self.error is not None and silent > limit:
            raise StoreOutage(f"no heartbeat of trial id {self.trial_id} reached the storage for {silent:.0f} s "
                              f"(limit {limit:.0f} s): {first_line(self.error)}") from self.error


@contextlib.contextmanager
def lease(storage, trial_id: int):
    """Tell the storage the trial is alive while it runs: Optuna's heartbeat on an RDB storage (the thread
    `study.optimize` would run), else a lease timestamp that other hosts can read. Yields the Lease, whose
    check() says when the storage stopped taking it."""
    held = Lease(storage, trial_id)
    held.thread.start()
    try:
        yield held
    finally:
        held.stop.set()
        held.thread.join(timeout=5)
