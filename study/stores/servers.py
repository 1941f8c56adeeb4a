"""The servers that hold a study's stores for several machines.

`python -m study.stores.servers postgres start` (`make db`) creates a PostgreSQL cluster in mlruns/postgres on first
use, from the Debian package's own binaries, with a generated password kept in mlruns/postgres.password (readable by
this user only), and starts it listening on 127.0.0.1 (HOST=0.0.0.0 to let other machines in), on a free or given
port. It holds two databases: `optuna` (the study storage) and `mlflow` (a tracking server's backend). Restarting
keeps the studies. `stop` (`make db-stop`) stops it through its pid file; `url` prints the storage URL. PostgreSQL
refuses to run as root; as root the server runs as the package's `postgres` user.

`python -m study.stores.servers mlflow start` (`make server`, `make server-stop`) starts an MLflow tracking server.
Workers on other machines log to it over HTTP, artifacts included (it serves them from `--artifacts-destination`
under the store folder), so nothing is written to a worker's disk. Its backend is `--backend` (or BACKEND=...): by
default the `mlflow` database of the PostgreSQL that `make db` started, else this checkout's sqlite store. It
listens on 127.0.0.1 unless HOST is given.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from analysis.store import safe_url, store_dir, tracking_uri

USER = "cyclelike"
DATABASES = ("optuna", "mlflow")


class ServerError(RuntimeError):
    """PostgreSQL is missing, or a server would not start; the message says what to do."""


def find_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if versions:
        return versions[-1]
    raise ServerError(f"PostgreSQL's {name} was not found (on PATH or under /usr/lib/postgresql/*/bin); "
                      "install it: apt-get install -y postgresql")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    data: Path  # the cluster's folder
    port: int
    password: str
    host: str = "127.0.0.1"

    def url(self, database: str = "optuna", host: str | None = None) -> str:
        return f"postgresql+psycopg://{USER}:{self.password}@{host or self.host}:{self.port}/{database}"


def _run_as_owner(args: list[str], owner: str | None, **kwargs) -> subprocess.CompletedProcess:
    command = ["runuser", "-u", owner, "--", *args] if owner else args
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def _owner() -> str | None:
    """The user the server runs as: this one, or `postgres` when this one is root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError("running as root and there is no 'postgres' user to run the server as; "
                          "install the Debian package (apt-get install -y postgresql)") from None
    return "postgres"


def _chown(path: Path, owner: str | None) -> None:
    if owner:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _paths(data: Path) -> tuple[Path, Path, Path]:
    return data.with_name(data.name + ".password"), data.with_name(data.name + ".port"), data / "server.log"


def start_postgres(data: str | Path | None = None, port: int | None = None, listen: str = "127.0.0.1") -> Server:
    """Create the cluster if needed and start it (a running one is left as it is); returns its address."""
    data = Path(data) if data else store_dir() / "postgres"
    owner = _owner()
    password_file, port_file, log = _paths(data)
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)
        _chown(data, owner)
        password = secrets.token_urlsafe(24)
        with os.fdopen(os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(password)  # created unreadable to others: never a moment with the umask's 0644
        with tempfile.NamedTemporaryFile("w", delete=False, dir=data.parent) as pw:
            pw.write(password)
        try:
            _chown(Path(pw.name), owner)
            out = _run_as_owner([find_binary("initdb"), "-D", str(data), "-U", USER, f"--pwfile={pw.name}",
                                 "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8"], owner)
        finally:
            os.unlink(pw.name)
        if out.returncode != 0:
            raise ServerError(f"initdb failed in {data}: {out.stderr.strip().splitlines()[-1:]}")
        with open(data / "pg_hba.conf", "a") as hba:  # other machines, with the password, when HOST opens it
            hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
    password = password_file.read_text().strip()
    if port is None:
        port = int(port_file.read_text()) if port_file.exists() else free_port()
    server = Server(data, port, password, "127.0.0.1" if listen in ("127.0.0.1", "localhost") else listen)
    if postgres_running(data):
        return server
    options = f"-c listen_addresses={listen} -p {port} -c unix_socket_directories={data}"
    out = _run_as_owner([find_binary("pg_ctl"), "start", "-D", str(data), "-l", str(log), "-w", "-t", "60",
                         "-o", options], owner)
    if out.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:] if log.exists() else [out.stderr.strip()]
        raise ServerError(f"PostgreSQL did not start on port {port}: {' '.join(tail)}")
    port_file.write_text(str(port))
    _create_databases(server)
    return server


