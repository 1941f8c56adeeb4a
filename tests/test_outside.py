"""Kills from outside: a real sweep process gets a SIGKILL at an instant seen from outside (a line it printed, a
row or a file it wrote), with no CYCLELIKE_FAULT, and the same command then runs again. Every cell completes
once, every run is whole with one row per epoch of each metric, nothing is left RUNNING, and the exit codes say
so. tests/test_faults.py kills at the protocol's own named instants from inside.

The default suite kills one sweep just after it printed a trial's COMPLETE (where a cell was lost); FAULTS=full
runs the matrix: after the claim, after a tell, after the last epoch and during a checkpoint's upload, on the
journal and on PostgreSQL, with 1 and 2 workers."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import store_in, write_sweep
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from study.outcome import is_whole
from study.spec import load_sweep
from study.stores.optuna import JournalLock, open_storage
from study.sweep import run_sweep

EPOCHS, EVAL = 6, 2
CELLS = ["aligned", "fixed", "shuffled"]
INSTANTS = ["claim", "tell", "last-epoch", "checkpoint-write"]
FULL = os.environ.get("FAULTS") == "full"
MATRIX = [(i, s, w) for i in INSTANTS for s in ("journal", "postgresql") for w in (1, 2)] if FULL else []


@pytest.fixture(autouse=True)
def _every_epoch_checkpointed(monkeypatch):
    monkeypatch.setenv("CYCLELIKE_CHECKPOINT_S", "1e-9")  # one interval is one epoch, for the commands too
    import study.workers

    monkeypatch.setattr(study.workers, "CHECKPOINT_S", 1e-9)  # the trials' and repair_hollow's


def _sweep_file(folder: Path, name: str, epochs: int = EPOCHS) -> Path:
    """The tiny sweep of conftest, three cells of one seed, as <name>.toml."""
    return write_sweep(folder, name, epochs=epochs, seeds="[0]", eval_every=str(EVAL), threads="1",
                       precision='"fp32"', n_holdout="0", pairing=str(CELLS).replace("'", '"'))


def _wait(predicate, timeout: float, what: str, proc=None, every: float = 0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = predicate()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {proc.returncode}) before {what}")
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _study(folder: Path, name: str, storage: str | None):
    return optuna.load_study(study_name=name, storage=storage or open_storage(str(folder / "mlruns" /
                                                                                   "optuna.journal")))


def _whole(folder: Path, name: str, storage: str | None) -> None:
    """The invariants after the kill and the same command again."""
    trials = _study(folder, name, storage).trials
    complete = sorted(t.params["pairing"] for t in trials if t.state == TrialState.COMPLETE)
    assert complete == sorted(CELLS), [(t.number, t.state, t.params) for t in trials]  # every cell, once
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(name).experiment_id
    runs = {r.info.run_id: r for r in client.search_runs([experiment])}
    assert not [r.info.run_name for r in runs.values() if r.info.status == "RUNNING"]
    for t in trials:
        if t.state == TrialState.COMPLETE:
            run = runs[t.user_attrs["mlflow_run_id"]]
            assert run.info.status == "FINISHED" and is_whole(run.data.tags)
            for key, steps in (("loss/G_l1", range(1, EPOCHS + 1)), ("time/epoch_s", range(1, EPOCHS + 1)),
                               ("pair/forward_top1", range(0, EPOCHS + 1, EVAL))):
                assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(steps), key
            assert not client.list_artifacts(run.info.run_id, "checkpoint")


def test_a_sweep_killed_from_outside_just_after_a_tell_loses_nothing(tmp_path):
    """The instant where a cell was lost: the next trial was RUNNING without owner, and the same command exited 0
    with its cell unrun. Here the sweep is a forked copy of this process (no imports to wait for), killed as soon
    as its COMPLETE line is out."""
    path = _sweep_file(tmp_path, "after-tell")
    out = tmp_path / "out.txt"
    pid = os.fork()
    if pid == 0:
        try:
            sys.stdout = sys.stderr = open(out, "w", buffering=1)  # noqa: SIM115 - the child ends with os._exit
            with store_in(tmp_path):
                run_sweep(load_sweep(path), probe=False)
        finally:
            os._exit(0)
    try:
        _wait(lambda: out.exists() and " COMPLETE " in out.read_text(), 120, "a trial's COMPLETE line")
    finally:
        os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
    assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL
    with store_in(tmp_path):
        run_sweep(load_sweep(path), probe=False)  # raises where a cell is left unrun
    _whole(tmp_path, "after-tell", None)


def _command(folder: Path, storage: str | None, workers: int, out=None):
    cmd = [sys.executable, "-m", "study", "sweep", "--config", str(folder / "outside.toml"), "--workers",
           str(workers), "--fuse-seeds", "off", *(["--storage", storage] if storage else [])]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlruns/mlflow.db", "PYTHONUNBUFFERED": "1"}
    if out is None:
        return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _running_owners(folder: Path, name: str, storage: str | None) -> list[int]:
    try:
        trials = _study(folder, name, storage).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    except (KeyError, FileNotFoundError):
        return []
    return [t.user_attrs["owner"]["pid"] for t in trials if "owner" in t.user_attrs]


def _metric_at(folder: Path, step: int) -> bool:
    db = folder / "mlruns" / "mlflow.db"
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return bool(con.execute("SELECT 1 FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid WHERE "
                                    "r.status = 'RUNNING' AND m.key = 'loss/G_l1' AND m.step = ?", (step,)).fetchone())
    except sqlite3.Error:
        return False


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_workers_die_with_their_sweep(tmp_path):
    """After a SIGKILL of the sweep, its two workers ran on for 20-30 s, orphaned, and finished trials. The sweep
    is a forked copy of this process; its workers fork from its fork server, as always."""
    path = _sweep_file(tmp_path, "outside", epochs=400)
    pid = os.fork()
    if pid == 0:
        try:
            sys.stdout = sys.stderr = open(tmp_path / "out.txt", "w", buffering=1)  # noqa: SIM115 - os._exit ends it
            with store_in(tmp_path):
                run_sweep(load_sweep(path), workers=2, probe=False)
        finally:
            os._exit(0)
    workers = []
    try:
        workers = _wait(lambda: [p for p in _running_owners(tmp_path, "outside", None) if p != pid], 180,
                        "the workers' trials", every=0.25)
    finally:
        os.kill(pid, signal.SIGKILL)  # the sweep alone: its workers are not sent anything
        os.waitpid(pid, 0)
    try:
        end = time.monotonic() + 10
        while time.monotonic() < end and any(_alive(p) for p in workers):
            time.sleep(0.1)
        orphans = [p for p in workers if _alive(p)]
    finally:
        for p in workers:  # the workers this test started, where they outlived the sweep
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    assert not orphans, f"workers {orphans} outlived their sweep"


INSTANT_SEEN = {
    "claim": lambda folder, storage, out: _running_owners(folder, "outside", storage),
    "tell": lambda folder, storage, out: " COMPLETE " in out.read_text(),
    "last-epoch": lambda folder, storage, out: _metric_at(folder, EPOCHS),
    "checkpoint-write": lambda folder, storage, out: list((folder / "mlruns" / "artifacts").rglob("checkpoint/*.pt")),
}


@pytest.mark.parametrize(("instant", "store", "workers"), MATRIX, ids=[f"{i}-{s}-{w}w" for i, s, w in MATRIX])
def test_a_sweep_killed_from_outside_at_any_instant_loses_nothing(tmp_path, request, instant, store, workers):
    storage = None
    if store == "postgresql":  # a database of its own per case: the study names repeat
        import psycopg
        from sqlalchemy.engine import make_url

        base = make_url(request.getfixturevalue("postgres_url"))
        database = f"outside_{instant.replace('-', '_')}_{workers}"
        with psycopg.connect(host=base.host, port=base.port, user=base.username, password=base.password,
                             dbname="postgres", autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{database}"')
            con.execute(f'CREATE DATABASE "{database}"')
        storage = base.set(database=database).render_as_string(hide_password=False)
    _sweep_file(tmp_path, "outside")
    log = tmp_path / "killed.txt"
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = _command(tmp_path, storage, workers, out)
    try:
        _wait(lambda: INSTANT_SEEN[instant](tmp_path, storage, log), 300, instant, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers: a power cut
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_s = time.monotonic() - t0
    again = _command(tmp_path, storage, workers)
    (tmp_path / "again.txt").write_text(again.stdout + again.stderr)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    print(f"{instant} {store} {workers}w: killed after {killed_s:.1f} s; the same command completed in "
          f"{time.monotonic() - t0 - killed_s:.1f} s")
    _whole(tmp_path, "outside", storage)


def test_a_journal_lock_left_by_a_killed_process_is_taken_at_once_and_another_programs_is_waited_for(
        tmp_path, monkeypatch):
    """A sweep killed while it appended to the journal left Optuna's lock symlink behind, and the next start waited
    out Optuna's 30 s grace period before it could write a line."""
    journal = str(tmp_path / "optuna.journal")
    optuna.create_study(study_name="locked", storage=open_storage(journal))
    pid = os.fork()
    if pid == 0:
        try:
            JournalLock(journal).acquire()
        finally:
            os.kill(os.getpid(), signal.SIGKILL)  # dies holding it
    os.waitpid(pid, 0)
    assert os.path.islink(journal + ".lock")
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        if len(waits) > 50:
            raise AssertionError("waited for the lock a dead process held")
        if os.path.islink(journal + ".lock") and os.readlink(journal + ".lock") == journal:
            os.unlink(journal + ".lock")  # the other program is done

    monkeypatch.setattr(time, "sleep", sleep)
    study = optuna.load_study(study_name="locked", storage=open_storage(journal))
    study.ask()
    assert waits == [] and not os.path.islink(journal + ".lock")
    os.symlink(journal, journal + ".lock")  # Optuna's own lock, as optuna-dashboard or plain Optuna take it
    study.ask()
    assert waits and len(study.trials) == 2 and not os.path.islink(journal + ".lock")


