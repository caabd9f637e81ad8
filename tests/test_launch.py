"""The command line as a user runs it: `python -m jaxtrain.launch --config=... --workdir=...`."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

DIGITS = os.path.join(ROOT, "experiments", "digits.py")
QUICK = ["--config.total_epochs=2", "--config.log_every_steps=11", "--config.schedule.warmup_epochs=1",
         "--config.evals.val.every_epochs=1", "--config.checkpoint.every_epochs=1"]


def launch(*args):
  return subprocess.run([sys.executable, "-m", "jaxtrain.launch", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, check=False)


def test_digits_runs_from_the_command_line(tfds_dir, tmp_path):
  workdir = tmp_path / "run"
  result = launch(f"--config={DIGITS}:mlp", f"--workdir={workdir}", *QUICK)
  assert result.returncode == 0, result.stderr[-3000:]
  log = result.stderr
  # One progress line per log interval, and one line per evaluation.
  assert re.search(r"step 11/22 \(50\.0%\) \| loss \d+\.\d{4} \| lr [\d.e-]+ \| [\d.]+ steps/s \| "
                   r"[\d.]+k? examples/s \| ETA \d+:\d\d:\d\d", log), log[-3000:]
  assert re.search(r"val: accuracy 0\.\d{4} \| loss \d+\.\d{4} \| num_examples 359", log)
  assert "orbax" not in log  # Library INFO chatter is hidden by default.
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["name"] == "mlp" and config["total_epochs"] == 2
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == [11, 22]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["11", "22"]

  evaluated = launch(f"--config={DIGITS}:mlp", f"--workdir={workdir}", *QUICK, "--mode=eval", "--step=11")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  val_at_11 = [r for r in rows if r["step"] == 11 and "val/accuracy" in r][0]
  assert f"val: accuracy {val_at_11['val/accuracy']:.4f}" in evaluated.stderr


def test_the_command_line_can_switch_duration_units_and_the_data_directory(tmp_path):
  workdir, data_dir = tmp_path / "run", tmp_path / "data"
  result = launch(f"--config={DIGITS}:mlp", f"--workdir={workdir}", f"--config.input.data.data_dir={data_dir}",
                  "--config.total_epochs=0", "--config.total_steps=12", "--config.log_every_steps=6",
                  "--config.schedule.warmup_epochs=0.5", "--config.evals.val.every_epochs=0",
                  "--config.evals.val.every_steps=6", "--config.checkpoint.every_epochs=0",
                  "--config.checkpoint.every_steps=12")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r.get("val/num_examples")) for r in rows] == [(6, None), (6, 359), (12, None), (12, 359)]
  # Training and evaluation both read (and built) digits in the given directory, not in $TFDS_DATA_DIR.
  assert (data_dir / "digits" / "1.0.0" / "dataset_info.json").exists()
  assert "Preparing dataset digits" in result.stderr and result.stderr.count("Preparing dataset") == 1


def test_a_mistyped_key_in_a_config_file_is_one_line_and_touches_nothing(tfds_dir, tmp_path):
  config = tmp_path / "typo.py"
  config.write_text(f"import importlib.util\n"
                    f"spec = importlib.util.spec_from_file_location('digits', {DIGITS!r})\n"
                    f"digits = importlib.util.module_from_spec(spec)\n"
                    f"spec.loader.exec_module(digits)\n"
                    f"def get_config():\n"
                    f"  c = digits.get_config()\n"
                    f"  c.optimizer.lrr = 0.1\n"
                    f"  return c\n")
  workdir = tmp_path / "run"
  result = launch(f"--config={config}", f"--workdir={workdir}")
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == ["error: unknown config key 'optimizer.lrr' (did you mean 'optimizer.lr'?); "
                    "optimizer 'adamw' takes b1, b2, eps, freeze, grad_clip_norm, lr, lr_mults, name, wd_mults, weight_decay"]
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


def errors_of(result):
  return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_an_override_of_a_key_the_config_lacks_is_one_line(tfds_dir, tmp_path):
  result = launch(f"--config={DIGITS}", f"--workdir={tmp_path / 'run'}", "--config.optimizer.lrr=0.1")
  assert result.returncode == 2
  assert errors_of(result) == ["error: --config.optimizer.lrr: the config has no key 'lrr' (did you mean 'lr'?); "
                               "overrides can only change keys the config file sets"]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()


def test_an_override_of_the_wrong_type_is_one_line(tfds_dir, tmp_path):
  result = launch(f"--config={DIGITS}", f"--workdir={tmp_path / 'run'}", "--config.total_epochs=abc")
  assert result.returncode == 2
  assert errors_of(result) == ["error: flag --config.total_epochs=abc: could not convert string to float: 'abc'"]


def test_a_missing_config_file_is_one_line(tmp_path):
  result = launch("--config=experiments/nothere.py", f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2
  assert errors_of(result) == ["error: --config=experiments/nothere.py: no such file"]


@pytest.mark.parametrize("source, message", [
    ("def get_config(:\n  pass\n", "error: --config: {path}:1: SyntaxError: invalid syntax"),
    ("x = 1\n", "error: --config: the file has no get_config() function; define get_config(arg=None) "
                "returning a ConfigDict"),
    ("import no_such_module_anywhere\n", "error: --config: loading the file raised ModuleNotFoundError: "
                                         "No module named 'no_such_module_anywhere'"),
])
def test_a_broken_config_file_is_one_line(tmp_path, source, message):
  path = tmp_path / "broken.py"
  path.write_text(source)
  result = launch(f"--config={path}", f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2
  assert errors_of(result) == [message.format(path=path)]
  assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_a_get_config_that_raises_is_one_line(tmp_path):
  result = launch(f"--config={DIGITS}:resnet", f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2
  assert errors_of(result) == [f"error: flag --config={DIGITS}:resnet: get_config raised ValueError: unknown "
                               f"variant 'resnet': use experiments/digits.py:cnn or :mlp"]
  assert not (tmp_path / "run").exists()


def test_workdir_is_required(tfds_dir):
  result = launch(f"--config={DIGITS}")
  assert result.returncode != 0
  assert "--workdir" in result.stderr


def test_a_bug_in_an_experiments_own_model_names_its_line_and_traceback_shows_it(tfds_dir, tmp_path):
  (tmp_path / "my_models.py").write_text(
      "import flax.linen as nn\n"
      "class Broken(nn.Module):\n"
      "  num_classes: int = 10\n"
      "  hidden: tuple = ()\n"
      "  dropout: float = 0.0\n"
      "  dtype: str = 'float32'\n"
      "  @nn.compact\n"
      "  def __call__(self, x, *, train):\n"
      "    return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1))) + undefined_bias, {}\n")
  args = [f"--config={DIGITS}:mlp", f"--workdir={tmp_path / 'run'}", "--config.model.name=my_models:Broken"]
  env_path = dict(os.environ, PYTHONPATH=str(tmp_path))
  result = subprocess.run([sys.executable, "-m", "jaxtrain.launch", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False, env=env_path)
  assert result.returncode == 2
  [line] = errors_of(result)
  assert line.startswith("error: initialising the model failed: NameError: name 'undefined_bias' is not defined "
                         f"(at {tmp_path / 'my_models.py'}:9)"), line
  assert "Traceback" not in result.stderr
  result = subprocess.run([sys.executable, "-m", "jaxtrain.launch", *args, "--traceback"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False, env=env_path)
  assert result.returncode == 2 and "Traceback" in result.stderr and "undefined_bias" in result.stderr
