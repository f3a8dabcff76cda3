"""The training run's infrastructure: processes, seeding, stopping on a signal."""
