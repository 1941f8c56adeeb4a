import contextlib
import os
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The tiny sweep every study test starts from (16 px, N = 4, two pairings x two seeds), changed per test
TINY = """
name = "{name}"
seeds = [0, 1]
eval_every = 2
objectives = ["pair/forward_top1"]
[fixed]
image_size = 16
n_images = 4
n_holdout = 1
base_filters = 8
d_filters = 8
batch_size = 2
epochs = {epochs}
[space]
pairing = ["aligned", "fixed"]
{extra}
"""


def tiny_sweep(name: str, epochs: int = 4, extra: str = "", **changes: str) -> str:
    """TINY for `name`; `changes` replace a line that starts with their key (seeds, eval_every, pairing, ...)
    and add one to [fixed] where none does."""
    text = TINY.format(name=name, epochs=epochs, extra=extra)
    for key, value in changes.items():
        line = f"{key} = {value}"
        lines = text.splitlines()
        hits = [i for i, old in enumerate(lines) if old.startswith(f"{key} = ")]
        if hits:
            lines[hits[0]] = line
        else:
            lines.insert(lines.index("[fixed]") + 1, line)
        text = "\n".join(lines) + "\n"
    return text


def write_sweep(folder: Path, name: str, epochs: int = 4, extra: str = "", **changes: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(tiny_sweep(name, epochs, extra, **changes))
    return path


def run_main(module: str, capsys, monkeypatch, folder: Path, *argv: str) -> tuple[int, str]:
    """`python -m <module> ...` in this process with its store in `folder`, as a shell runs it (sys.argv is what
    the command tag reads): its exit code and everything it printed."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlruns/mlflow.db")
    monkeypatch.setenv("CYCLELIKE_STORE", str(folder / "mlruns"))
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(sys, "argv", [str(repo / module.replace(".", "/") / "__main__.py"), *argv])
    main = __import__(f"{module}.__main__", fromlist=["main"]).main
    try:
        code = main(list(argv))
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture(autouse=True)
def _few_threads():
    # fixed thread counts: tests compete for the cores less
    torch.set_num_threads(min(2, len(os.sched_getaffinity(0))))


def pytest_configure(config):
    """Under pytest-xdist (make test: -n auto) each worker gets cores of its own: the sweeps its tests start in
    subprocesses size their workers and threads from the cores they see (study.autotune.cores), and torch's
    threads spinning on a core another worker uses make an epoch many times slower."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cpus = sorted(os.sched_getaffinity(0))
    if worker and count > 1 and len(cpus) > 1:  # worker i on core i mod cores: never one worker over all of them
        index = int(worker.removeprefix("gw"))
        os.sched_setaffinity(0, cpus[index % len(cpus) :: count] or [cpus[index % len(cpus)]])


@pytest.fixture
def shared_data() -> Path:
    folder = SHARED_DATA / "pix2pix-cats"
    if not folder.is_dir():
        pytest.skip(f"sample data not found at {folder} (../shared/data beside the checkout)")
    return folder


@contextlib.contextmanager
def store_in(folder: Path):
    """Run inside `folder` with its own MLflow store, as `make sweep` run from there would; restored after.

    For module-scoped fixtures, where pytest's monkeypatch is not available."""
    old_cwd, uri = os.getcwd(), f"sqlite:///{folder}/mlruns/mlflow.db"
    os.chdir(folder)
    try:
        with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": uri}):
            yield uri
    finally:
        os.chdir(old_cwd)


@pytest.fixture(autouse=True, scope="session")
def _own_autotune_cache(tmp_path_factory):
    # --workers auto / --fuse-seeds auto read a per-machine cache in the home folder: a user's measurement
    # must not change how the tests' sweeps run, and the tests must not write it
    with mock.patch.dict(os.environ, {"CYCLELIKE_AUTOTUNE_CACHE": str(tmp_path_factory.mktemp("autotune") /
                                                                     "autotune.json")}):
        yield


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL started once for the tests that need one (skipped where initdb is not found)."""
    import shutil
    import tempfile

    from study.stores import servers

    try:
        servers.find_binary("initdb")
    except servers.ServerError as missing:
        pytest.skip(str(missing))
    # under /tmp, readable by the `postgres` user the server runs as when the tests run as root
    parent = Path(tempfile.mkdtemp(prefix="cyclelike-pg-"))
    parent.chmod(0o755)
    yield servers.start_postgres(parent / "cluster")
    servers.stop_postgres(parent / "cluster")
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server):
    """The Optuna storage URL of postgres_server, its password in it."""
    return postgres_server.url("optuna")


# the files whose tests start sweeps, servers and databases in subprocesses: they go first, so that under
# pytest-xdist the short tests fill the other core at the end instead of one long test running alone
LONG_FIRST = ("test_multimachine.py", "test_study.py", "test_outside.py", "test_bench_device.py", "test_faults.py")


def pytest_collection_modifyitems(config, items):
    """Long files first; under pytest-xdist (--dist loadgroup) the tests that share a module-scoped fixture run on
    one worker, so it is built once."""
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    for item in items:
        defs = getattr(item, "_fixtureinfo", None)
        shared = defs and any(d.scope == "module" for fixture in defs.name2fixturedefs.values() for d in fixture)
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
