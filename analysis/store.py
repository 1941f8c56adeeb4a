"""Where the studies live: the one place that resolves the MLflow tracking URI and the Optuna storage.

Every command (study, analysis, the Makefile's targets, the dashboard) asks here, so a report started
from another folder reads the store the sweep wrote. The store is the project's `mlruns/` folder,
anchored to this checkout and never to the current directory, unless one of these says otherwise:
- `CYCLELIKE_STORE=DIR` (or a command's `--store DIR`): another folder, holding mlflow.db and optuna.journal;
- `MLFLOW_TRACKING_URI`: a tracking server (http://...) or another database, for many machines;
- `OPTUNA_STORAGE` (or a command's `--storage URL`): the Optuna storage, e.g. PostgreSQL.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
# the harness runs offline and sends nothing anywhere; MLflow's usage telemetry also cost ~50 ms a call
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per downloaded file is noise
# a tracking server that stops answering is one line and exit 3 within seconds, not after MLflow's own retries
# (7 with a backoff factor of 2, and 120 s per request: 4 to 15 minutes); a user's own values win
for _key, _value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                     ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")):
    os.environ.setdefault(_key, _value)
# and a PostgreSQL that stops answering (libpq's settings): a connection is given up after 10 s, and one whose
# server went silent is found dead by TCP keepalives and unacknowledged writes within about 15 s
DB_CONNECT_ARGS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                   "keepalives_count": 3, "tcp_user_timeout": 15_000}
STORE_ENV = "CYCLELIKE_STORE"


def store_dir() -> Path:
    folder = os.environ.get(STORE_ENV)
    return Path(folder).expanduser().resolve() if folder else PROJECT / "mlruns"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the sqlite database in the store folder (MLflow 3 refuses a plain ./mlruns)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        db = sqlite_path(uri)
        # a relative sqlite path would follow the current directory: anchor it to the project instead
        if db is not None and not db.is_absolute():
            return f"sqlite:///{PROJECT / db}"
        return uri
    return f"sqlite:///{store_dir() / 'mlflow.db'}"


def optuna_storage(explicit: str | None = None) -> str:
    """--storage, else OPTUNA_STORAGE, else the journal file beside the MLflow database (or in the store folder)."""
    url = explicit or os.environ.get("OPTUNA_STORAGE")
    if url:
        return url
    db = sqlite_path(tracking_uri())
    return str((db.parent if db is not None else store_dir()) / "optuna.journal")


def use_store(folder: str | None) -> None:
    """A command's `--store DIR`: the same as CYCLELIKE_STORE=DIR for this process and its workers."""
    if folder:
        os.environ[STORE_ENV] = str(Path(folder).expanduser().resolve())
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # the flag on the command line wins over the environment


# MLflow 3.17's UI picks GenAI or Model training for the whole page from this parameter (else from what the
# browser last chose, GenAI at first), whatever the experiment's kind tag says
CLASSIC_VIEW = "workflowType=machine_learning"
DEFAULT_UI = "http://127.0.0.1:5000"  # make ui's


def run_page(ui: str, experiment_id: str, run_id: str) -> str:
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{CLASSIC_VIEW}"


TRIALS_VIEW = "trials"  # the experiment's shared view (study.stores.mlflow.set_trials_view) that links open


def trials_page(ui: str, experiment_id: str) -> str:
    """The study's runs table as the sweep set it up: every trial a row, sorted by the objective, with the
    swept params and the objectives as columns."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={TRIALS_VIEW}&{CLASSIC_VIEW}"


# a password in a URL (scheme://user:password@host) or in its query (?password=...): what mask_secrets hides
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):[^\s@]*@")
QUERY_PASSWORD = re.compile(r"(?i)(?P<head>[?&;\s](?:password|passwd|pwd)=)[^&\s]+")
MASK = "***"


def mask_secrets(text: str) -> str:
    """`text` with the password of every URL in it masked (postgresql://user:***@host/db, ?password=***): what
    the harness logs, tags, prints and reports holds no secret from a storage or tracking URL."""
    return QUERY_PASSWORD.sub(rf"\g<head>{MASK}", URL_PASSWORD.sub(rf"\g<head>:{MASK}@", str(text)))


def safe_url(url: str) -> str:
    """A database or server URL without its password, for messages and logs."""
    return mask_secrets(url)


def safe_part(name: str) -> str:
    """A study or run name as one part of a path: never a parent folder, an absolute path or a hidden file."""
    part = re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).lstrip(".")
    return part or "_"


def first_line(err: BaseException) -> str:
    """The one line of an error a user needs (a driver's names host and port), without wrappers' extra lines or
    a password from a URL it quotes."""
    text = str(getattr(err, "orig", None) or err).strip()
    return mask_secrets(text.splitlines()[0]) if text else type(err).__name__


if __name__ == "__main__":  # `python -m analysis.store`: what the Makefile's ui and dashboard targets open
    import sys

    print(optuna_storage() if sys.argv[1:] == ["optuna"] else tracking_uri())
