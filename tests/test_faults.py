"""The finishing protocol under kills (study.ledger): a sweep killed at each of its named instants, then the same
sweep again, leaves every cell COMPLETE once, every run whole, nothing RUNNING and at most one checkpoint interval
trained twice. The kill is CYCLELIKE_FAULT=<instant> (study.outcome.fault: os._exit(137), no cleanup) in a forked
copy of this process, which costs no imports; the same sweep then runs here.

The fast subset runs by default; FAULTS=full adds the other instants and 2 workers (and PostgreSQL where
initdb is found)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import store_in, write_sweep
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import study.ledger
import study.stores.optuna
import study.sweep
import study.workers
from study.checkpoints import CHECKPOINT_DIR
from study.outcome import FAULT_ENV, is_whole
from study.spec import load_sweep
from study.stores.optuna import open_storage
from study.sweep import SweepFailed, prepare, run_sweep
from study.tracking import RunLogger

EPOCHS = 4
FAST = ["claimed", "checkpoint", "trained", "whole", "told"]
FULL = os.environ.get("FAULTS") == "full"
INSTANTS = FAST + ["dropped"] if FULL else FAST
CASES = [(i, "journal", 1) for i in INSTANTS]
if FULL:
    CASES += [(i, "journal", 2) for i in INSTANTS] + [(i, "postgresql", w) for i in INSTANTS for w in (1, 2)]


@pytest.fixture(autouse=True)
def _every_epoch_checkpointed(monkeypatch):
    # a checkpoint after every epoch: one interval is one epoch, and each instant finds one to go on from
    monkeypatch.setenv("CYCLELIKE_CHECKPOINT_S", "1e-9")  # for worker processes, which import it afresh
    monkeypatch.setattr(study.workers, "CHECKPOINT_S", 1e-9)  # the trials' and repair_hollow's
    # PostgreSQL: a killed worker's trial is stale 2 s after its last heartbeat, not minutes
    for key, value in (("HEARTBEAT_S", 1), ("HEARTBEAT_GRACE_S", 2)):
        monkeypatch.setenv(f"CYCLELIKE_{key}", str(value))
        monkeypatch.setattr(study.stores.optuna, key, value)


def _killed_at(folder: Path, instant: str, storage: str | None = None, workers: int = 1, before=None) -> int:
    """The sweep in a forked copy of this process, which ends at `instant` (after `before()`); its exit status."""
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 0
        try:
            with open(folder / "killed.err", "w") as err:  # its workers' too
                os.dup2(err.fileno(), 2)
            os.environ[FAULT_ENV] = instant
            if before is not None:
                before()
            with store_in(folder):
                run_sweep(load_sweep(folder / "faults.toml"), storage, workers, probe=False)
        except SweepFailed as err:
            code = err.code
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _command(folder: Path, storage: str | None, workers: int, env: dict | None = None):
    """`python -m study sweep` on faults.toml in `folder`, with `env` added."""
    cmd = [sys.executable, "-m", "study", "sweep", "--config", "faults.toml", "--workers", str(workers),
           "--fuse-seeds", "off", *(["--storage", storage] if storage else [])]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlruns/mlflow.db", **(env or {})}
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def _sweep_file(folder: Path, name: str, top: str = "", pairing: str = '["aligned", "fixed"]') -> Path:
    """The tiny sweep of conftest, one seed, as faults.toml; `top` adds top-level keys."""
    path = write_sweep(folder, "faults", epochs=EPOCHS, seeds="[0]" + (f"\n{top}" if top else ""), threads="1",
                       precision='"fp32"', n_holdout="0", pairing=pairing)
    path.write_text(path.read_text().replace('name = "faults"', f'name = "{name}"'))
    return path


def _trials(folder: Path, name: str) -> list:
    return optuna.load_study(study_name=name, storage=open_storage(str(folder / "mlruns" / "optuna.journal"))).trials


def _runs(folder: Path, name: str) -> dict:
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(name).experiment_id
    return {r.info.run_id: r for r in client.search_runs([experiment], "tags.trial != ''")}


@pytest.mark.parametrize(("instant", "store", "workers"), CASES, ids=[f"{i}-{s}-{w}w" for i, s, w in CASES])
def test_a_sweep_killed_at_any_instant_loses_nothing(tmp_path, request, instant, store, workers):
    storage = request.getfixturevalue("postgres_url") if store == "postgresql" else None
    name = f"faults-{instant}-{workers}"
    path = _sweep_file(tmp_path, name)
    if workers == 1:
        assert _killed_at(tmp_path, instant, storage) == 137
        said = (tmp_path / "killed.err").read_text()
        with store_in(tmp_path):
            run_sweep(load_sweep(path), storage, probe=False)  # raises where a cell is left unrun
    else:  # worker processes are spawned: a real command, twice
        said = _command(tmp_path, storage, workers, {FAULT_ENV: instant}).stderr
        again = _command(tmp_path, storage, workers)
        assert again.returncode == 0, again.stderr[-3000:]
    assert f"fault injected: {instant} " in said, said[-3000:]
    trials = optuna.load_study(study_name=name, storage=storage or open_storage(str(tmp_path / "mlruns" /
                                                                                     "optuna.journal"))).trials
    complete = sorted((t.params["pairing"], t.user_attrs["seed"]) for t in trials if t.state == TrialState.COMPLETE)
    assert complete == [("aligned", 0), ("fixed", 0)], [(t.number, t.state, t.params) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name(name).experiment_id],
                                                         "tags.trial != ''")}
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        run = runs[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FINISHED" and is_whole(run.data.tags)
        assert run.data.tags["optuna.state"] == "COMPLETE"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/G_l1")]
        assert sorted(set(steps)) == list(range(1, EPOCHS + 1))  # every epoch
        assert len(steps) == len(set(steps))  # one row per epoch: a step trained twice is not logged twice
        if instant == "checkpoint" and t.user_attrs.get("retry_of") is not None:  # killed after epoch 1's
            assert run.data.tags["resumed_from_epoch"] == "1"
        assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "pair/forward_top1")}) == [0, 2, 4]
        paths = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "pairing", "samples"} <= paths and CHECKPOINT_DIR not in paths


def test_a_tell_lost_to_an_outage_leaves_the_retry_its_checkpoint(tmp_path):
    """The checkpoint was deleted before the tell: a trial that finished as the database went away was trained
    again from epoch 0. Now the retry goes on from the last checkpoint, in the same run."""
    path = _sweep_file(tmp_path, "lost-tell", pairing='["fixed"]')

    def tell_refused():
        real = optuna.Study.tell

        def tell(self, trial, values=None, state=None, **kwargs):
            if values is not None:
                raise ConnectionRefusedError("connection to server at 127.0.0.1 port 5432 refused")
            return real(self, trial, values, state, **kwargs)

        optuna.Study.tell = tell

    assert _killed_at(tmp_path, "", before=tell_refused) == 3
    with store_in(tmp_path):
        run_sweep(load_sweep(path), probe=False)
    trials = _trials(tmp_path, "lost-tell")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    (run,) = _runs(tmp_path, "lost-tell").values()  # the same run went on
    assert run.data.tags["resumed_from_epoch"] == str(EPOCHS)  # from the last checkpoint: nothing trained twice
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/G_l1")] == list(range(1, EPOCHS + 1))


def test_a_retry_carries_its_cell(tmp_path, capsys):
    """A trial killed between ask() and its params (Optuna's stale check on PostgreSQL fails it) was queued again
    with no params: the sampler drew another cell for the retry, which was then dropped as a repeat, and the
    cell never ran while the sweep exited 0."""
    from study.retries import KILLED_STALE, killed

    path = _sweep_file(tmp_path, "carried", pairing='["aligned", "fixed", "shuffled"]')
    with store_in(tmp_path):
        spec = load_sweep(path)
        _, study, _, _ = prepare(spec, None, 1)
        orphan = study.ask()  # a worker that died right after its claim's ask: no params yet
        storage = study._storage
        storage.set_trial_user_attr(orphan._trial_id, "failure", KILLED_STALE)
        storage.set_trial_state_values(orphan._trial_id, TrialState.FAIL)
        killed(study, study.trials[orphan.number])  # as Optuna's fail_stale_trials calls it
        run_sweep(spec, probe=False)
    complete = sorted(t.params["pairing"] for t in _trials(tmp_path, "carried") if t.state == TrialState.COMPLETE)
    assert complete == ["aligned", "fixed", "shuffled"]


def test_a_sweep_that_leaves_a_cell_unrun_names_it(tmp_path, monkeypatch):
    """Whatever happened to the workers, a cell without a result fails the sweep, by name."""
    path = _sweep_file(tmp_path, "unrun")
    assert _killed_at(tmp_path, "claimed") == 137
    monkeypatch.setattr(study.sweep, "queue_missing", lambda study, spec: {"queued": 0, "retries": 0, "exhausted": [],
                                                                           "changed": {}})
    monkeypatch.setattr(study.ledger, "requeue", lambda study, trial: None)  # the recovery's own retry, too
    with store_in(tmp_path), pytest.raises(SweepFailed, match=r"1 cell\(s\) of the grid did not run: "
                                                              r"pairing=aligned seed=0; the same command runs them"):
        run_sweep(load_sweep(path), probe=False)


def test_a_complete_trial_whose_run_is_not_whole_is_repaired(tmp_path, capsys):
    """A kill after the tell of a harness that told Optuna first left a hollow run (a few steps, no summaries),
    which the next start closed as FINISHED. Now it is re-finished from its checkpoint, or retrained without one."""
    path = _sweep_file(tmp_path, "hollow", top="keep_checkpoints = true")
    with store_in(tmp_path):
        run_sweep(load_sweep(path), probe=False)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    trials = {t.params["pairing"]: t for t in _trials(tmp_path, "hollow")}
    for pairing, trial in trials.items():  # as the old order left them
        run_id = trial.user_attrs["mlflow_run_id"]
        for key in ("stop/reason", "summary.stop/epoch", "summaries"):
            client.delete_tag(run_id, key)
        client.update_run(run_id, status="RUNNING")
        if pairing == "fixed":
            RunLogger(client, run_id).delete_artifacts(CHECKPOINT_DIR)
    capsys.readouterr()
    with store_in(tmp_path):
        run_sweep(load_sweep(path), probe=False)
    said = capsys.readouterr().out
    assert said.count("repaired: ") == 2, said
    assert [t.state for t in _trials(tmp_path, "hollow")] == [TrialState.COMPLETE] * 2  # once each, as before
    for pairing, how in (("aligned", f"re-finished from its checkpoint at epoch {EPOCHS}"),
                         ("fixed", "retrained from epoch 0 (no checkpoint)")):
        run = client.get_run(trials[pairing].user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and is_whole(run.data.tags) and run.data.tags["repaired"] == how
        assert "pair/flips" in json.loads(run.data.tags["summaries"])
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "loss/G_l1")}
        assert steps == set(range(1, EPOCHS + 1))


def _forked(before) -> int:
    """`before()` in a forked copy of this process, which then ends as a kill would; its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            before()
        finally:
            os._exit(137)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_trial_left_running_without_owner_is_run_again_at_once(tmp_path):
    """Killed from outside just after `trial 0 COMPLETE`, a sweep left the next cell's trial RUNNING with params {}
    and no owner: the next start applied another host's 300 s lease to it, skipped its cell as running and exited 0
    with the cell unrun."""
    path = _sweep_file(tmp_path, "ownerless")

    def asked_and_died():
        with store_in(tmp_path):
            prepare(load_sweep(path), None, 1)[1].ask()  # RUNNING now; the kill lands before anything else

    assert _forked(asked_and_died) == 137
    assert [t.state for t in _trials(tmp_path, "ownerless")][0] == TrialState.RUNNING
    with store_in(tmp_path):
        run_sweep(load_sweep(path), probe=False)  # raises where a cell is left unrun
    trials = _trials(tmp_path, "ownerless")
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["failure"].startswith("killed")
    assert sorted(t.params["pairing"] for t in trials if t.state == TrialState.COMPLETE) == ["aligned", "fixed"]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_a_dead_owner_on_this_host_is_recovered_without_the_heartbeat_grace(tmp_path, postgres_url, monkeypatch):
    """On PostgreSQL every start after a kill on the same host waited out the 180 s heartbeat grace for an owner
    whose process was known to be gone."""
    for key, value in (("HEARTBEAT_S", 15), ("HEARTBEAT_GRACE_S", 180)):  # the defaults
        monkeypatch.setenv(f"CYCLELIKE_{key}", str(value))
        monkeypatch.setattr(study.stores.optuna, key, value)
    path = _sweep_file(tmp_path, "pg-local-owner", pairing='["fixed"]')
    assert _killed_at(tmp_path, "claimed", postgres_url) == 137
    with store_in(tmp_path):
        trials = prepare(load_sweep(path), postgres_url, 1)[1].trials
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["failure"].startswith("killed")
    assert [t.state for t in trials[1:]] == [TrialState.WAITING]  # its retry, queued at once


def test_a_damaged_checkpoint_is_said_deleted_and_retrained_in_the_same_attempt(tmp_path, capsys):
    """A checkpoint cut short (as a kill during its upload leaves it) failed the retry with exit 1 ("PytorchStreamReader
    failed"), left the file in the run, and used up a retry; only a further invocation trained from epoch 0."""
    path = _sweep_file(tmp_path, "cut-short", pairing='["fixed"]')
    assert _killed_at(tmp_path, "checkpoint") == 137  # after epoch 1's checkpoint reached the store
    (stored,) = (tmp_path / "mlruns" / "artifacts").rglob(f"{CHECKPOINT_DIR}/*.pt")
    stored.write_bytes(stored.read_bytes()[: stored.stat().st_size // 2])
    capsys.readouterr()
    with store_in(tmp_path):
        run_sweep(load_sweep(path), probe=False)
    said = [line for line in capsys.readouterr().err.splitlines() if " is damaged " in line]
    assert len(said) == 1 and stored.name in said[0] and "epoch 0" in said[0], said
    assert [t.state for t in _trials(tmp_path, "cut-short")] == [TrialState.FAIL, TrialState.COMPLETE]  # no retry used
    assert not stored.exists()
    (run,) = _runs(tmp_path, "cut-short").values()  # the same run went on
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/G_l1")] == list(range(1, EPOCHS + 1))
    assert "resumed_from_epoch" not in run.data.tags and is_whole(run.data.tags)


def test_steps_logged_past_the_last_checkpoint_are_not_logged_again(tmp_path):
    """Training went on past its last checkpoint during an outage and logged those epochs; the retry, from the
    checkpoint, logged them again: 211 loss rows for 200 epochs."""
    path = _sweep_file(tmp_path, "twice", pairing='["fixed"]')

    def past_the_checkpoint():
        from cyclelike.checkpoint import Checkpoints
        from study.tracking import RunLogger

        Checkpoints.due = lambda self, epoch, last_save, last=False: epoch == 1  # one checkpoint, at epoch 1
        log = RunLogger.log_metrics
        RunLogger.log_metrics = lambda self, values, step=0: (log(self, values, step), self.flush())  # sent at once

    assert _killed_at(tmp_path, "trained", before=past_the_checkpoint) == 137
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (killed,) = _runs(tmp_path, "twice").values()
    assert [m.step for m in client.get_metric_history(killed.info.run_id, "loss/G_l1")] == list(range(1, EPOCHS + 1))
    with store_in(tmp_path):
        run_sweep(load_sweep(path), probe=False)
    run = client.get_run(killed.info.run_id)
    assert run.data.tags["resumed_from_epoch"] == "1"
    for key, steps in (("loss/G_l1", range(1, EPOCHS + 1)), ("time/epoch_s", range(1, EPOCHS + 1)),
                       ("pair/forward_top1", range(0, EPOCHS + 1, 2))):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(steps), key
    strips = [f.path for f in client.list_artifacts(run.info.run_id, "images") if f.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in strips) == list(range(0, EPOCHS + 1, 2))


def test_the_report_counts_a_trial_running_before_it_has_a_run(tmp_path):
    """The report counted RUNNING runs: a trial RUNNING without one (claimed, then killed) read as "none left
    RUNNING" beside its cell listed as having no finished run."""
    import pandas as pd

    from analysis.questions import ledger_text
    from analysis.study_sections import running_trials

    path = _sweep_file(tmp_path, "counted")
    with store_in(tmp_path):
        prepare(load_sweep(path), None, 1)[1].ask()
    running = running_trials("counted", str(tmp_path / "mlruns" / "optuna.journal"))
    text = ledger_text(pd.DataFrame({"state": [], "status": []}), [{"pairing": "aligned"}], running)
    assert running == 1 and "1 still RUNNING" in text and "none left RUNNING" not in text, text
