"""The sweep harness end to end: real (tiny) trainings, read back through MLflow and Optuna."""

import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import torch
from conftest import TINY, store_in, tiny_sweep, write_sweep
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from analysis.runs import settings, summaries
from study.ledger import claim
from study.spec import SweepError, load_sweep, parse_sweep
from study.stores.optuna import load_study, open_storage
from study.sweep import SweepFailed, run_sweep
from study.workers import Context

REPO = Path(__file__).resolve().parents[1]



def env_for(folder: Path) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlruns/mlflow.db", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One real sweep (2 cells x 2 seeds), run twice: the second run must resume, not repeat."""
    folder = tmp_path_factory.mktemp("sweep")
    with store_in(folder):
        spec = load_sweep(write_sweep(folder, "tiny"))
        first = run_sweep(spec)
        second = run_sweep(spec)
        yield folder, spec, first, second


def test_sweep_logs_every_trial_to_mlflow(swept):
    folder, spec, first, _ = swept
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    assert experiment.artifact_location.startswith((folder / "mlruns" / "artifacts").as_uri())
    # the UI's link opens every trial as a row, sorted by the objective, the swept params as columns
    view = json.loads(experiment.tags["mlflow.sharedViewState.trials"])
    assert view["orderByKey"] == "metrics.`pair/forward_top1`" and view["orderByAsc"] is False
    assert view["selectedColumns"] == ["metrics.`pair/forward_top1`", "params.`pairing`", "params.`seed`"]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    trials = [r for r in runs if "trial" in r.data.tags]
    assert len(parents) == 1 and len(trials) == 4 == len(first)
    assert sorted(r.info.run_name for r in trials) == ["s0-aligned", "s0-fixed", "s1-aligned", "s1-fixed"]
    assert sorted(int(r.data.tags["trial"]) for r in trials) == [0, 1, 2, 3]
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["study"] == "tiny" and run.data.tags["optuna.state"] == "COMPLETE"
        assert run.data.tags["resolved.replay"] == "off" and run.data.tags["resolved.basis"] in ("measured", "none")
        # params: what the study varies, N and the seed, which MLflow's image card lists above the strip; every
        # setting is in the config tag
        assert run.data.params == {"pairing": run.data.params["pairing"], "n_images": "4",
                                   "seed": run.data.tags["seed"]}
        assert settings(run)["epochs"] == "4" and settings(run)["lambda_l1"] == "10.0"
        history = client.get_metric_history(run.info.run_id, "loss/G_l1")
        assert sorted(m.step for m in history) == [1, 2, 3, 4]
        epoch_s = client.get_metric_history(run.info.run_id, "time/epoch_s")
        assert len(epoch_s) == 4
        # train_s is the epochs' own time: evaluations and logging between them are the harness's
        assert float(summaries(run.data.tags)["time/train_s"]) == pytest.approx(sum(m.value for m in epoch_s),
                                                                                 rel=1e-3)
        # step 0: the untrained map, where the curves and the strip slider start
        assert [m.step for m in client.get_metric_history(run.info.run_id, "pair/forward_top1")] == [0, 2, 4]
        for key in ("pair/bijectivity", "pair/mutual", "pair/cycle_top1", "mem/holdout_copy_rate",
                    "time/sec_per_epoch"):
            assert key in run.data.metrics
        # run-level summaries are tags, so the run page draws no single-dot charts for them
        assert "pair/forward_top1_ci_low" not in run.data.metrics
        assert float(run.data.tags["summary.pair/forward_top1_ci_low"]) <= run.data.metrics["pair/forward_top1"]
        # the overview shows a handful of summaries as tags; all of them are the one tag `summaries`
        assert len([k for k in run.data.tags if k.startswith("summary.")]) <= 8 < len(summaries(run.data.tags))
        single = [k for k in run.data.metrics if len(client.get_metric_history(run.info.run_id, k)) == 1]
        assert single == ["time/sec_per_epoch"]  # the objective-able timing, one per run by definition
        paths = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "pairing", "samples"} <= paths
        assert "model" not in paths  # a sweep keeps no weights unless its file says weights = "all"
        pairing = {a.path for a in client.list_artifacts(run.info.run_id, "pairing")}
        assert {"pairing/D_xy.csv", "pairing/D_xy.png", "pairing/D_yx.csv", "pairing/D_yx.png",
                "pairing/history.csv"} <= pairing
        inputs = {i.tags[0].value: i.dataset.name for i in run.inputs.dataset_inputs}
        assert inputs == {"training": "synthetic:faces-planes N=4 data_seed=0",
                          "evaluation": "synthetic:faces-planes held-out=1 data_seed=0"}
        # the final epoch only: the strip series shows every evaluation
        assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == ["samples/epoch_0004.png"]
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["study/trials_complete"] == 4


