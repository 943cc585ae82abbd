"""umx-tune: train, evaluate and tune Open-Unmix models, tracked in MLflow, searched with Optuna."""

import os

__version__ = "0.1.0"

# MLflow (3.x) sends usage telemetry to its makers' servers, a request each process starts with;
# umx-tune runs offline beside a tracking server it names, so it is off unless asked for
# (MLFLOW_DISABLE_TELEMETRY=false). Set before anything imports mlflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