def _create_databases(server: Server) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=server.port, user=USER, password=server.password,
                         dbname="postgres", autocommit=True) as con:
        existing = {row[0] for row in con.execute("SELECT datname FROM pg_database")}
        for name in DATABASES:
            if name not in existing:
                con.execute(f'CREATE DATABASE "{name}"')


def postgres_running(data: Path) -> bool:
    if not (data / "postmaster.pid").exists():
        return False
    return _run_as_owner([find_binary("pg_ctl"), "status", "-D", str(data)], _owner()).returncode == 0


def stop_postgres(data: str | Path | None = None) -> bool:
    """Stop the server of this cluster (pg_ctl reads its pid file); False when none was running."""
    data = Path(data) if data else store_dir() / "postgres"
    if not postgres_running(data):
        return False
    out = _run_as_owner([find_binary("pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w", "-t", "60"], _owner())
    if out.returncode != 0:
        raise ServerError(f"pg_ctl stop failed for {data}: {out.stderr.strip()}")
    return True


def _mlflow_files() -> tuple[Path, Path]:
    folder = store_dir()
    return folder / "server.pid", folder / "server.log"


def default_backend() -> str:
    cluster = store_dir() / "postgres"
    if (cluster / "PG_VERSION").exists() and postgres_running(cluster):
        return start_postgres(cluster).url("mlflow")
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        raise ServerError("MLFLOW_TRACKING_URI points at a server already; give --backend for this one")
    return uri


def start_mlflow(backend: str, host: str, port: int, timeout: float = 90.0) -> str:
    pid_file, log = _mlflow_files()
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        raise ServerError(f"a tracking server is running already (pid {pid_file.read_text().strip()}); "
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
            raise ServerError(f"mlflow server exited with code {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return url
        except OSError:
            time.sleep(0.5)
    raise ServerError(f"mlflow server did not answer on {url} within {timeout:.0f} s; see {log}")


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


def stop_mlflow() -> bool:
    pid_file, _ = _mlflow_files()
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
    parser = argparse.ArgumentParser(prog="python -m study.stores.servers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="server", required=True)
    db = sub.add_parser("postgres", help="the PostgreSQL for Optuna's storage and an MLflow backend (make db)")
    db.add_argument("command", choices=("start", "stop", "url"))
    db.add_argument("--dir", default=None, help="the cluster's folder (default mlruns/postgres)")
    db.add_argument("--port", type=int, default=None, help="port (default: the last one used, else a free one)")
    tracking = sub.add_parser("mlflow", help="an MLflow tracking server for workers elsewhere (make server)")
    tracking.add_argument("command", choices=("start", "stop"))
    tracking.add_argument("--backend", default=os.environ.get("BACKEND") or None,
                          help="backend store URI (default: make db's PostgreSQL, else the sqlite store)")
    tracking.add_argument("--port", type=int, default=int(os.environ.get("SERVER_PORT") or 0) or None,
                          help="port (default: a free one, printed)")
    for p in (db, tracking):
        p.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1",
                       help="address to listen on (default 127.0.0.1; 0.0.0.0 for other machines)")
    args = parser.parse_args(argv)
    return _postgres(args) if args.server == "postgres" else _mlflow(args)


def _postgres(args) -> int:
    data = Path(args.dir) if args.dir else store_dir() / "postgres"
    try:
        if args.command == "stop":
            print("PostgreSQL stopped" if stop_postgres(data) else f"no PostgreSQL running for {data}")
            return 0
        if args.command == "url" and not postgres_running(data):
            print(f"error: no PostgreSQL running for {data}; start it with make db", file=sys.stderr)
            return 1
        server = start_postgres(data, args.port, args.host)
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.command == "url":
        print(server.url())
        return 0
    print(f"PostgreSQL for studies in {data} on port {server.port} (listening on {args.host})")
    print(f"Optuna storage:   {safe_url(server.url('optuna'))}")
    print(f"MLflow backend:   {safe_url(server.url('mlflow'))}")
    # a terminal's scrollback and a CI log keep what is printed: the password stays in its file
    print(f"the password is kept in {_paths(data)[0]} (readable by you only); the storage URL with it: "
          "python -m study.stores.servers postgres url; stop with: make db-stop")
    return 0


def _mlflow(args) -> int:
    if args.command == "stop":
        print("tracking server stopped" if stop_mlflow() else "no tracking server was started here")
        return 0
    try:
        backend = args.backend or default_backend()
        port = args.port or free_port()
        url = start_mlflow(backend, args.host, port)
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"MLflow tracking server on {url} (backend {safe_url(backend)}, listening on {args.host}:{port})")
    print(f"workers use:  MLFLOW_TRACKING_URI=http://<this machine>:{port}")
    print("stop it with: make server-stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
