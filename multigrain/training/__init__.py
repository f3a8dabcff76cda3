"""The training run's infrastructure: processes, seeding, its state and recipe, stopping on a signal."""
