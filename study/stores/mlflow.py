"""The MLflow store: where it is and how it is made ready (one sqlite database prepared under a lock, or a
tracking server that must answer), the client trials write through, and one experiment per study.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from filelock import FileLock
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES
from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from analysis.store import TRIALS_VIEW, first_line, mask_secrets, safe_part, sqlite_path, tracking_uri

from ..spec import SweepError

# "Creating initial MLflow database tables..." on every new store says nothing a user acts on
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


@contextlib.contextmanager
def without_retries():
    """What closes runs once the store has stopped answering tries each request once: every retry costs seconds of
    backoff, and the next start closes what this one could not. MLflow asks the setting at each request; it is
    answered here rather than by changing the environment, which other threads (libpq's) may be reading."""
    MLFLOW_HTTP_REQUEST_MAX_RETRIES.get = lambda: 0  # shadows the method on this one object
    try:
        yield
    finally:
        vars(MLFLOW_HTTP_REQUEST_MAX_RETRIES).pop("get", None)


class Client(MlflowClient):
    """The client trials log through: a tag already set on a run to the same value is not sent again.
    RunLogger.log_image sets mlflow.loggedImages=True with every picture, one store write (~3 ms) for each
    evaluation's strip."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tags_set: set[tuple[str, str, str]] = set()

    def set_tag(self, run_id: str, key: str, value: Any, synchronous: bool | None = None):
        if (run_id, key, str(value)) in self._tags_set:
            return None
        result = super().set_tag(run_id, key, value, synchronous)
        if len(self._tags_set) > 10_000:  # a long-lived worker: forget, at worst one write again
            self._tags_set.clear()
        self._tags_set.add((run_id, key, str(value)))
        return result


@event.listens_for(Engine, "connect")
def _wal_syncs_at_checkpoints(connection, _record) -> None:
    """An sqlite store in WAL mode syncs the log at its checkpoints, not at every commit (sqlite's
    synchronous=NORMAL): still safe from corruption and from a killed process; a power cut may lose the last
    commits. Each MLflow write is its own commit, and a trial makes dozens."""
    if isinstance(connection, sqlite3.Connection):
        if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            connection.execute("PRAGMA synchronous=NORMAL")


def _check_server(uri: str) -> None:
    """A tracking server that is down gives one line at once, not minutes of MLflow's retries."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10):
            pass
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise SweepError(f"MLflow tracking server {uri} cannot be reached ({reason}); start it (make server) "
                         "or unset MLFLOW_TRACKING_URI") from None


def prepare_store(uri: str | None = None) -> MlflowClient:
    """Create the store once, under a lock, before any worker starts: two processes creating a fresh
    sqlite database at once race in MLflow's schema migration."""
    uri = uri or tracking_uri()
    db = sqlite_path(uri)
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    try:
        if db is None:
            client = Client(tracking_uri=uri)
            client.search_experiments(max_results=1)
            return client
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(db.parent / ".store.lock"):
            # before MLflow's first connection, which then syncs as WAL allows (_wal_syncs_at_checkpoints):
            # concurrent writers from several workers, ~3x faster
            with contextlib.closing(sqlite3.connect(db)) as con:
                con.execute("PRAGMA journal_mode=WAL")
            client = Client(tracking_uri=uri)
            client.search_experiments(max_results=1)  # runs the migration
        return client
    except SweepError:
        raise
    except Exception as err:  # MLflow wraps OS and database errors in several types
        raise SweepError(f"cannot open the MLflow store {mask_secrets(uri)}: {first_line(err)}") from None


def artifact_root(uri: str) -> str | None:
    """mlruns/artifacts beside a local sqlite store; a server decides for itself."""
    db = sqlite_path(uri)
    return (db.parent.resolve() / "artifacts").as_uri() if db is not None else None


# MLflow 3 opens an experiment without a kind in its GenAI view (traces, token usage); ours are classic ML.
# The UI keeps its columns in the browser and nests a parent's runs unless the table is sorted by a metric
# (then every run is a row), so the description says how to see every trial at once.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
STUDY_NOTE = {"mlflow.note.content": "Each trial is a run nested under the study's parent run, named "
                                     "N-seed-condition. The link `make sweep` and the report print opens this "
                                     "table with every trial as a row (sorted by the objective) and the swept "
                                     "params as columns."}


def set_trials_view(client: MlflowClient, experiment_id: str, columns: list[str], objective: str,
                    maximize: bool) -> None:
    """The runs table a study is read in, as a shared view (what the UI's Share button writes): sorted by the
    objective, where MLflow 3 lists every trial as a row instead of folding them under the parent run, with
    the swept params and the objective as columns. The UI keeps its columns in the browser otherwise."""
    view = {"orderByKey": f"metrics.`{objective}`", "orderByAsc": not maximize, "runsHiddenMode": "SHOW_ALL",
            "selectedColumns": [f"metrics.`{objective}`", *(f"params.`{c}`" for c in columns)]}
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{TRIALS_VIEW}", json.dumps(view))
ROLE_TAG = "cyclelike.role"  # study (a sweep's) or runs (single runs): make report picks the latest study


def disk_use(name: str, uri: str | None = None) -> str:
    """What a study's artifacts take in a local store, for the line a sweep ends with."""
    root = artifact_root(uri or tracking_uri())
    if root is None:
        return "artifacts on the tracking server"
    folder = Path(urllib.parse.urlparse(root).path) / safe_part(name)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0
    return f"{size / 2**20:.1f} MiB of artifacts in {folder}"


def ensure_experiment(client: MlflowClient, name: str, role: str = "study") -> str:
    tags = {**EXPERIMENT_TAGS, ROLE_TAG: role, **(STUDY_NOTE if role == "study" else {})}
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        for key, value in tags.items():
            if experiment.tags.get(key) != value:
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    root = artifact_root(client.tracking_uri)
    # the name as one folder: an experiment named `../../etc/x` (by `study run --experiment`) stays in the store
    return client.create_experiment(name, artifact_location=f"{root}/{safe_part(name)}" if root else None,
                                    tags=tags)
