"""The work directory and everything that writes it: its layout (checkpoints/, config.json,
the tokenizer files, "step N of this run"), where it lives (local disk or gs://), the lock
that keeps one live run in it, preemption and lost peers, and the metrics writers and
trackers."""
