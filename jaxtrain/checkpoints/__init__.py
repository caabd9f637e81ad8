"""Orbax checkpoints of a run: the Checkpointer (train state, data iterator and metadata per
step; partial restore) and its faults (damage decided from the files' evidence, a full
disk, other restore failures)."""