def test_second_invocation_resumes_without_duplicates(swept):
    folder, spec, first, second = swept
    assert len(second) == 4 and second.attrs["trials_this_run"] == 0
    study = optuna.load_study(study_name="tiny", storage=open_storage(str(folder / "mlruns" / "optuna.journal")))
    cells = [(t.params["pairing"], t.user_attrs["seed"]) for t in study.trials]
    assert sorted(cells) == sorted({(p, s) for p in ("aligned", "fixed") for s in (0, 1)})
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def _wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_killed_sweep_resumes_with_every_trial_once(tmp_path, sig, capsys, monkeypatch):
    config = write_sweep(tmp_path, "killed", epochs=30)
    config.write_text(config.read_text().replace("eval_every = 2", "eval_every = 20"))
    cmd = [sys.executable, "-m", "study", "sweep", "--config", str(config)]
    stderr = open(tmp_path / "stderr.txt", "w")  # noqa: SIM115 - closed below, after the process ends
    # a shell's background job (CI started with &) ignores SIGINT, and Python then keeps ignoring it:
    # give the sweep the disposition of a terminal's foreground job, where Ctrl-C happens
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env_for(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=stderr, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    journal = tmp_path / "mlruns" / "optuna.journal"

    def running_trial():
        if not journal.exists():
            return None
        try:
            study = optuna.load_study(study_name="killed", storage=open_storage(str(journal)))
        except KeyError:
            return None
        # a trial that started under a second ago: one found late could end before the signal arrives
        fresh = datetime.datetime.now() - datetime.timedelta(seconds=1)
        running = [t for t in study.trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
                   and t.number >= 1 and t.datetime_start is not None and t.datetime_start > fresh]
        return running[0] if running else None

    try:
        victim = _wait_for(running_trial, 120, "a trial in the middle of training")
        time.sleep(0.2)
    finally:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
        stderr.close()
    if sig == signal.SIGINT:  # interrupted: non-zero, and the trial it stopped is named
        said = (tmp_path / "stderr.txt").read_text().strip().splitlines()[-1]
        assert proc.returncode == 130 and f"trial(s) [{victim.number}] stopped" in said, said
    monkeypatch.chdir(tmp_path)  # the same command again, in this process: what is tested is the one it resumes
    code, said = _main(capsys, monkeypatch, tmp_path, "sweep", "--config", str(config))
    assert code == 0, said[-2000:]
    if sig == signal.SIGKILL:  # a dead process cannot close its trial: the next start does
        assert f"recovered trial(s) [{victim.number}]" in said
    study = optuna.load_study(study_name="killed", storage=open_storage(str(journal)))
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL and "killed" in killed.user_attrs["failure"]
    complete = [(t.params["pairing"], t.user_attrs["seed"]) for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted({(p, s) for p in ("aligned", "fixed") for s in (0, 1)})  # each exactly once
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "FAIL"
    experiment = client.get_experiment_by_name("killed")
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")


def test_nan_trial_fails_and_the_study_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    # a weight that overflows the gradients: finite, so accepted, but the run diverges
    spec = load_sweep(write_sweep(tmp_path, "nan", epochs=2, extra="lambda_adv = [1.0, 1e308]"))
    table = run_sweep(spec)
    states = table.groupby("lambda_adv")["state"].agg(set).to_dict()
    assert states[1.0] == {"COMPLETE"} and states[1e308] == {"FAIL"}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    failed = client.search_runs([client.get_experiment_by_name("nan").experiment_id], "tags.`optuna.state` = 'FAIL'")
    assert len(failed) == 4 and all("non-finite" in r.data.tags["failure"] for r in failed)
    assert all(r.data.tags["stop/reason"] == "diverged" and int(r.data.tags["summary.stop/epoch"]) >= 1
               for r in failed)
    assert all(r.info.status == "FAILED" for r in failed)


def test_a_diverging_seed_fails_alone_in_its_fused_group(tmp_path, monkeypatch):
    import cyclelike.train as engine

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    real, calls = engine.epoch_losses, []

    def nan_once(*args, **kwargs):  # the first group's second seed, at epoch 1
        calls.append(1)
        losses = real(*args, **kwargs)
        return {k: float("nan") for k in losses} if len(calls) == 2 else losses

    monkeypatch.setattr(engine, "epoch_losses", nan_once)
    # probe=False: the time estimate's own training would take the patched call
    table = run_sweep(load_sweep(write_sweep(tmp_path, "fusednan", epochs=2, precision='"fp32"')), fuse="on",
                      probe=False)
    assert sorted(table["state"]) == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("fusednan").experiment_id], "tags.trial != ''")
    failed = [r for r in runs if r.data.tags["optuna.state"] == "FAIL"]
    assert len(failed) == 1 and "non-finite" in failed[0].data.tags["failure"]
    assert failed[0].data.tags["stop/reason"] == "diverged" and failed[0].info.status == "FAILED"
    assert all(r.data.tags.get("fused_group") == "2" for r in runs)


GOOD = {"name": "s", "fixed": {"image_size": 16}, "space": {"pairing": ["aligned", "fixed"]}}


