"""Training: the loop (pure PyTorch, no MLflow) and its checkpoints."""
