"""Checkpoints and file safety: what a checkpoint holds, restricted unpickling, atomic writes, logs."""