@pytest.mark.parametrize(
    "change, words",
    [
        ({"bogus": 1}, ["bogus", "allowed"]),
        ({"space": {"pairing": ["aligned", "sideways"]}}, ["space.pairing", "sideways", "aligned, fixed, shuffled"]),
        ({"space": {"pairing": []}}, ["space.pairing", "empty"]),
        ({"space": {"n_imagez": [4]}}, ["space.n_imagez", "unknown RunConfig key"]),
        ({"space": {"lambda_l1": {"low": 5.0, "high": 1.0}}, "sampler": "random", "trials": 3}, ["lambda_l1", "empty"]),
        ({"space": {"lambda_l1": {"low": 1.0, "high": 5.0}}}, ["space.lambda_l1", "sampler=grid"]),
        ({"objectives": ["pair/forward_top5"]}, ["pair/forward_top5", "not a metric", "pair/forward_top1"]),
        ({"fixed": {"image_size": 20}}, ["fixed", "image_size=20"]),
        ({"sampler": "bayes"}, ["sampler='bayes'", "grid, random, tpe"]),
        ({"objectives": ["pair/forward_top1", "time/sec_per_epoch"], "directions": ["maximize"]}, ["directions"]),
        # values of the wrong type: one line naming the key, never a traceback
        ({"fixed": 1}, ["fixed=1", "expected a table"]),
        ({"fixed": "x"}, ["fixed='x'", "expected a table"]),
        ({"space": ["aligned"]}, ["space=['aligned']", "expected a table"]),
        ({"objectives": 3}, ["objectives=3"]),
        ({"directions": 1}, ["directions=1"]),
        ({"timeout_s": "10"}, ["timeout_s='10'", "number"]),
        ({"space": {"lambda_l1": {"low": "1", "high": "5"}}, "sampler": "random", "trials": 3},
         ["space.lambda_l1.low='1'", "finite number"]),
        ({"fixed": {"lr": float("inf")}}, ["fixed", "lr=inf", "finite"]),
        ({"eval_every": 0, "fixed": {"stop": "locked"}}, ["eval_every=0", "stop=locked"]),
        # refused here, not by Optuna in a worker's first trial (which it left RUNNING)
        ({"space": {"n_images": {"low": 4, "high": 8, "step": 0}}, "sampler": "random", "trials": 3},
         ["space.n_images.step=0", "> 0"]),
        ({"space": {"lr": {"low": 0.1, "high": 0.5, "step": -2}}, "sampler": "random", "trials": 3},
         ["space.lr.step=-2", "> 0"]),
        ({"space": {"lr": {"low": 0.1, "high": 0.5, "log": True, "step": 0.1}}, "sampler": "random", "trials": 3},
         ["space.lr", "log=true", "step=0.1"]),
        # a quoted 'no' was read as true
        ({"space": {"lr": {"low": 0.1, "high": 0.5, "log": "no"}}, "sampler": "random", "trials": 3},
         ["space.lr.log='no'", "true or false"]),
        ({"space": {"lr": {"low": 0.1, "high": 0.5, "log": "yes"}}, "sampler": "random", "trials": 3},
         ["space.lr.log='yes'", "true or false"]),
        # a fixed seed was silently ignored: every trial trained the seeds of `seeds`
        ({"fixed": {"image_size": 16, "seed": 5}}, ["fixed.seed=5", "'seeds'", "seeds = [5]"]),
    ],
)
def test_bad_sweep_files_name_the_key(change, words):
    with pytest.raises(SweepError) as err:
        parse_sweep({**GOOD, **change}, "bad.toml")
    for word in words:
        assert word in str(err.value)


def test_bad_sweep_file_stops_before_training(tmp_path, capsys, monkeypatch):
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\n[space]\narch = ["unet", "resnet"]\n')
    code, said = _main(capsys, monkeypatch, tmp_path, "sweep", "--config", str(path))
    assert code == 2 and "space.arch" in said and "resnet" in said
    assert not (tmp_path / "mlruns").exists()


def test_a_zero_step_is_refused_before_anything_is_queued(tmp_path, capsys, monkeypatch):
    path = tmp_path / "step0.toml"
    path.write_text('sampler = "random"\ntrials = 2\n'
                    + tiny_sweep("step0", epochs=1, extra="lr = { low = 0.1, high = 0.5, step = 0 }"))
    code, said = _main(capsys, monkeypatch, tmp_path, "sweep", "--config", str(path))
    assert code == 2 and "Traceback" not in said and "space.lr.step=0" in said.strip().splitlines()[-1]
    assert not (tmp_path / "mlruns").exists()  # no study, so no trial left RUNNING


def test_a_seed_set_on_a_sweep_points_to_its_seeds_list(tmp_path, capsys, monkeypatch):
    path = write_sweep(tmp_path, "seeded", epochs=1)
    code, said = _main(capsys, monkeypatch, tmp_path, "sweep", "--config", str(path), "--set", "seed=5")
    last = said.strip().splitlines()[-1]
    assert code == 2 and "--set seed=5" in last and "'seeds' list" in last
    assert not (tmp_path / "mlruns").exists()


def test_one_run_from_a_sweep_file_still_takes_a_seed(tmp_path, capsys, monkeypatch):
    import study.__main__

    seen = []

    def stop_at_once(config):  # the config to run, before any store is opened
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(study.__main__, "_check_device", stop_at_once)
    path = write_sweep(tmp_path, "oneseed", epochs=1)
    code, _ = _main(capsys, monkeypatch, tmp_path, "run", "--config", str(path), "--set", "seed=3")
    assert code == 130 and [c.seed for c in seen] == [3]


def test_a_malformed_config_json_is_one_line(tmp_path, capsys, monkeypatch):
    for text, words in (('{"epochs": 2,', "not a readable, valid config.json"), ("[1, 2]", "got a list")):
        (tmp_path / "config.json").write_text(text)
        code, said = _main(capsys, monkeypatch, tmp_path, "run", "--from", str(tmp_path / "config.json"))
        assert code == 2 and "Traceback" not in said and words in said.strip().splitlines()[-1], said[-2000:]


