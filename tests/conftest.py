import contextlib
import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _few_threads():
    # the suite runs on 2 cores; tests compete for them less with fixed thread counts
    torch.set_num_threads(2)


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
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    os.chdir(folder)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield uri
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


@pytest.fixture(autouse=True, scope="session")
def _own_autotune_cache(tmp_path_factory):
    # --workers auto / --fuse-seeds auto read a per-machine cache in the home folder: a user's measurement
    # must not change how the tests' sweeps run, and the tests must not write it
    os.environ["CYCLELIKE_AUTOTUNE_CACHE"] = str(tmp_path_factory.mktemp("autotune") / "autotune.json")
