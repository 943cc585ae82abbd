"""umx-tune: train, evaluate and tune Open-Unmix models, tracked in MLflow, searched with Optuna."""

__version__ = "0.1.0"