def test_shipped_sweep_files_parse(monkeypatch):
    monkeypatch.setenv("X_PATH", "/data/pets")
    monkeypatch.setenv("Y_PATH", "/data/men")
    default = load_sweep(REPO / "study" / "configs" / "default.toml")
    assert {"pairing", "arch", "n_images", "lambda_cyc"} <= set(default.space)
    assert load_sweep(REPO / "study" / "configs" / "seed_pets_men.toml").base_config().x_path == "/data/pets"
    scaling = load_sweep(REPO / "study" / "configs" / "scaling.toml")
    assert scaling.space["n_images"] == [5, 10, 20, 40, 80]
    monkeypatch.delenv("X_PATH")
    with pytest.raises(SweepError, match="x_path"):
        load_sweep(REPO / "study" / "configs" / "seed_pets_men.toml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_server_serves_the_runs(swept):
    folder = swept[0]
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{folder}/mlruns/mlflow.db"],
                            env={**env_for(folder), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        def get_experiment():
            try:
                with urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name=tiny", timeout=2) as r:
                    return json.load(r)["experiment"]
            except OSError:
                return None

        experiment = _wait_for(get_experiment, 90, "the MLflow server")
        body = json.dumps({"experiment_ids": [experiment["experiment_id"]], "max_results": 100}).encode()
        request = urllib.request.Request(f"{base}/runs/search", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            runs = json.load(r)["runs"]
        names = sorted(r["info"]["run_name"] for r in runs)
        assert names == ["s0-aligned", "s0-fixed", "s1-aligned", "s1-fixed", "study-tiny"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_pruned_trials_end_pruned_and_tagged(tmp_path, monkeypatch):
    """Pruning decisions are Optuna's; what is ours is ending the trial and its run correctly."""
    import study.stores.optuna as storage_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    # forward_top1 is at most 1, so this pruner stops every trial at its first evaluation
    monkeypatch.setattr(storage_module, "make_pruner", lambda spec: optuna.pruners.ThresholdPruner(lower=2.0))
    path = write_sweep(tmp_path, "pruned", epochs=6)
    path.write_text(path.read_text().replace('eval_every = 2', 'eval_every = 2\npruner = "median"'))
    table = run_sweep(load_sweep(path))
    assert set(table["state"]) == {"PRUNED"} and len(table) == 4
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("pruned").experiment_id], "tags.trial != ''")
    assert len(runs) == 4
    for run in runs:
        assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "PRUNED"
        assert run.data.tags["pruned_at_epoch"] == "2"
        assert len(client.get_metric_history(run.info.run_id, "loss/G_l1")) == 2  # it stopped training there


def _study(folder: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(folder / "mlruns" / "optuna.journal")))


def _sweep_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "study", "sweep", "--config", str(config), *args]


def _no_run_left_running(folder: Path, name: str) -> None:
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(name)
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")


def test_random_sweep_workers_draw_different_conditions(tmp_path, capsys, monkeypatch):
    """Every worker seeded its sampler with 0, so two workers drew the same configurations."""
    config = tmp_path / "rand.toml"
    config.write_text(TINY.format(name="rand", epochs=1, extra="lambda_l1 = { low = 1.0, high = 100.0, log = true }")
                      .replace('seeds = [0, 1]', 'seeds = [0]\nsampler = "random"\ntrials = 4\neval_every = 0')
                      .replace('eval_every = 2\n', '').replace('pairing = ["aligned", "fixed"]\n', ''))
    monkeypatch.chdir(tmp_path)
    code, said = _main(capsys, monkeypatch, tmp_path, "sweep", "--config", str(config), "--workers", "2")
    assert code == 0, said[-2000:]
    from multiprocessing import forkserver

    assert forkserver._forkserver._forkserver_pid is None  # gone with its sweep: the next starts with its own env
    trials = _study(tmp_path, "rand").trials
    done = [(t.user_attrs["config_key"], t.user_attrs["seed"]) for t in trials if t.state == TrialState.COMPLETE]
    why = [(t.number, t.state.name, str(t.user_attrs.get("failure", ""))[-300:]) for t in trials]
    assert len(done) >= 4 and len(set(done)) == len(done), why


def test_a_widened_space_is_one_line_before_anything_is_queued(swept, capsys, monkeypatch):
    """A list with a new value used to kill every worker with Optuna's 'dynamic value space' traceback and
    leave its queued trials behind."""
    folder, _, _, _ = swept
    path = folder / "widened.toml"
    path.write_text((folder / "tiny.toml").read_text().replace('pairing = ["aligned", "fixed"]',
                                                               'pairing = ["aligned", "fixed", "shuffled"]'))
    before = len(_study(folder, "tiny").trials)
    code, said = _main(capsys, monkeypatch, folder, "sweep", "--config", str(path))
    assert code == 2 and said.count("error:") == 1 and "Traceback" not in said
    assert "space.pairing" in said and "['aligned', 'fixed']" in said and "new name" in said
    assert len(_study(folder, "tiny").trials) == before


