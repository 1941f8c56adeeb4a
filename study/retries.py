"""What a killed trial leaves and how it runs again: it did not fail, it was stopped, so its run is closed as
KILLED and its condition and seed are queued again, to go on from its checkpoint in the same MLflow run.

Both the ledger (recovering a dead owner's trial) and Optuna's storage (failing a trial whose heartbeats
stopped, study.stores.optuna) kill trials; this module sits below both so that neither imports the other.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from analysis.store import tracking_uri

KILLED_STALE = "killed: its worker stopped sending heartbeats"


def is_killed(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and "killed" in str(trial.user_attrs.get("failure", ""))


def not_rerun(trials: list[FrozenTrial], killed: list[int]) -> list[int]:
    """Of the killed trials `killed`, those whose condition and seed no retry has finished (COMPLETE or
    PRUNED). A retry names the trial it repeats (retry_of) and may itself be killed and retried."""
    retries: dict[int, list[FrozenTrial]] = {}
    for t in trials:
        if "retry_of" in t.user_attrs:
            retries.setdefault(t.user_attrs["retry_of"], []).append(t)

    def finished(number: int) -> bool:
        return any(r.state in (TrialState.COMPLETE, TrialState.PRUNED) or finished(r.number)
                   for r in retries.get(number, []))

    return [n for n in killed if not finished(n)]


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a killed trial's condition and seed again. A trial killed before it asked for its params has none
    yet: its cell is in the params it was queued with."""
    if "config_key" in trial.user_attrs:
        cell = {k: trial.user_attrs[k] for k in ("seed", "config_key", "fixed_key") if k in trial.user_attrs}
        study.enqueue_trial(trial.params or trial.system_attrs.get("fixed_params", {}),
                            user_attrs=cell | resumes(trial))


def resumes(trial: FrozenTrial) -> dict[str, Any]:
    """What a retry of a killed trial goes on from: its MLflow run, which holds the last checkpoint."""
    attrs = {"retry_of": trial.number}
    if "mlflow_run_id" in trial.user_attrs:
        attrs["resume_run"] = trial.user_attrs["mlflow_run_id"]
    return attrs


def close_run(client, run_id: str, state: str, failure: str | None) -> None:
    if failure:
        client.set_tag(run_id, "failure", failure)
    client.set_tag(run_id, "optuna.state", state)
    status = {"COMPLETE": "FINISHED", "FAIL": "FAILED"}.get(state, "KILLED")
    client.set_terminated(run_id, "KILLED" if "killed" in (failure or "") else status)


def killed(study: optuna.Study, trial) -> None:
    """Optuna's callback for a trial it failed on a missed heartbeat: close its run, queue it again."""
    from mlflow.tracking import MlflowClient

    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        close_run(MlflowClient(tracking_uri()), run_id, "FAIL", KILLED_STALE)
    requeue(study, trial)
