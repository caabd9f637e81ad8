"""--mode=eval: the configured evaluators on a saved checkpoint, without training."""

import pytest

from jaxtrain.errors import UserError
from jaxtrain.modes import evaluate
from jaxtrain import train
from test_train import read_rows, tiny_config


def test_evaluating_a_checkpoint_matches_the_evaluation_made_while_training(tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train.run(tiny_config(), workdir)
  during = {r["step"]: r for r in read_rows(workdir) if "val/accuracy" in r}
  before = (tmp_path / "run" / "checkpoints").stat().st_mtime

  newest = evaluate.run(tiny_config(), workdir)
  at_ten = evaluate.run(tiny_config(), workdir, step=10)

  assert newest == {k: v for k, v in during[30].items() if k != "step"}
  assert at_ten == {k: v for k, v in during[10].items() if k != "step"}
  rows = read_rows(workdir)
  assert rows[-2:] == [during[30], during[10]]  # Appended at the checkpoints' steps.
  assert (tmp_path / "run" / "checkpoints").stat().st_mtime == before

def test_evaluating_a_missing_step_lists_the_saved_ones(tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train.run(tiny_config(), workdir)
  with pytest.raises(UserError, match=r"has no checkpoint at step 15; it has 10, 20, 30"):
    evaluate.run(tiny_config(), workdir, step=15)

def test_evaluating_a_directory_without_checkpoints_says_so(tfds_dir, tmp_path):
  with pytest.raises(UserError, match=r"has no checkpoints to evaluate"):
    evaluate.run(tiny_config(), str(tmp_path / "nothing"))
  assert not (tmp_path / "nothing").exists()