def test_a_trial_reproduces_from_its_run_id(swept, tmp_path):
    """Every trial run carries its command, commit and versions, and its `reproduce` tag retrains its exact
    condition and seed (the same final losses) as printed: from another folder, outside the virtual environment
    (a bare `python -m study` there has no torch). The new run is named after the trial and links back to it."""
    folder, _, _, _ = swept
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("tiny").experiment_id
    trial = client.search_runs([experiment], "tags.`optuna.state` = 'COMPLETE'", max_results=1)[0]
    for tag in ("command", "mlflow.source.git.commit", "git_dirty", "version.torch", "reproduce"):
        assert trial.data.tags.get(tag), tag
    outside = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "CYCLELIKE_STORE",
                                                                "VIRTUAL_ENV", "PYTHONPATH")}
    outside["PATH"] = "/usr/bin:/bin"
    done = subprocess.run(["bash", "-c", trial.data.tags["reproduce"]], cwd=tmp_path, env=outside,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    again = client.search_runs([client.get_experiment_by_name("runs").experiment_id],
                               f"tags.reproduces = '{trial.info.run_id}'")[0]
    for key in ("loss/G_total", "loss/D", "pair/forward_top1"):
        assert again.data.metrics[key] == pytest.approx(trial.data.metrics[key], abs=1e-6), key
    assert again.data.params == trial.data.params  # the two compare key by key
    assert again.info.run_name == f"repro-{trial.info.run_name}"
    note = again.data.tags["mlflow.note.content"]
    assert f"Reproduces trial {trial.data.tags['trial']} of study tiny" in note and trial.info.run_id in note
    assert f"reproduce it: {again.data.tags['reproduce']}" in done.stdout
    # a single run keeps its weights: the one file a user asked for by retraining it
    assert {a.path for a in client.list_artifacts(again.info.run_id, "model")} == {"model/G.pt"}


def test_changed_fixed_values_become_new_trials_of_the_study(swept, capsys):
    """Resuming with another fixed value used to queue nothing and print the old table."""
    folder, spec, _, _ = swept
    with store_in(folder):
        changed = load_sweep(folder / "tiny.toml", {"epochs": 3})
        table = run_sweep(changed)
    printed = capsys.readouterr().out
    assert "epochs (4 -> 3)" in printed and "4 queued now" in printed
    assert "planned: 4 trial(s) in this invocation; about" in printed  # the estimate, before any trial
    assert table.attrs["trials_this_run"] == 4 and table.attrs["planned_s"] > 0  # for the last line beside the time
    conditions = [t.user_attrs["condition"] for t in _study(folder, "tiny").trials if t.state == TrialState.COMPLETE]
    assert sorted(c["epochs"] for c in conditions) == [3, 3, 3, 3, 4, 4, 4, 4]


def test_two_invocations_at_once_run_every_cell_once(tmp_path):
    """Each invocation used to fail the other's RUNNING trials at start-up; on a new store they also raced in
    MLflow's database set-up."""
    config = write_sweep(tmp_path, "twice", epochs=20)
    # one thread per process: two invocations of two threads each on two cores spin in OpenMP for minutes
    config.write_text(config.read_text().replace("[fixed]", "[fixed]\nthreads = 1"))
    procs = [subprocess.Popen(_sweep_cmd(config), cwd=tmp_path, env=env_for(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    trials = _study(tmp_path, "twice").trials
    complete = [(t.params["pairing"], t.user_attrs["seed"]) for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted({(p, s) for p in ("aligned", "fixed") for s in (0, 1)})
    assert not [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("spurious")]
    _no_run_left_running(tmp_path, "twice")


def _disk_full(monkeypatch):
    """Every trial fails as a full disk would fail it (a cause no check before the trials can see)."""
    import study.workers

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(study.workers, "run_trials", full)


def test_failed_trials_are_retried_once_their_cause_is_gone(tmp_path, capsys, monkeypatch):
    config = write_sweep(tmp_path, "failing", epochs=2)
    with monkeypatch.context() as patched:
        _disk_full(patched)
        code, said = _main(capsys, monkeypatch, tmp_path, "sweep", "--config", str(config))
    last = said.strip().splitlines()[-1]
    assert code == 1 and "all 4 trial(s) of this invocation failed" in last and "No space left" in last
    with store_in(tmp_path):
        run_sweep(load_sweep(config))
    assert "4 queued now (4 of them retries of failed trials)" in capsys.readouterr().out
    states = [t.state for t in _study(tmp_path, "failing").trials]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.FAIL) == 4


def test_retries_stop_after_max_retries(tmp_path, capsys, monkeypatch):
    config = write_sweep(tmp_path, "hopeless", epochs=2)
    config.write_text(config.read_text().replace("seeds = [0, 1]", "seeds = [0]\nmax_retries = 1"))
    _disk_full(monkeypatch)
    with store_in(tmp_path):
        for _ in range(2):
            with pytest.raises(SweepFailed, match="all 2 trial"):
                run_sweep(load_sweep(config))
        capsys.readouterr()
        # nothing left to run and nothing complete: that is no success (it exited 0)
        with pytest.raises(SweepFailed, match="no completed trial and nothing left to run"):
            run_sweep(load_sweep(config))
    printed = capsys.readouterr().out
    assert "not retried (1 retries used)" in printed and "0 queued now" in printed
    assert len(_study(tmp_path, "hopeless").trials) == 4  # 2 cells x (1 try + 1 retry)


def _main(capsys, monkeypatch, folder: Path, *argv: str) -> tuple[int, str]:
    """`python -m study ...` in this process (a subprocess costs seconds of imports); the store is `folder`'s."""
    from study.__main__ import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlruns/mlflow.db")
    monkeypatch.setenv("CYCLELIKE_STORE", str(folder / "mlruns"))  # --store rewrites both: restored after
    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse's usage errors and --help
        code = stop.code
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "data_seed=-1"], ["data_seed=-1", ">= 0"]),
        (["--storage", "{tmp}"], ["is a folder"]),
        (["--trials", "-1"], ["--trials", "negative"]),
        (["--workers", "0"], ["--workers"]),
        (["--store", "/proc/no-such-store"], ["/proc/no-such-store", "cannot be written"]),
    ],
    ids=["data_seed", "storage-folder", "trials", "workers", "store-unwritable"],
)
def test_bad_command_lines_give_one_line_errors(tmp_path, capsys, monkeypatch, args, words):
    config = write_sweep(tmp_path, "bad", epochs=1)
    code, said = _main(capsys, monkeypatch, tmp_path, "sweep", "--config", str(config),
                       *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and "Traceback" not in said, said[-3000:]
    last = said.strip().splitlines()[-1]
    assert all(w in last for w in words), last


def test_a_tracking_server_that_is_down_is_one_line(tmp_path, capsys, monkeypatch):
    config = write_sweep(tmp_path, "down", epochs=1)
    monkeypatch.delenv("CYCLELIKE_STORE", raising=False)
    from study.__main__ import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("OPTUNA_STORAGE", str(tmp_path / "optuna.journal"))  # not the project's own store
    assert main(["sweep", "--config", str(config)]) == 2
    assert "cannot be reached" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, capsys, monkeypatch):
    code, said = _main(capsys, monkeypatch, tmp_path, "run", "--set", "device=cuda")
    assert code == 2 and "device='cuda'" in said.strip().splitlines()[-1]
    assert not (tmp_path / "mlruns").exists()


