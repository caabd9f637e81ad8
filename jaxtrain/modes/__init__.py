"""The modes of `jaxtrain.launch` other than training: `--mode=eval` (evaluate), `dry_run`
and `lr_find`. Each builds what it needs through `jaxtrain.training.build`, never through
the training loop."""
