"""MLflow at the edge: a run logger that batches its writes, and what each run records of how it was made.
The store itself (where it is, preparing it, one experiment per study) is study.stores.mlflow.

One sqlite write costs several milliseconds, so metrics are buffered and sent with `log_batch`: a
trial's per-epoch losses cost one call per evaluation instead of one per value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from analysis.store import PROJECT, first_line, mask_secrets, sqlite_path, tracking_uri

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
# MLflow's image card lists every param of the run above its picture, so a run's params are only the keys its study
# varies, N and the seed; every RunConfig field (and the budget) is the one JSON tag `config` and config.json, and
# analysis.runs reads the tag back as params
SHOWN_PARAMS = ("n_images", "seed")
CONFIG_TAG = "config"
# run-level values (intervals, chance levels, p-values, timings) are `summary.<key>`: the run's overview shows the
# handful a reader looks for first as tags, and every one of them is in the JSON tag `summaries`
SUMMARY_PREFIX = "summary."
SUMMARIES_TAG = "summaries"
HEADLINE_SUMMARIES = ("pair/forward_top1_ci_low", "pair/forward_top1_ci_high", "pair/forward_top1_pvalue",
                      "pair/epochs_to_90", "pair/locked_epoch", "stop/epoch", "time/trial_s")
PREVIEW_PX = 1024  # the longest side of an image card's preview: a strip of 80 images is scaled down to it


def provenance() -> dict[str, str]:
    """What a report needs to say how to reproduce the runs: the command, the commit, the versions."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    # quoted to paste as it is, and with a password in a --storage or server URL masked
    argv = ["python", "-m", "study", *sys.argv[1:]] if sys.argv[0].endswith("__main__.py") else sys.argv
    tags = {"command": shlex.join(mask_secrets(a) for a in argv),
            "mlflow.source.git.commit": git("rev-parse", "HEAD") or "unknown",
            "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no"))),
            "python": platform.python_version(), "machine": f"{platform.machine()} {os.cpu_count()} cores"}
    for package in ("torch", "torchvision", "mlflow", "optuna", "numpy", "scipy", "pandas", "seaborn"):
        try:
            tags[f"version.{package}"] = version(package)
        except PackageNotFoundError:
            pass
    return tags


def reproduce_command(run_id: str) -> str:
    """The command that retrains a run, as it runs from any folder and whether or not the virtual environment is
    active: this environment's python by its absolute path (a bare `python` outside it has no torch), and the
    store where it is not the project's own."""
    python = str(Path(sys.executable).absolute())  # not resolved: the venv's python is a link to the base one
    command = [python, "-m", "study", "run", "--from", run_id]
    uri = tracking_uri()
    db = sqlite_path(uri)
    if db is not None and db.name == "mlflow.db":
        if db.parent != PROJECT / "mlruns":
            command += ["--store", str(db.parent)]
        return shlex.join(command)
    # a tracking server or another database (a password in its URL stays out of the tag)
    return f"MLFLOW_TRACKING_URI={shlex.quote(mask_secrets(uri))} {shlex.join(command)}"


def _clean(value: float) -> float:
    return float(value) if value == value else float("nan")


