"""Reports of runs read back from MLflow: tables, plots, the study's description and the run summary."""
