"""Studies on several machines, for real: a PostgreSQL started here for Optuna and as the backend of an
MLflow tracking server, and workers in separate folders that share nothing but the two URLs."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import tiny_sweep
from optuna.trial import TrialState

from study.stores import servers

try:
    servers.find_binary("initdb")
    servers.find_binary("pg_ctl")
except servers.ServerError as missing:
    pytest.skip(f"{missing} (make test installs it where it can)", allow_module_level=True)

SWEEP = tiny_sweep("spread", epochs=40, eval_every="20", threads="1")  # three workers share the cores


@pytest.fixture(scope="module")
def cluster():
    # under /tmp, readable by the `postgres` user the server runs as when the tests run as root
    parent = Path(tempfile.mkdtemp(prefix="cyclelike-pg-"))
    parent.chmod(0o755)
    server = servers.start_postgres(parent / "cluster")
    yield server
    servers.stop_postgres(parent / "cluster")
    shutil.rmtree(parent, ignore_errors=True)


def _api(base: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)


def _machine(root: Path, name: str, tracking: str) -> tuple[Path, dict]:
    folder = root / name
    folder.mkdir()
    (folder / "spread.toml").write_text(SWEEP)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "CYCLELIKE_STORE": str(folder / "mlruns"),
           "CYCLELIKE_HEARTBEAT_S": "1", "CYCLELIKE_HEARTBEAT_GRACE_S": "4", "PYTHONUNBUFFERED": "1"}
    return folder, env


def test_workers_on_two_machines_share_only_the_urls(cluster, tmp_path, capsys, monkeypatch):
    head = tmp_path / "head"
    head.mkdir()
    head_env = {**os.environ, "CYCLELIKE_STORE": str(head / "mlruns"), "BACKEND": cluster.url("mlflow")}
    started = subprocess.run([sys.executable, "-m", "study.stores.servers", "mlflow", "start"], env=head_env,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr[-2000:]
    tracking = started.stdout.split("MLflow tracking server on ")[1].split()[0]
    storage = cluster.url("optuna")
    try:
        a, env_a = _machine(tmp_path, "machine-a", tracking)
        b, env_b = _machine(tmp_path, "machine-b", tracking)
        cmd = [sys.executable, "-m", "study", "sweep", "--config", "spread.toml", "--storage", storage]
        t0 = time.monotonic()
        proc_a = subprocess.Popen([*cmd, "--workers", "2"], cwd=a, env=env_a, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        proc_b = subprocess.Popen(cmd, cwd=b, env=env_b, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        study = None
        victim = None
        while victim is None and time.monotonic() - t0 < 120:  # machine B's trial, mid-training
            time.sleep(0.3)
            try:
                study = optuna.load_study(study_name="spread", storage=storage)
            except KeyError:
                continue
            mine = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                    if t.user_attrs.get("owner", {}).get("pid") == proc_b.pid and "mlflow_run_id" in t.user_attrs]
            victim = mine[0] if mine else None
        assert victim is not None, "machine B never ran a trial"
        os.killpg(proc_b.pid, signal.SIGKILL)  # power loss on machine B
        proc_b.wait(timeout=30)
        again = subprocess.run(cmd, cwd=b, env=env_b, capture_output=True, text=True, timeout=300)
        out_a, err_a = proc_a.communicate(timeout=300)
        assert proc_a.returncode == 0, err_a[-3000:]
        assert again.returncode == 0, again.stderr[-3000:]
        print(f"two machines, 3 worker processes: {time.monotonic() - t0:.1f} s")

        study = optuna.load_study(study_name="spread", storage=storage)
        complete = [(t.params["pairing"], t.user_attrs["seed"]) for t in study.trials if t.state == TrialState.COMPLETE]
        assert sorted(complete) == sorted({(p, s) for p in ("aligned", "fixed") for s in (0, 1)})  # each once
        assert study.trials[victim.number].state == TrialState.FAIL
        assert not [t for t in study.trials if t.state == TrialState.RUNNING]

        experiment = _api(tracking, "experiments/get-by-name?experiment_name=spread")["experiment"]
        runs = _api(tracking, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})
        runs = {r["info"]["run_id"]: r for r in runs["runs"]}
        assert runs[victim.user_attrs["mlflow_run_id"]]["info"]["status"] == "KILLED"
        assert not [r for r in runs.values() if r["info"]["status"] == "RUNNING"]
        finished = [r for r in runs.values()
                    if r["info"]["status"] == "FINISHED" and r["info"]["run_name"] != "study-spread"]
        assert len(finished) == 4
        for run in finished:
            params = {p["key"]: p["value"] for p in run["data"]["params"]}
            config = json.loads({t["key"]: t["value"] for t in run["data"]["tags"]}["config"])
            assert config["epochs"] == "40" and params["pairing"] in ("aligned", "fixed")
            run_id = run["info"]["run_id"]
            history = _api(tracking, f"metrics/get-history?run_id={run_id}&metric_key=loss/G_l1")["metrics"]
            assert len(history) == 40
            artifacts = {f["path"] for f in _api(tracking, f"artifacts/list?run_id={run_id}")["files"]}
            assert {"config.json", "pairing", "samples"} <= artifacts  # no weights: a sweep keeps them on request
        for machine in (a, b):  # nothing was written to a worker's own disk
            assert not (machine / "mlruns").exists() and not list(machine.glob("*.db"))

        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)  # the report on the head, in this process
        monkeypatch.chdir(head)
        from analysis.__main__ import main as analysis_main

        code = analysis_main(["report", "--experiment", "spread", "--storage", storage, "--out", str(head / "report")])
        assert code == 0, capsys.readouterr().err[-3000:]
        md = (head / "report" / "report.md").read_text()
        assert "A = pairing=aligned" in md and "| pair given |" in md and "could not be drawn" not in md
        assert ". Parameter importance" in md and "study was not at hand" not in md  # it read the PostgreSQL study
    finally:
        subprocess.run([sys.executable, "-m", "study.stores.servers", "mlflow", "stop"], env=head_env,
                       capture_output=True, timeout=60)


def test_an_unreachable_database_is_one_line_naming_host_and_port(capsys, monkeypatch, tmp_path):
    from study.__main__ import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")

    code = main(["sweep", "--storage", "postgresql+psycopg://someone:secret@127.0.0.1:1/studies"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "127.0.0.1" in err and "port 1" in err and "secret" not in err
    assert not (tmp_path / "mlruns").exists()  # nothing was created for a storage that cannot be opened


def test_db_restarts_with_its_studies(cluster):
    storage = cluster.url("optuna")
    optuna.create_study(study_name="kept", storage=storage, load_if_exists=True)
    servers.stop_postgres(cluster.data)
    restarted = servers.start_postgres(cluster.data)
    assert restarted.port == cluster.port
    assert "kept" in [s.study_name for s in optuna.get_all_study_summaries(storage=storage)]
    assert oct(cluster.data.with_name("cluster.password").stat().st_mode & 0o777) == "0o600"


DIES_AFTER_ASK = """
import os, signal, sys
from study.spec import load_sweep
from study.sweep import prepare
spec = load_sweep(sys.argv[1])
_, study, _, _ = prepare(spec, sys.argv[2], 1)
study.ask()  # the queued trial is RUNNING now, and no heartbeat has been sent for it
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_worker_killed_between_ask_and_its_first_heartbeat_is_failed_and_requeued(cluster, tmp_path):
    """Optuna's stale check skips a RUNNING trial with no heartbeat row: the next worker waited for it for ever."""
    folder, env = _machine(tmp_path, "m", "")
    env.pop("MLFLOW_TRACKING_URI")  # MLflow in the folder's own store; Optuna on PostgreSQL
    (folder / "askdie.toml").write_text(tiny_sweep("askdie", epochs=2, seeds="[0]", pairing='["fixed"]', threads="1"))
    storage = cluster.url("optuna")
    died = subprocess.run([sys.executable, "-c", DIES_AFTER_ASK, "askdie.toml", storage], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    orphan = next(t for t in optuna.load_study(study_name="askdie", storage=storage).trials
                  if t.state == TrialState.RUNNING)
    sweep = subprocess.run([sys.executable, "-m", "study", "sweep", "--config", "askdie.toml", "--storage", storage],
                           cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    trials = optuna.load_study(study_name="askdie", storage=storage).trials
    assert trials[orphan.number].state == TrialState.FAIL
    assert "killed" in trials[orphan.number].user_attrs["failure"]
    assert [t.state for t in trials if t.number != orphan.number] == [TrialState.COMPLETE]
    assert "Heartbeat of storage" not in sweep.stderr and "View run" not in sweep.stdout


def test_a_database_outage_ends_the_sweep_with_one_line_and_the_next_start_goes_on(cluster, tmp_path):
    """The database stops mid-trial: one `error:` line naming the refused connection (Optuna's own words
    blamed "invalid data in the commit"), exit 3; once it is back, the same command fails the orphan trial
    as killed (no retry used up), closes its run and completes the condition."""
    folder, env = _machine(tmp_path, "m", "")
    env.pop("MLFLOW_TRACKING_URI")  # MLflow in the folder's own store; Optuna on PostgreSQL
    env["CYCLELIKE_HEARTBEAT_GRACE_S"] = "2"  # the orphan goes stale sooner: the next start waits less
    (folder / "dbout.toml").write_text(tiny_sweep("dbout", epochs=40, seeds="[0]\nmax_retries = 0",
                                                  pairing='["fixed"]', threads="1"))
    storage = cluster.url("optuna")
    cmd = [sys.executable, "-m", "study", "sweep", "--config", "dbout.toml", "--storage", storage, "--workers", "1"]
    sweep = subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:  # until a trial has its run: it is training
            time.sleep(0.2)
            with contextlib.suppress(KeyError):  # no such study yet
                if any("mlflow_run_id" in t.user_attrs for t in optuna.load_study(study_name="dbout",
                                                                                  storage=storage).trials):
                    break
        servers.stop_postgres(cluster.data)
        lost = time.monotonic()
        _, err = sweep.communicate(timeout=240)
        print(f"database lost: exit {sweep.returncode} after {time.monotonic() - lost:.1f} s")
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
        servers.start_postgres(cluster.data)  # the module's other tests need it
    last = err.strip().splitlines()[-1]
    assert sweep.returncode == 3, err[-3000:]
    assert "Traceback" not in err and last.startswith("error:") and "stopped answering" in last, err[-3000:]
    assert "connection" in last.lower() and "exceeding max length" not in last, last
    again = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = optuna.load_study(study_name="dbout", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["failure"].startswith("killed")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("dbout").experiment_id], "tags.trial != ''")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
