"""Training: the epoch loop, stages, the fold trainer and the cross-validated run."""
