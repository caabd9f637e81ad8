"""The Python standard library's own source as a TFDS text dataset, built locally on first use.

Every `.py` file under sysconfig's stdlib directory, except tests (any `test`, `tests` or
`idle_test` directory), `site-packages` / `dist-packages`, and the two machine-specific
build files (`_sysconfigdata_*.py`, `config-3.X-*/`). Python 3.11.7: 734 files, 12.1 MB.
Each example is a file: its text and its path relative to the stdlib directory.

The split is by file, from a hash of the relative path (90 / 5 / 5 percent): a file is in
the same split on every machine with the same Python version, whatever the order files are
listed in. One builder config per Python version ('py3_11') keeps versions apart in a
shared data directory. (A distribution that patches its stdlib changes those files only.)

Strings: `tfds.features.Text()` prepares with file_format='array_record' and reads back
through `as_data_source()` as UTF-8 `bytes` with no TensorFlow installed (checked with TFDS
4.9.10; so do Tensor(shape=(), dtype=np.object_) and np.str_). NUL characters and empty
strings survive.
"""

import hashlib
import lzma
import os
import sys
import sysconfig

import tensorflow_datasets as tfds

SPLITS = {"train": 90, "validation": 5, "test": 5}  # Percent of files, by hash of the path.
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}


def stdlib_dir():
  return sysconfig.get_paths()["stdlib"]


def split_of(relpath):
  """'train', 'validation' or 'test' for a path relative to the stdlib ('/'-separated)."""
  bucket = int.from_bytes(hashlib.sha256(relpath.encode("utf-8")).digest()[:8], "big") % 100
  for split, percent in SPLITS.items():
    if bucket < percent:
      return split
    bucket -= percent
  raise AssertionError("SPLITS must add up to 100")


def list_files(root=None):
  """Sorted relative paths ('/'-separated) of the stdlib's .py files, as described above."""
  root = root or stdlib_dir()
  found = []
  for directory, dirs, files in os.walk(root):
    rel = os.path.relpath(directory, root)
    dirs[:] = sorted(d for d in dirs if d not in _EXCLUDED_DIRS and not (rel == "." and d.startswith("config-")))
    for name in files:
      if name.endswith(".py") and not name.startswith("_sysconfigdata"):
        found.append(os.path.normpath(os.path.join(rel, name)).replace(os.sep, "/"))
  return sorted(found)


def read_split(split, root=None):
  """[(relpath, text)] of one split, sorted by path, read straight from the stdlib."""
  root = root or stdlib_dir()
  out = []
  for rel in list_files(root):
    if split_of(rel) == split:
      with open(os.path.join(root, rel), encoding="utf-8") as f:
        out.append((rel, f.read()))
  return out


class StdlibCode(tfds.core.GeneratorBasedBuilder):
  """TFDS builder for the stdlib's source; Text features keep it free of TensorFlow."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The stdlib's .py files without tests, split 90/5/5 by a hash of the path."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"py{sys.version_info.major}_{sys.version_info.minor}",
                                             description="The standard library of this Python version.")]
  # jaxtrain prepares builders marked like this on first use (nothing to download).
  BUILT_LOCALLY = True

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="The Python standard library's .py source files (no tests), one example per file.",
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "path": tfds.features.Text()}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    for rel, text in read_split(split):
      yield rel, {"text": text, "path": rel}


def xz_bits_per_byte(texts):
  """Bits per byte of `xz -9e` (lzma preset 9 | PRESET_EXTREME, .xz container included) on
  `texts`: {'per_file': each text compressed alone, 'concatenated': all joined in order,
  'bytes': total UTF-8 bytes, 'files': how many}."""
  data = [t.encode("utf-8") for t in texts]
  total = sum(len(d) for d in data)
  preset = 9 | lzma.PRESET_EXTREME
  per_file = sum(len(lzma.compress(d, preset=preset)) for d in data)
  together = len(lzma.compress(b"".join(data), preset=preset))
  return {"per_file": 8 * per_file / total, "concatenated": 8 * together / total, "bytes": total, "files": len(data)}