def test_run_eval_every_must_not_be_negative(tmp_path, capsys, monkeypatch):
    code, said = _main(capsys, monkeypatch, tmp_path, "run", "--eval-every", "-1")
    assert code == 2 and "--eval-every" in said and "negative" in said


def test_help_lists_every_runconfig_key_with_its_default(tmp_path, capsys, monkeypatch):
    from cyclelike.__main__ import main as train_main
    from cyclelike.config import RunConfig

    for argv in (["run", "--help"], ["sweep", "--help"]):
        code, said = _main(capsys, monkeypatch, tmp_path, *argv)
        assert code == 0
        for key, value in RunConfig().to_dict().items():
            assert f"{key} (default {value!r})" in said, (argv, key)
    with pytest.raises(SystemExit):
        train_main(["train", "--help"])
    said = capsys.readouterr().out
    assert all(f"{key} (default {value!r})" in said for key, value in RunConfig().to_dict().items())


def test_resuming_train_with_other_settings_names_them_and_keeps_the_config(tmp_path, capsys):
    from cyclelike.__main__ import main as train_main

    out = tmp_path / "run"
    tiny = ["--set", "image_size=16", "--set", "n_images=4", "--set", "n_holdout=1", "--set", "base_filters=8",
            "--set", "d_filters=8", "--set", "epochs=1", "--out", str(out)]
    assert train_main(["train", *tiny]) == 0
    before = (out / "config.json").read_text()
    assert train_main(["train", *tiny, "--set", "lambda_l1=1", "--set", "pairing=fixed"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "lambda_l1 (10.0 -> 1.0)" in last and "pairing ('aligned' -> 'fixed')" in last
    assert (out / "config.json").read_text() == before


def test_run_names_say_the_condition_and_seed():
    from study.tracking import run_name

    spec = parse_sweep(GOOD, "names.toml")
    params = {"n_images": 10, "arch": "unet", "lambda_cyc": 1.0, "pairing": "fixed"}
    assert run_name(spec, params, 0) == "N10-s0-fixed-unet-cyc1"  # N and seed survive the UI's truncation
    assert run_name(spec, {}, 3) == "s3"


def test_objectives_are_named_for_the_dashboard(swept):
    folder, spec, _, _ = swept
    assert _study(folder, "tiny").metric_names == ["pair/forward_top1"]


def test_help_needs_no_torch():
    """--help answers in a fraction of a second because torch is imported only to train."""
    code = ("import sys, contextlib, io\n"
            "from study.__main__ import main\n"
            "from cyclelike.__main__ import main as train_main\n"
            "for run, argv in ((main, ['sweep', '--help']), (main, ['run', '--help']),\n"
            "                  (train_main, ['train', '--help'])):\n"
            "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "        run(argv)\n"
            "print(sorted(m for m in ('torch', 'mlflow', 'optuna', 'pandas') if m in sys.modules))\n"
            # a sweep worker's imports: torchvision's init loads torch._dynamo (seconds in every process), and
            # pyplot and seaborn wait for the first figure
            "import study.workers, cyclelike.samples\n"
            "print(sorted(m for m in ('torchvision', 'torch._dynamo', 'matplotlib.pyplot', 'seaborn')\n"
            "             if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "[]"]


def test_assignment_history_round_trips_through_mlflow(swept, tmp_path):
    """Formation can be analysed after the fact: every evaluation's a(i) is in one artifact per run."""
    import pandas as pd

    folder = swept[0]
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.trial = '0'")[0]
    history = pd.read_csv(client.download_artifacts(run.info.run_id, "pairing/history.csv", str(tmp_path)))
    assert sorted(history["epoch"].unique()) == [0, 2, 4] and len(history) == 3 * 4  # epoch 0: the untrained map
    final = json.loads(Path(client.download_artifacts(run.info.run_id, "pairing/assignment.json",
                                                      str(tmp_path))).read_text())
    assert history[history["epoch"] == 4].sort_values("i")["a"].tolist() == final["a"]
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "pair/forward_top1"))
    assert steps == [0, 2, 4]  # the history (formation) starts at the first trained evaluation, the curves at 0
    for key in ("pair/flips", "pair/locked_epoch", "pair/agree_colour_ci_low"):
        assert key in summaries(run.data.tags), key
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert len([p for p in images if p.endswith(".png")]) == 3  # the strip at epoch 0 and each evaluation


def test_an_unwritable_mlflow_store_is_one_line():
    from study.stores.mlflow import prepare_store

    with pytest.raises(SweepError, match=r"cannot open the MLflow store sqlite:////proc/no-such/mlflow.db"):
        prepare_store("sqlite:////proc/no-such/mlflow.db")


def test_dataset_input_survives_the_race_between_two_workers(tmp_path):
    """Two workers logging the same images at once race on MLflow's unique dataset row; the loser used to
    fail its whole trial with an IntegrityError. The first log_inputs call here loses that race."""
    import pandas as pd

    from study.stores.mlflow import ensure_experiment, prepare_store
    from study.tracking import RunLogger, dataset_inputs

    client = prepare_store(f"sqlite:///{tmp_path}/mlflow.db")
    logger = RunLogger.start(client, ensure_experiment(client, "race"), "r")
    real, calls = client.log_inputs, []

    def lose_once(run_id, datasets):
        calls.append(run_id)
        if len(calls) == 1:
            raise RuntimeError("UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest")
        return real(run_id, datasets)

    client.log_inputs = lose_once
    logger.log_inputs(dataset_inputs({"training": (pd.DataFrame({"name": ["a"], "sha1": ["0"]}), "images")}, None))
    assert len(calls) == 2 and client.get_run(logger.run_id).inputs.dataset_inputs[0].dataset.name == "images"


def test_a_sweep_ends_with_the_time_it_took_beside_the_time_it_planned():
    """A sweep once planned 2 min and took 12.6 without saying so: the estimate never learnt how far off it was."""
    from study.sweep import took

    assert took(756, 120) == "12.6 min, planned about 2.0 min (6.3x the plan)"
    assert took(40, 50) == "40 s, planned about 50 s (0.8x the plan)"
    assert took(40, float("nan")) == took(40, None) == "40 s"  # no estimate (bad data): no comparison


def test_a_fixed_thread_count_is_the_one_the_sweep_says_it_runs(monkeypatch):
    from study import autotune
    from study.autotune import plan_workers

    monkeypatch.setattr(autotune, "cores", lambda: 4)
    spec = parse_sweep(GOOD, "threads.toml", {"threads": 1})
    assert plan_workers(spec, 1, "off") == (1, 1, False)  # each trial sets its threads=1, whatever the cores
    assert plan_workers(parse_sweep(GOOD, "cores.toml"), 2, "off") == (2, 2, False)  # else the cores shared out


def test_estimate_probes_the_largest_queued_condition(tmp_path):
    """Queued trials keep their condition in fixed_params until asked for: the estimate must read it there,
    or every sweep is estimated from the base config (a capacity study up to N=160 from N=10)."""
    from study.ledger import queue_missing
    from study.sweep import estimate

    spec = parse_sweep({"name": "est", "seeds": [0], "space": {"n_images": [4, 40]},
                        "fixed": {"image_size": 16, "base_filters": 4, "d_filters": 4, "n_holdout": 0, "epochs": 2}})
    study = load_study(spec, open_storage(str(tmp_path / "optuna.journal")), create=True)
    queue_missing(study, spec)
    seconds, text = estimate(study, spec, 2, threads=1, workers=1)
    assert "2 epochs of N=40, 16 px" in text and seconds > 0


def test_two_workers_drawing_one_random_condition_claim_it_once(tmp_path, monkeypatch):
    """The check of what is taken and the write of config_key were two steps: two threads that drew the only
    condition at once both claimed it. Both are held just before the write, where the race was."""
    config = tmp_path / "race.toml"
    config.write_text(TINY.format(name="race", epochs=1, extra="")
                      .replace("seeds = [0, 1]", 'seeds = [0]\nsampler = "random"\ntrials = 1')
                      .replace('pairing = ["aligned", "fixed"]', 'pairing = ["fixed"]'))
    barrier, original = threading.Barrier(2), optuna.Trial.set_user_attr

    def held(self, key, value):
        if key == "config_key":
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=3)  # the other worker gets there too, unless a lock keeps it out
        original(self, key, value)

    monkeypatch.setattr(optuna.Trial, "set_user_attr", held)
    with store_in(tmp_path):
        spec = load_sweep(config)
        load_study(spec, open_storage(None), create=True)
        claims = []

        def worker(i: int) -> None:
            study = load_study(spec, open_storage(None), worker=i)
            claims.append(claim(study, Context(spec, None, "0", "parent", 1, f"inv{i}", 0, 0)))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        trials = _study(tmp_path, "race").trials
    assert sum(c is not None for c in claims) == 1
    assert [t.user_attrs.get("config_key") is not None for t in trials].count(True) == 1


