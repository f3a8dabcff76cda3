"""Tools around the recipe: they are not part of it (synthetic data for the demo, the tests and the benchmarks)."""
