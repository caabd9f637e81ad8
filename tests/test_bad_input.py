"""Mistakes in a config stop the run at start-up with one clear line, before the work
directory exists: typos, wrong types, impossible values, and parts that do not fit."""

import shutil

import ml_collections
import pytest

from jaxtrain.errors import UserError
from jaxtrain import train
from test_train import tiny_config

def written_as(path, value):
  """A change as a config file would write it: ml_collections type-checks only updates."""
  def change(config):
    tree = config.to_dict()
    *parents, leaf = path.split(".")
    node = tree
    for key in parents:
      node = node[key]
    node[leaf] = value
    return ml_collections.ConfigDict(tree)
  return change


CASES = [
    # (what, change to the tiny config, the message it must give)
    ("typo in a key", lambda c: c.optimizer.update(lrr=0.1),
     r"unknown config key 'optimizer.lrr' \(did you mean 'optimizer.lr'\?\)"),
    ("typo in a duration", lambda c: c.update(total_steps=None, total_step=30),
     r"set one of total_steps, total_epochs, total_examples \('total_step' is set: a typo\?\)"),
    ("key of another schedule", lambda c: c.schedule.update(end_factor=0.1, name="constant"),
     r"unknown config key 'schedule.end_factor'; nothing reads it with these settings"),
    ("two units for one duration", lambda c: c.update(total_epochs=3),
     r"set only one of total_steps, total_epochs"),
    ("lr as a string", written_as("optimizer.lr", "0.1"),
     r"config key 'optimizer.lr' must be float, got '0.1'"),
    ("keep as a string", written_as("checkpoint.keep", "2"),
     r"config key 'checkpoint.keep' must be int, got '2'"),
    ("keep zero", lambda c: c.checkpoint.update(keep=0),
     r"config key 'checkpoint.keep' must be at least 1, got 0"),
    ("negative seed", lambda c: c.update(seed=-1),
     r"config key 'seed' must be at least 0, got -1"),
    ("negative learning rate", lambda c: c.optimizer.update(lr=-0.1),
     r"config key 'optimizer.lr' must be at least 0, got -0.1"),
    ("fractional seed", written_as("seed", 1.5),
     r"config key 'seed' must be int, got 1.5"),
    ("cache as a string", written_as("input.data.cache", "no"),
     r"config key 'input.data.cache' must be bool, got 'no'"),
    ("negative clipping", lambda c: c.optimizer.update(grad_clip_norm=-1.0),
     r"config key 'optimizer.grad_clip_norm' must be positive, got -1.0"),
    ("unknown dataset", lambda c: c.input.data.update(name="digitz"),
     r"unknown dataset 'digitz'"),
    ("unknown split", lambda c: c.evals.val.data.update(split="validation"),
     r"dataset 'digits' in .* has no split 'validation'; its splits are train, test"),
    ("unknown model", lambda c: c.model.update(name="resnet"),
     r"unknown model 'resnet'; known: cnn, gemma3, llama, mistral, mlp, qwen2, qwen3"),
    ("unknown optimizer", lambda c: c.optimizer.update(name="adamm"),
     r"unknown optimizer 'adamm' \(did you mean 'adam'\?\)"),
    ("unknown schedule", lambda c: c.schedule.update(name="cosin"),
     r"unknown schedule 'cosin' \(did you mean 'cosine'\?\)"),
    ("unknown evaluator", lambda c: c.evals.val.update(type="clasification"),
     r"unknown evaluator 'clasification' \(did you mean 'classification'\?\)"),
    ("unknown op", lambda c: c.input.update(pp="value_rang(-1, 1)"),
     r"unknown preprocessing op 'value_rang' \(did you mean 'value_range'\?\)"),
    ("op on a missing feature", lambda c: c.input.update(pp="value_range(-1, 1)|keep('image', 'lables')"),
     r"input.pp: op 'keep\('image', 'lables'\)' failed on a batch with keys image, label: KeyError"),
    ("labels outside onehot", lambda c: c.input.update(pp="value_range(-1, 1)|onehot(5, key='label', "
                                                          "key_result='labels')|keep('image', 'labels')"),
     r"input.pp: op 'onehot\(5, .*' failed .* outside onehot\(5\)"),
    ("no labels for the loss", lambda c: c.input.update(pp="value_range(-1, 1)|keep('image', 'label')"),
     r"input.pp must leave 'labels' \(the labels \(task.labels\)\) in the batch; it has image, label$"),
    ("no image for the model", lambda c: c.input.update(pp="onehot(10, key='label', key_result='labels')|"
                                                           "keep('labels')"),
     r"input.pp must leave 'image' \(the model's input \(task.inputs\)\) in the batch; it has labels$"),
    ("classes and labels disagree", lambda c: c.model.update(num_classes=5),
     r"compiling the train step \(input.pp, model, task, loss, optimizer\) failed: .*(\(32, 5\).*\(32, 10\)|"
     r"\(32, 10\).*\(32, 5\)).* \(at .*\.py:\d+\)"),
    ("eval preprocessing broken", lambda c: c.evals.val.update(pp="value_range(-1, 1)|keep('image')"),
     r"evals.val.pp must leave 'labels' .* it has image$"),
    ("lr as a section", written_as("optimizer.lr", {"value": 0.1}),
     r"config key 'optimizer.lr' must be float, got a section"),
    ("optimizer argument of the wrong type", written_as("optimizer", {"name": "sgd", "lr": 0.1, "nesterov": "no",
                                                                     "momentum": 0.9}),
     r"config key 'optimizer.nesterov' must be bool, got 'no'"),
    ("model argument of the wrong type", written_as("model.dropout", "0.1"),
     r"config key 'model.dropout' must be float, got '0.1'"),
    ("total a section", written_as("total_steps", {"a": 1}),
     r"config key 'total_steps' must be a positive number, got a section with keys a"),
    ("batch not divisible", lambda c: c.input.update(batch_size=0),
     r"input.batch_size=0 cannot be split evenly over 1 devices; use a positive multiple of 1"),
    ("batch larger than the data", lambda c: c.input.update(batch_size=4096),
     r"input.batch_size=4096 is larger than the 1438 training examples"),
    ("warmup longer than training", lambda c: c.schedule.update(warmup_steps=30),
     r"the warmup \(30 steps\) must be shorter than training \(30 steps\)"),
    ("unknown best metric", lambda c: c.checkpoint.update(keep_best=1, best_metric="val/acuracy"),
     r"checkpoint.best_metric='val/acuracy' is not a metric of this run \(did you mean 'val/accuracy'\?\); "
     r"it has train/accuracy, train/loss, val/accuracy, val/loss, val/num_examples"),
    ("unknown best mode", lambda c: c.checkpoint.update(keep_best=1, best_metric="val/loss", best_mode="lowest"),
     r"checkpoint.best_mode must be 'max' or 'min', got 'lowest'"),
    ("schedule not a section", written_as("schedule", "cosine"),
     r"config key 'schedule' must be a section \(a dict of keys\), got 'cosine'"),
    ("unknown dtype", lambda c: c.model.update(dtype="bfloat17"),
     r"config key 'model.dtype' must name a float dtype such as 'float32' or 'bfloat16' \(mixed precision\), "
     r"got 'bfloat17'"),
    ("integer dtype", lambda c: c.model.update(dtype="int8"), r"config key 'model.dtype' must name a float dtype"),
    ("unknown strategy", lambda c: c.parallel.update(strategy="pmapp"),
     r"parallel.strategy must be 'jit' or 'pmap', got 'pmapp'"),
    ("two mesh axes take the rest", lambda c: c.parallel.mesh.update(fsdp=-1),
     r"parallel.mesh has -1 on data and fsdp; at most one axis may take the rest of the devices, "
     r"e.g. --config.parallel.mesh.data=1 --config.parallel.mesh.fsdp=-1"),
    ("mesh of more devices than there are", lambda c: c.parallel.mesh.update(data=2),
     r"parallel.mesh \(data=2, fsdp=1, tensor=1\) needs 2 devices; there are 1: make the sizes multiply to 1, "
     r"or set one to -1"),
    ("mesh size zero", lambda c: c.parallel.mesh.update(tensor=0),
     r"parallel.mesh sizes must be positive, or -1 for the rest of the devices; got \(data=-1, fsdp=1, tensor=0\)"),
    ("mesh axis typo", written_as("parallel.mesh.fsdb", 2),
     r"unknown config key 'parallel.mesh.fsdb' \(did you mean 'parallel.mesh.fsdp'\?\)"),
    ("rule on an unknown axis", lambda c: c.parallel.update(rules=(("Dense_0/kernel", (None, "model")),)),
     r"parallel.rules\[0\] names axis 'model'; the mesh axes are data, fsdp, tensor"),
    ("rule that matches nothing", lambda c: c.parallel.update(rules=(("Dense_9/kernel", (None, "tensor")),)),
     r"parallel.rules\[0\] pattern 'Dense_9/kernel' matches no array of the train state \(paths look like "
     r"'params/Dense_0/bias'\); fix the pattern or drop the rule"),
    ("rule with more axes than dimensions", lambda c: c.parallel.update(rules=(("Dense_0/bias", (None, "tensor")),)),
     r"parallel.rules\[0\] gives 2 axes to params/Dense_0/bias, which has 1 dimensions \(32,\)"),
    ("rule with an axis twice", lambda c: c.parallel.update(rules=(("Dense_0/kernel", ("tensor", "tensor")),)),
     r"parallel.rules\[0\] uses a mesh axis twice in \('tensor', 'tensor'\); an axis can split only one dimension"),
    ("rule not a pair", lambda c: c.parallel.update(rules=("Dense_0/kernel",)),
     r"parallel.rules\[0\] must be \(regex, spec\) with spec a tuple like \(None, 'tensor'\), got 'Dense_0/kernel'"),
    ("accumulation the batch cannot split", lambda c: c.parallel.update(accumulate_steps=3),
     r"input.batch_size=32 cannot be split evenly over 1 devices x 3 microbatches; use a positive multiple of 3"),
    ("pmap with rules", lambda c: c.parallel.update(strategy="pmap", rules=(("Dense_0/kernel", (None, "tensor")),)),
     r"parallel.strategy='pmap' replicates the state on every device: it takes no parallel.mesh.fsdp, "
     r"parallel.mesh.tensor or parallel.rules; use strategy 'jit' for those"),
    ("no accumulation steps", lambda c: c.parallel.update(accumulate_steps=0),
     r"config key 'parallel.accumulate_steps' must be at least 1, got 0"),
]