def test_a_worker_whose_trial_was_declared_stale_ends_it_with_one_line(tmp_path, capsys, monkeypatch):
    """Another worker failed this trial as stale while it trained; its `tell` raised and the sweep exited 1."""
    import study.workers as sweep

    config = write_sweep(tmp_path, "stale", epochs=2)
    real = sweep.run_trials

    def declared_stale_meanwhile(configs, loggers, *args, **kwargs):
        outcomes = real(configs, loggers, *args, **kwargs)
        storage = open_storage(None)
        for t in optuna.load_study(study_name="stale", storage=storage).get_trials(states=(TrialState.RUNNING,)):
            if t.number == 0:  # as another worker's stale check does
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        return outcomes

    monkeypatch.setattr(sweep, "run_trials", declared_stale_meanwhile)
    code, said = _main(capsys, monkeypatch, tmp_path, "sweep", "--config", str(config), "--workers", "1")
    assert code == 0 and "Traceback" not in said, said[-3000:]
    assert len([line for line in said.splitlines() if "trial    0" in line and "stale" in line]) == 1, said[-3000:]
    trials = _study(tmp_path, "stale").trials
    assert trials[0].state == TrialState.FAIL and "mlflow_run_id" in trials[0].user_attrs
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert client.get_run(trials[0].user_attrs["mlflow_run_id"]).info.status == "KILLED"


