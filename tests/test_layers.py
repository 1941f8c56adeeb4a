"""The import contracts of pyproject.toml (import-linter): the layers bench > study > analysis > cyclelike, and no
circle between the modules of a package, lazy imports included. `make test` runs lint-imports; this checks that the
contracts hold and that they catch a circle added on purpose."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "study", "analysis", "cyclelike")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(root)},
                          timeout=120)


def copy_of_the_code(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_layers_hold_and_no_package_has_a_circle():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "BROKEN" not in out.stdout


def test_a_lazy_circle_added_on_purpose_is_caught(tmp_path):
    root = copy_of_the_code(tmp_path)
    config = root / "cyclelike" / "config.py"  # execution imports config; config now imports execution back
    config.write_text(config.read_text() + "\n\ndef _circle():\n    from . import execution  # noqa: F401\n")
    out = lint_imports(root)
    assert out.returncode == 1
    circle = out.stdout.split("No cycles are allowed in cyclelike.")[1].split("No cycles")[0]
    assert ".execution -> .config" in circle or ".config -> .execution" in circle


def test_the_model_importing_the_harness_breaks_the_layers(tmp_path):
    root = copy_of_the_code(tmp_path)
    data = root / "cyclelike" / "data.py"
    data.write_text(data.read_text() + "\n\ndef _upward():\n    import study.spec  # noqa: F401\n")
    out = lint_imports(root)
    assert out.returncode == 1 and "cyclelike.data -> study.spec" in out.stdout
