"""An MLflow tracking server for studies on several machines (`make server`, `make server-stop`).

Workers on other machines log to it over HTTP, artifacts included (it serves them from
`--artifacts-destination` under the store folder), so nothing is written to a worker's disk. Its
backend is `--backend` (or BACKEND=...): by default the `mlflow` database of the PostgreSQL that
`make db` started, else this checkout's sqlite store. It listens on 127.0.0.1 unless HOST is given.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from analysis.store import safe_url, store_dir, tracking_uri

from .postgres import PostgresError, free_port
from .postgres import start as start_postgres
from .postgres import status as postgres_running


def _files() -> tuple[Path, Path]:
    folder = store_dir()
    return folder / "server.pid", folder / "server.log"


def default_backend() -> str:
    cluster = store_dir() / "postgres"
    if (cluster / "PG_VERSION").exists() and postgres_running(cluster):
        return start_postgres(cluster).url("mlflow")
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        raise PostgresError("MLFLOW_TRACKING_URI points at a server already; give --backend for this one")
    return uri


def start(backend: str, host: str, port: int, timeout: float = 90.0) -> str:
    pid_file, log = _files()
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        raise PostgresError(f"a tracking server is running already (pid {pid_file.read_text().strip()}); "
                            "make server-stop first")
    artifacts = store_dir() / "artifacts-server"
    artifacts.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    backend, secret = _password_apart(backend)
    with open(log, "a") as out:
        proc = subprocess.Popen([str(mlflow), "server", "--host", host, "--port", str(port), "--workers", "2",
                                 "--backend-store-uri", backend, "--artifacts-destination", str(artifacts),
                                 "--serve-artifacts"],
                                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **secret},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise PostgresError(f"mlflow server exited with code {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return url
        except OSError:
            time.sleep(0.5)
    raise PostgresError(f"mlflow server did not answer on {url} within {timeout:.0f} s; see {log}")


def _password_apart(backend: str) -> tuple[str, dict[str, str]]:
    """A PostgreSQL backend's URL without its password, and the password as libpq's PGPASSWORD: a command line is
    readable by every user of the machine (ps), and the server writes its own into its log."""
    if not backend.startswith("postgresql"):
        return backend, {}
    from sqlalchemy.engine import make_url

    url = make_url(backend)
    if url.password is None:
        return backend, {}
    return url.set(password=None).render_as_string(hide_password=False), {"PGPASSWORD": str(url.password)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def stop() -> bool:
    pid_file, _ = _files()
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    if _alive(pid):
        os.killpg(pid, signal.SIGTERM)  # the server's gunicorn/uvicorn workers are in its process group
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.1)
    pid_file.unlink()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.stores.mlflow_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("start", "stop"))
    parser.add_argument("--backend", default=os.environ.get("BACKEND") or None,
                        help="backend store URI (default: make db's PostgreSQL, else the sqlite store)")
    parser.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for other machines)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SERVER_PORT") or 0) or None,
                        help="port (default: a free one, printed)")
    args = parser.parse_args(argv)
    if args.command == "stop":
        print("tracking server stopped" if stop() else "no tracking server was started here")
        return 0
    try:
        backend = args.backend or default_backend()
        port = args.port or free_port()
        url = start(backend, args.host, port)
    except PostgresError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"MLflow tracking server on {url} (backend {safe_url(backend)}, listening on {args.host}:{port})")
    print(f"workers use:  MLFLOW_TRACKING_URI=http://<this machine>:{port}")
    print("stop it with: make server-stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