def _server(folder: Path, port: int) -> subprocess.Popen:
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    return subprocess.Popen([str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{folder}/server.db"], cwd=folder,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
            return True
    except OSError:
        return False


def test_a_tracking_server_outage_ends_the_sweep_with_one_line_and_uses_no_retry(tmp_path, capsys, monkeypatch):
    """An outage past MLflow's retries ended in a 120-line traceback, counted against max_retries, and left
    the run RUNNING while Optuna said FAIL."""
    port = _free_port()
    config = write_sweep(tmp_path, "outage", epochs=80)
    config.write_text(config.read_text().replace("seeds = [0, 1]", "seeds = [0]\nmax_retries = 0")
                      .replace('pairing = ["aligned", "fixed"]', 'pairing = ["fixed"]')
                      .replace("eval_every = 2", "eval_every = 50"))  # a strip per evaluation over HTTP: few
    # MLflow's retries as the harness bounds them (analysis.store), not the test's own
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    env |= {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "CYCLELIKE_STORE": str(tmp_path / "store"),
            "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "study", "sweep", "--config", str(config), "--workers", "1"]
    server = _server(tmp_path, port)
    sweep = None
    try:
        _wait_for(lambda: _up(port), 90, "the MLflow server")
        sweep = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True, start_new_session=True)
        journal = tmp_path / "store" / "optuna.journal"

        def training():
            if not journal.exists():
                return None
            with contextlib.suppress(KeyError):
                return [t for t in optuna.load_study(study_name="outage", storage=open_storage(str(journal))).trials
                        if "mlflow_run_id" in t.user_attrs] or None
            return None

        _wait_for(training, 120, "a trial in training")
        os.killpg(server.pid, signal.SIGKILL)  # the tracking server's machine goes away
        lost = time.monotonic()
        server.wait(timeout=30)
        _, err = sweep.communicate(timeout=240)
        print(f"tracking server lost: exit {sweep.returncode} after {time.monotonic() - lost:.1f} s")
        assert sweep.returncode == 3, err[-3000:]
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error:"), err[-3000:]
        assert "the store stopped answering" in err.strip().splitlines()[-1]
        trial = optuna.load_study(study_name="outage", storage=open_storage(str(journal))).trials[0]
        assert trial.state == TrialState.FAIL and trial.user_attrs["failure"].startswith("killed:")
        server = _server(tmp_path, port)  # back again: the same command goes on, no retry used up
        _wait_for(lambda: _up(port), 90, "the MLflow server")
        for key in ("MLFLOW_TRACKING_URI", "CYCLELIKE_STORE"):  # the same command again, in this process
            monkeypatch.setenv(key, env[key])
        monkeypatch.chdir(tmp_path)
        from study.__main__ import main

        code = main(cmd[3:])
        assert code == 0, capsys.readouterr().err[-3000:]
        states = [t.state for t in optuna.load_study(study_name="outage", storage=open_storage(str(journal))).trials]
        assert states == [TrialState.FAIL, TrialState.COMPLETE]
        client = MlflowClient(f"http://127.0.0.1:{port}")
        experiment = client.get_experiment_by_name("outage")
        assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    finally:
        if sweep is not None and sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_a_killed_trial_counts_as_run_again_once_a_retry_of_it_finishes():
    """A sweep whose dead worker's trials the other workers ran again to the end has lost nothing; one whose
    retry still waits, or was killed in turn without a finished retry, has."""
    from optuna.trial import create_trial

    from study.retries import not_rerun

    study = optuna.create_study()
    killed = {"failure": "killed: its worker stopped sending heartbeats"}
    for state, attrs in [(TrialState.FAIL, killed), (TrialState.FAIL, {**killed, "retry_of": 0}),
                         (TrialState.COMPLETE, {"retry_of": 1}), (TrialState.FAIL, killed),
                         (TrialState.WAITING, {"retry_of": 3}), (TrialState.FAIL, killed),
                         (TrialState.PRUNED, {"retry_of": 5})]:
        study.add_trial(create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None,
                                     intermediate_values={1: 0.5} if state == TrialState.PRUNED else None,
                                     params={}, distributions={}, user_attrs=attrs))
    assert not_rerun(study.trials, [0, 1, 3, 5]) == [3]


def test_a_trial_whose_heartbeats_no_longer_reach_the_storage_stops_within_the_outage_limit(monkeypatch):
    """Past the grace period the other workers count the trial as dead and run its retry: training it on
    (with pruner = none nothing else asks the storage until the end) is lost work, and its end cannot be told.
    A storage silent for OUTAGE_S is lost too, however long the grace: the sweep ends within a minute (it took
    a quarter of an hour), and the trial, asked every epoch, stops at the next."""
    import study.owners
    from study.owners import Lease
    from study.stores.optuna import StoreOutage, is_outage, outage_reason

    class Down:  # a storage that stopped answering
        def set_trial_user_attr(self, *args):
            raise ConnectionRefusedError("connection to server at 127.0.0.1 port 5432 refused")

    monkeypatch.setattr(study.owners, "OUTAGE_S", 0.3)
    held = Lease(Down(), 7)
    held.interval, held.grace = 0.02, 600.0
    held.thread.start()
    try:
        held.check()  # within the limit: a missed heartbeat is retried
        time.sleep(0.6)
        with pytest.raises(StoreOutage) as stopped:
            held.check()
    finally:
        held.stop.set()
    assert is_outage(stopped.value) and "5432 refused" in outage_reason(stopped.value)
