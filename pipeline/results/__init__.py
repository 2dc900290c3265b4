"""Results: metrics, statistics, TensorBoard tracking and the run's report."""