def test_a_stale_lock_of_another_program_broken_after_its_grace_leaves_the_journal_locked(tmp_path):
    """Optuna breaks another program's stale symlink through its own release(): the harness's lock let go of its
    kernel lock there, and the next harness process took the journal at the same time."""
    import warnings

    from filelock import FileLock, Timeout

    journal = str(tmp_path / "optuna.journal")
    open_storage(journal)
    os.symlink(journal, journal + ".lock")  # left by a plain Optuna that died holding it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna warns that a 1 s grace is short
        lock = JournalLock(journal, grace_period=1)
    assert lock.acquire()
    try:
        with pytest.raises(Timeout):  # another harness process must wait
            FileLock(journal + ".flock").acquire(timeout=0)
        assert os.readlink(journal + ".lock") != journal  # the symlink is ours now
    finally:
        lock.release()
    assert not os.path.islink(journal + ".lock")
    FileLock(journal + ".flock").acquire(timeout=0).lock.release()


def test_once_the_tracking_server_is_gone_closing_requests_try_once(monkeypatch):
    """Closing a study's runs after an outage went through MLflow's retries request by request: seconds of
    backoff each before the one-line exit."""
    import socket

    import urllib3

    from study.stores.mlflow import without_retries

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    backoffs = []
    monkeypatch.setattr(urllib3.util.retry.Retry, "sleep", lambda self, response=None: backoffs.append(1))
    client = MlflowClient(url)
    with pytest.raises(Exception, match="(?i)connection refused|max retries"):
        client.get_experiment("0")
    assert backoffs  # retried as the harness bounds it (analysis.store)
    backoffs.clear()
    with without_retries(), pytest.raises(Exception, match="(?i)connection refused|max retries"):
        client.get_experiment("0")
    assert backoffs == []
    with pytest.raises(Exception, match="(?i)connection refused|max retries"):
        client.get_experiment("0")
    assert backoffs  # and retried again after
