"""Nothing leaks: a database password given on the command line is in no tag, artifact, page or printed line, and a
study or experiment name writes nothing outside the store."""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_main, write_sweep

REPO = Path(__file__).resolve().parents[1]



def _hits(secret: bytes, folder: Path) -> list[str]:
    return [str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file() and secret in f.read_bytes()]


def test_a_password_in_the_storage_url_goes_nowhere(tmp_path, capsys, monkeypatch, postgres_server):
    """The password of `--storage` was in the `command` tag of every trial run and of the parent run, in the
    report's report.md and index.html, and in make worker's echoed command line."""
    from study.stores import servers

    url, secret = postgres_server.url("optuna"), postgres_server.password
    config = write_sweep(tmp_path, "leak", epochs=2, seeds="[0]", pairing='["fixed"]', threads="1", n_holdout="0")
    printed = []
    for module, argv in (("study", ["sweep", "--config", str(config), "--storage", url]),
                         ("analysis", ["report", "--experiment", "leak", "--storage", url, "--out",
                                       str(tmp_path / "report")])):
        code, said = run_main(module, capsys, monkeypatch, tmp_path, *argv)
        assert code == 0, said[-3000:]
        printed.append(said)
    assert servers.main(["postgres", "start", "--dir", str(postgres_server.data)]) == 0  # make db: already running
    printed.append(capsys.readouterr().out)
    if shutil.which("make"):  # make worker's echo; -o: never (re)build the environment, PY=true: run nothing
        made = subprocess.run(["make", "-o", ".venv", "-o", ".venv/.installed", "worker", f"STORAGE={url}",
                               "TRACKING=http://127.0.0.1:1", "PY=true"], cwd=REPO, capture_output=True, text=True,
                              timeout=60)
        assert made.returncode == 0 and "--storage" in made.stdout, made.stdout + made.stderr
        printed.append(made.stdout + made.stderr)
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=postgres_server.port, user=servers.USER, password=secret,
                         dbname="optuna") as con:  # the Optuna side of the store, every row as text
        tables = [r[0] for r in con.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        rows = [str(r[0]) for t in tables for r in con.execute(f'SELECT t::text FROM "{t}" t')]
    assert len(rows) > 10 and "leak" in "".join(rows)
    found = _hits(secret.encode(), tmp_path) + [f"printed {i}" for i, text in enumerate(printed) if secret in text]
    found += [f"optuna row {r[:60]}" for r in rows if secret in r]
    print(f"password hits over the store, artifacts, report and printed output: {len(found)}")
    assert not found, found
    assert "--storage 'postgresql+psycopg://cyclelike:***@" in (tmp_path / "report" / "report.md").read_text()


def test_the_command_tag_pastes_back_as_it_ran(monkeypatch):
    """The command tag joined the arguments with spaces: a path with a space or a quote did not paste back."""
    from study.tracking import provenance

    argv = ["sweep", "--config", "/tmp/my sweeps/it's.toml", "--storage", "postgresql://u:pw@h:5432/db"]
    monkeypatch.setattr(sys, "argv", [str(REPO / "study" / "__main__.py"), *argv])
    command = provenance()["command"]
    assert shlex.split(command) == ["python", "-m", "study", *argv[:-1], "postgresql://u:***@h:5432/db"]


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "/abs", ".hidden"])
def test_a_study_name_that_would_leave_the_store_is_refused(tmp_path, capsys, monkeypatch, name):
    """`name = "../../etc/x"` wrote the study's artifacts outside CYCLELIKE_STORE, with exit 0."""
    config = write_sweep(tmp_path, "named", epochs=1, seeds="[0]", pairing='["fixed"]', threads="1")
    config.write_text(config.read_text().replace('name = "named"', f'name = "{name}"'))
    store = tmp_path / "a" / "b" / "store"
    code, said = run_main("study", capsys, monkeypatch, tmp_path, "sweep", "--config", str(config),
                          "--store", str(store))
    last = said.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: name=") and "folder name" in last, said[-2000:]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["named.toml"]  # nothing created, in or out of the store


def test_an_experiment_name_stays_one_folder_of_the_store(tmp_path, capsys, monkeypatch):
    """`study run --experiment` names an experiment freely: its artifacts stay inside the store whatever it is."""
    store = tmp_path / "a" / "b" / "store"
    code, said = run_main("study", capsys, monkeypatch, tmp_path, "run", "--experiment", "../../escaped", "--store",
                       str(store), "--set", "image_size=16", "--set", "n_images=4", "--set", "n_holdout=0",
                       "--set", "epochs=1", "--set", "base_filters=4", "--set", "d_filters=4", "--set", "threads=1",
                       "--eval-every", "0")
    assert code == 0, said[-3000:]
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and store not in p.parents]
    assert not outside, outside
    assert list((store / "artifacts").glob("*escaped*/*/artifacts/config.json"))
