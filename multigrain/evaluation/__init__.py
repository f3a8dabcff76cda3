"""The evaluation benchmarks: retrieval datasets and metrics (Holidays, UKBench, Copydays, revisitop), DISC21."""
