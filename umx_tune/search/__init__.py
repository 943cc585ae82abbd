"""Optuna studies over the one umx-tune pipeline: grids and spaces, storage, workers, the MLflow mirror.

Optuna only turns a trial into a TrainConfig (umx_tune.search.plans); everything downstream runs
`run_experiment` on that config, exactly as `umx-tune train` does.
"""
