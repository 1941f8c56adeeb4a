"""How a sweep's worker processes start and end.

They fork from a server that imported `study.workers` once: each worker starts without importing torch, MLflow and
Optuna again (seconds of a core each) and shares their memory until it writes to it. The server starts with the
sweep's environment, folder and cores and stops with the sweep, so the next sweep in the same process (a notebook,
the tests) starts its own, as spawned workers would have seen them. Off Linux the workers are spawned.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
from multiprocessing import forkserver


def worker_context():
    if sys.platform != "linux":  # a fork after importing torch is untried elsewhere
        return mp.get_context("spawn")
    stop_fork_server()  # one a sweep left running (its workers outlived a second Ctrl-C) has that sweep's environment
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["study.workers"])
    return context


def stop_fork_server() -> None:
    """Python has no public call for it (its own tests call _stop). Killed first: an interpreter that imported torch
    takes a second to shut down, and the server holds nothing to save."""
    server = getattr(forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    server._stop()


def die_with_sweep(sweep_alive) -> None:
    """A worker ends when its sweep does, however the sweep ends: a SIGKILL leaves the sweep no time to stop it,
    and an orphan went on finishing trials that the next start counts as killed and runs again. `sweep_alive` is
    the read end of a pipe whose write end only the sweep holds: it reads end-of-file the moment the sweep is gone.
    (The parent-death signal cannot say it: a forked worker's parent is the fork server, which outlives the sweep
    while any worker holds its pipe.)"""

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            sweep_alive.recv()
        os._exit(137)

    threading.Thread(target=watch, daemon=True, name="die-with-sweep").start()
