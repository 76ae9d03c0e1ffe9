"""Training: losses, objectives, the training engine, data pruning."""
