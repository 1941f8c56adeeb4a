"""What a researcher meets in the MLflow UI: the classic ML view, the strip slider opening on the untrained
map, and `make report` choosing the study, not the experiment of single runs."""

import mlflow
from conftest import store_in
from mlflow.tracking import MlflowClient
from PIL import Image

from analysis.runs import most_recent_study
from cyclelike.config import RunConfig
from study.stores.mlflow import ensure_experiment, prepare_store
from study.tracking import RunLogger
from study.trial import run_trials


def test_experiments_open_in_the_classic_ml_view(tmp_path):
    with store_in(tmp_path) as uri:
        client = prepare_store(uri)
        fresh = client.get_experiment(ensure_experiment(client, "fresh"))
        older = client.create_experiment("older")  # made before the harness set a kind
        ensure_experiment(client, "older")
        assert fresh.tags["mlflow.experimentKind"] == "custom_model_development"
        assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"


def test_report_picks_the_latest_study_not_the_single_runs(tmp_path):
    with store_in(tmp_path) as uri:
        client = prepare_store(uri)
        ensure_experiment(client, "default")
        ensure_experiment(client, "runs", role="runs")  # make run, after make sweep
        assert most_recent_study(client) == "default"


def test_the_strip_slider_starts_at_the_untrained_map(tmp_path):
    config = RunConfig(image_size=16, n_images=4, n_holdout=0, batch_size=2, base_filters=4, d_filters=4, epochs=4,
                       threads=1)
    with store_in(tmp_path) as uri:
        client = prepare_store(uri)
        logger = RunLogger.start(client, ensure_experiment(client, "strip"), "strip-run")
        run_trials([config], [logger], eval_every=2, progress=False)
        logger.finish()
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        steps = sorted(m.step for m in client.get_metric_history(logger.run_id, "pair/forward_top1"))
        images = [f.path for f in client.list_artifacts(logger.run_id, "images")]
        first = next(p for p in images if "pairing~strip+step+0+" in p and p.endswith(".png"))
        width = Image.open(client.download_artifacts(logger.run_id, first, str(tmp_path))).width
        preview = Image.open(client.download_artifacts(logger.run_id, first[:-4] + "+compressed.webp", str(tmp_path)))
    assert width >= 512  # four 16 px images: full screen shows the logged image at its own size
    # the image card shows the preview, not the picture: MLflow's own is 256 px, where the strip is a stamp; a
    # square one fits the card's square (a wider one runs out of it)
    assert preview.width == preview.height >= width
    assert client.get_run(logger.run_id).data.tags["mlflow.loggedImages"] == "True"  # the slider's card
    assert steps == [0, 2, 4]
    strips = sorted(int(p.split("+step+")[1].split("+")[0]) for p in images
                    if "pairing~strip" in p and p.endswith(".png"))
    assert strips == [0, 2, 4]


def test_a_runs_unchanged_tag_is_written_once_and_its_sqlite_store_syncs_at_checkpoints(tmp_path):
    """MLflow's log_image sets mlflow.loggedImages=True with every picture: one write is enough. The store
    is in WAL mode, where syncing at checkpoints (synchronous=NORMAL) survives a killed process."""
    with store_in(tmp_path) as uri:
        client = prepare_store(uri)
        logger = RunLogger.start(client, ensure_experiment(client, "tags"), "tags-run")
        store = client._tracking_client.store
        writes, real = [], store.set_tag
        store.set_tag = lambda run_id, tag: (writes.append((tag.key, tag.value)), real(run_id, tag))[1]
        for _ in range(3):
            client.set_tag(logger.run_id, "mlflow.loggedImages", True)
        client.set_tag(logger.run_id, "mlflow.loggedImages", False)
        with store.engine.connect() as connection:
            synchronous = connection.exec_driver_sql("PRAGMA synchronous").scalar()
    assert writes == [("mlflow.loggedImages", "True"), ("mlflow.loggedImages", "False")]
    assert synchronous == 1  # NORMAL