def snapshot(workdir):
  return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tfds_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("finished") / "run"
  train.run(tiny_config(), str(workdir))
  return workdir


@pytest.mark.parametrize("what, change, message", CASES, ids=[case[0] for case in CASES])
def test_bad_config_fails_at_start_up_naming_the_problem(tfds_dir, tmp_path, what, change, message):
  del what
  config = tiny_config()
  config = change(config) or config
  workdir = tmp_path / "run"
  with pytest.raises(UserError, match=message):
    train.run(config, str(workdir))
  assert not workdir.exists()


@pytest.mark.parametrize("what, change, message", CASES, ids=[case[0] for case in CASES])
def test_bad_config_changes_nothing_in_an_existing_workdir(finished_run, tmp_path, what, change, message):
  del what
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  before = snapshot(workdir)
  config = tiny_config()
  config = change(config) or config
  with pytest.raises(UserError, match=message):
    train.run(config, str(workdir))
  assert snapshot(workdir) == before


def test_a_workdir_that_cannot_be_created_is_named(tfds_dir):
  with pytest.raises(UserError, match=r"cannot create --workdir=/proc/jaxtrain/run: .*; pick a writable directory"):
    train.run(tiny_config(), "/proc/jaxtrain/run")  # Even root cannot make directories in /proc.


def test_resuming_with_fewer_total_steps_than_the_checkpoint_is_refused(tfds_dir, tmp_path):
  workdir = tmp_path / "run"
  train.run(tiny_config(total_steps=20), str(workdir))
  with pytest.raises(UserError, match=r"the newest checkpoint in .* is at step 20, past the 10 steps this "
                                      r"config trains for; raise the total or use a new --workdir"):
    train.run(tiny_config(total_steps=10), str(workdir))


def test_resuming_with_a_model_that_does_not_fit_the_checkpoint_changes_nothing(tfds_dir, tmp_path):
  workdir = tmp_path / "run"
  train.run(tiny_config(total_steps=10), str(workdir))
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  config = tiny_config(total_steps=20)
  config.model.hidden = (16,)
  with pytest.raises(UserError, match=r"checkpoint .*/checkpoints/10 does not fit this run's model or optimizer "
                                      r"\(params/Dense_0/bias: saved float32\[32\], expected float32\[16\]; "
                                      r"params/Dense_0/kernel: saved float32\[64,32\], expected float32\[64,16\]; "
                                      r".*\); resume with the config it was saved with, "
                                      r"or use a new --workdir"):
    train.run(config, str(workdir))
  assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before
