"""The stores a study talks to: Optuna's storage (optuna), MLflow's (mlflow), and the servers that hold them for
several machines (servers: PostgreSQL, an MLflow tracking server)."""