class RunLogger:
    """One MLflow run, written through the client (no global active run, so several can coexist)."""

    def __init__(self, client: MlflowClient, run_id: str, flush_seconds: float = 10.0, shown: tuple[str, ...] = ()):
        self.client, self.run_id = client, run_id
        self.shown = tuple(dict.fromkeys([*shown, *SHOWN_PARAMS]))  # the config keys logged as params
        self.flush_seconds = flush_seconds
        self._metrics: list[Metric] = []
        self.pending_tags: dict[str, Any] = {}  # sent with the closing batch
        self._last_flush = time.monotonic()
        self.log_seconds = 0.0  # time spent in MLflow calls: the logging overhead, measured
        self.logged: set[tuple[str, int]] = set()  # (key, step) a resumed run holds already (skip_logged)

    @classmethod
    def start(cls, client: MlflowClient, experiment_id: str, run_name: str, tags: dict[str, str] | None = None,
              parent_run_id: str | None = None, shown: tuple[str, ...] = ()) -> RunLogger:
        """`shown`: the config keys that are params besides N and the seed (a study's varied keys)."""
        tags = {k: str(v) for k, v in (tags or {}).items()}  # a tracking server takes strings only
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        return cls(client, run.info.run_id, shown=shown)

    def _timed(self, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.log_seconds += time.perf_counter() - t0

    def log_metrics(self, values: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._metrics += [Metric(k, _clean(v), now, step) for k, v in values.items()
                          if v is not None and (k, step) not in self.logged]
        if time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def skip_logged(self) -> None:
        """A run that goes on after a kill holds the steps its killed attempt logged, up to the kill (past its
        checkpoint too, as during an outage): those are not logged again, so each metric and picture series holds
        one value per step."""
        for key in self.client.get_run(self.run_id).data.metrics:
            self.logged.update((key, m.step) for m in self.client.get_metric_history(self.run_id, key))
        with contextlib.suppress(Exception):  # a run without pictures yet
            for f in self.client.list_artifacts(self.run_id, "images"):
                key, _, rest = Path(f.path).name.partition("+step+")
                if rest.split("+")[0].isdigit():
                    self.logged.add((key.replace("~", "/"), int(rest.split("+")[0])))

    def flush(self) -> None:
        while self._metrics:
            batch, self._metrics = self._metrics[:MAX_BATCH], self._metrics[MAX_BATCH:]
            self._timed(self.client.log_batch, self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def log_config(self, values: dict[str, Any]) -> None:
        """The run's settings: the shown keys as params, all of them as the `config` tag (see SHOWN_PARAMS)."""
        params = [Param(k, str(values[k])) for k in self.shown if k in values]
        config = RunTag(CONFIG_TAG, json.dumps({k: str(v) for k, v in values.items()}, separators=(",", ":")))
        self._timed(self.client.log_batch, self.run_id, params=params, tags=[config])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._timed(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_image(self, picture, key: str, step: int) -> None:
        """A picture (PIL) as a step of an image series: the run page's image card shows them with a slider. Written
        under the names MLflow's log_image gives (which the UI reads), but with a preview the card can show:
        MLflow's is scaled to 256 px, where a strip of ten 32 px images is a stamp. Ours is the picture itself
        (cyclelike.samples.labelled made it at least 512 px wide) at the top of a white square: the card fits a
        square preview to its own square, where a wider one runs out of it, so a small card shows the whole strip
        and its full-screen view shows it about as large as the picture is. One upload for both files."""
        from PIL import Image

        from cyclelike.samples import PNG_OPTIONS

        if (key, step) in self.logged:
            return
        name = f"{key.replace('/', '~')}+step+{step}+timestamp+{int(time.time() * 1000)}+{uuid.uuid4()}"
        side = max(picture.size)
        preview = Image.new("RGB", (side, side), "white")
        preview.paste(picture, (0, 0))
        if side > PREVIEW_PX:
            preview = preview.resize((PREVIEW_PX, PREVIEW_PX), Image.Resampling.LANCZOS)
        with tempfile.TemporaryDirectory() as tmp:
            picture.save(Path(tmp) / f"{name}.png", **PNG_OPTIONS)
            preview.save(Path(tmp) / f"{name}+compressed.webp", lossless=True, method=0)  # exact pixels, quickly
            self._timed(self.client.log_artifacts, self.run_id, tmp, "images")
        self._timed(self.client.set_tag, self.run_id, "mlflow.loggedImages", True)  # the run page's image card

    def log_inputs(self, inputs: list) -> None:
        """Dataset inputs (see dataset_inputs) on this run: the run page lists them, and two runs on the same
        images show the same digest."""
        try:
            self._timed(self.client.log_inputs, self.run_id, inputs)
        except Exception:
            # two workers logging the same images at once race on MLflow's unique (experiment, name, digest)
            # row; the loser's second try finds the winner's row and links it to this run
            time.sleep(0.2)
            self._timed(self.client.log_inputs, self.run_id, inputs)

    def log_dir(self, folder: str | Path) -> None:
        self._timed(self.client.log_artifacts, self.run_id, str(folder))

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._timed(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def delete_artifacts(self, path: str) -> None:
        """Remove a folder of the run's artifacts (a finished trial's checkpoint), where the store allows it."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            uri = self.client.get_run(self.run_id).info.artifact_uri
            self._timed(get_artifact_repository(uri).delete_artifacts, path)
        except Exception as err:  # a store without deletion keeps the file: said, never fatal
            logging.getLogger(__name__).warning("run %s: %s/ not deleted: %s", self.run_id, path, first_line(err))

    def log_text(self, text: str, name: str) -> None:
        self._timed(self.client.log_text, self.run_id, text, name)

    def log_dict(self, values: dict, name: str) -> None:
        self.log_text(json.dumps(values, indent=2, default=str), name)

    def seal(self, tags: dict[str, Any] | None = None) -> None:
        """Every buffered metric in the order it was logged, then the closing tags (the pending ones and `tags`)
        with the last batch: a run that holds its closing tags holds every metric logged before them."""
        tags = _headline_summaries({**self.pending_tags, **(tags or {})})
        cut = max(0, len(self._metrics) - max(0, MAX_BATCH - len(tags)))  # 1000 values of any kind per batch
        self._metrics, last = self._metrics[:cut], self._metrics[cut:]
        self.flush()
        self._timed(self.client.log_batch, self.run_id, metrics=last,
                    tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.pending_tags = {}

    def finish(self, status: str = "FINISHED", tags: dict[str, Any] | None = None) -> None:
        """Seal and close with FINISHED, FAILED or KILLED; never leaves the run RUNNING."""
        try:
            self.seal(tags)
        finally:
            self._timed(self.client.set_terminated, self.run_id, status)


def _headline_summaries(tags: dict[str, Any]) -> dict[str, Any]:
    """The `summary.<key>` tags as one JSON tag `summaries`, and as tags of their own only the headline ones."""
    values = {k.removeprefix(SUMMARY_PREFIX): str(v) for k, v in tags.items() if k.startswith(SUMMARY_PREFIX)}
    if not values:
        return tags
    kept = {k: v for k, v in tags.items()
            if not k.startswith(SUMMARY_PREFIX) or k.removeprefix(SUMMARY_PREFIX) in HEADLINE_SUMMARIES}
    return {**kept, SUMMARIES_TAG: json.dumps(values, separators=(",", ":"))}


def dataset_inputs(tables: dict, source: str | None) -> list:
    """Image tables (names and content hashes) as MLflow dataset inputs, one per context (training,
    evaluation). No source: this code made the images."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for context, (table, name) in tables.items():
        if table.empty:
            continue
        with warnings.catch_warnings():  # MLflow's schema hints about integer columns are for model inputs
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(table, source=source, name=name)
            entity = dataset._to_mlflow_entity()  # the schema and the digest are computed here
        inputs.append(DatasetInput(entity, [InputTag(key="mlflow.data.context", value=context)]))
    return inputs


SHORT_NAMES = {"n_images": "N", "lambda_cyc": "cyc", "lambda_l1": "l1", "lambda_adv": "adv", "lambda_id": "id",
               "base_filters": "w", "image_size": "px", "batch_size": "bs"}


NAME_ORDER = ("pairing", "direction_schedule", "scheme", "arch")


def name_order(key: str) -> tuple[int, str]:
    return (NAME_ORDER.index(key) if key in NAME_ORDER else len(NAME_ORDER), key)


def run_name(spec, params: dict[str, Any], seed: int | str) -> str:
    """What the MLflow UI lists: N and the seed first, so that they survive the UI's truncation of long names,
    then the rest of the condition, e.g. N10-s0-fixed-unet-cyc1."""
    keys = [k for k in NAME_ORDER if k in params] + sorted(k for k in params if k not in NAME_ORDER)
    parts = []
    for k in keys:
        v = params[k]
        text = f"{v:g}" if isinstance(v, float) else str(v)
        parts.append(text if isinstance(v, str) else f"{SHORT_NAMES.get(k, k)}{text}")
    lead = [p for p in parts if p.startswith("N") and p[1:].isdigit()]
    return "-".join([*lead, f"s{seed}", *[p for p in parts if p not in lead]] or [spec.name])


def shown_params(spec) -> tuple[str, ...]:
    """The config keys a trial's run shows as params: what its study varies (a budget per image varies epochs)."""
    varied = sorted(spec.space, key=name_order)
    return (*varied, *(("epochs",) if spec.epochs_per_image else ()))
