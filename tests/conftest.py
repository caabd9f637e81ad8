"""Shared fixtures: one TFDS data directory per test session, where digits is built once.

The tests mirror the packages (tests/training/ for jaxtrain/training/, ...; tests/e2e/ for
the runs that are killed, preempted, spread over processes or written to a bucket), and
import each other's helpers by module name (`from test_train import tiny_config`): every
folder here is on the path, in this process and in the processes the tests start.
"""

import importlib.util
import os
import shutil
import sys
import sysconfig
import uuid

import jax
import orbax.checkpoint as ocp
import pytest

import gcs_emulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
FOLDERS = [TESTS] + sorted(entry.path for entry in os.scandir(TESTS)
                           if entry.is_dir() and any(name.startswith("test_") for name in os.listdir(entry.path)))
sys.path[1:1] = [folder for folder in FOLDERS if folder not in sys.path]
os.environ["PYTHONPATH"] = os.pathsep.join(FOLDERS + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                     if p])


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  os.environ["TFDS_DATA_DIR"] = path  # Subprocesses started by tests inherit it.
  return path


# Standard-library modules: the text a tiny language model trains on in the tests.
LM_MODULES = ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py", "colorsys.py",
              "keyword.py", "calendar.py", "string.py", "copy.py", "queue.py", "locale.py", "gettext.py")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
  """A directory of LM_MODULES' source files, for `tiny_lm(corpus)`."""
  directory = tmp_path_factory.mktemp("corpus")
  for name in LM_MODULES:
    shutil.copy(os.path.join(sysconfig.get_paths()["stdlib"], name), directory / name)
  return str(directory)


@pytest.fixture(scope="module")
def pretrained(tfds_dir, corpus, tmp_path_factory):
  """A tiny code LM (tests/tiny_lm.py) trained 20 steps, one per test module (a test may move
  it): the model an email assistant starts from."""
  from jaxtrain import train  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("pretrained"))
  config = tiny_lm(corpus)
  config.total_steps = 20
  train.run(config, workdir)
  return workdir


def tiny_lm(corpus_dir):
  """tests/tiny_lm.py's config for the text files in `corpus_dir`."""
  return load_experiment("../tests/tiny_lm").get_config(corpus_dir)


def load_experiment(name):
  return load_module(name, os.path.join(ROOT, "experiments", f"{name}.py"))


def load_script(name):
  """scripts/NAME.py as a module."""
  return load_module(name, os.path.join(ROOT, "scripts", f"{name}.py"))


def load_module(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def read_checkpoint(workdir, step, like=None):
  """The array items of a saved step: {'params': ..., 'opt_state': ..., 'rest': ...}.

  `like` (the same structure) gives target shapes and shardings, e.g. to restore a
  checkpoint written on 8 devices on one."""
  items = {}
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    for name in ("params", "opt_state", "rest"):
      path = os.path.join(workdir, "checkpoints", str(step), name)
      if like is None:  # Whatever wrote it (several processes, say), read it onto one device.
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                              ckptr.metadata(path).item_metadata)
      else:
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like[name])
      items[name] = ckptr.restore(path, target)
  return items


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
  """gs://NAME: a fresh bucket on a Cloud Storage emulator of the test module's own
  (tests/gcs_emulator.py), with STORAGE_EMULATOR_HOST set for the runs it starts."""
  process, url = gcs_emulator.start(str(tmp_path_factory.mktemp("emulator") / "log"))
  saved = {key: os.environ.get(key) for key in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
  os.environ["STORAGE_EMULATOR_HOST"] = os.environ["TENSORSTORE_GCS_HTTP_URL"] = url
  name = f"jaxtrain-{uuid.uuid4().hex[:8]}"  # Orbax caches its bucket client by name.
  gcs_emulator.make_bucket(url, name)
  yield f"gs://{name}"
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value
  process.terminate()
  process.wait()
