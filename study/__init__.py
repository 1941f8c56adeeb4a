import os

# MLflow 3 fetches a telemetry config at import and then queues a usage record for each tracked call: a study
# harness runs offline and shares nothing unasked (MLFLOW_DISABLE_TELEMETRY=false turns it back on)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
