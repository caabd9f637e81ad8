"""Hugging Face model directories in and out: `config.json`, `*.safetensors` (one file or
an index of shards), and the tokenizer beside them, for any model family (`lm.families`).
No PyTorch: safetensors reads the tensors as numpy, slice by slice.

Loading goes straight into the shardings the caller asks for: each device's shard is read
from the files alone (`make_array_from_callback` + safetensors' lazy slices), so a model
larger than one device's memory never exists whole on the host or on one device.
"""

import contextlib
import glob
import json
import os
import shutil
import tempfile

import jax
import numpy as np

from jaxtrain.errors import UserError, first_line
from jaxtrain.lm import families
from jaxtrain import paths


def read_config(directory):
  """(family, module keyword arguments, extras: context_length, bos_id, eos_ids) of an HF
  model directory."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"{directory} is neither a jaxtrain work directory nor a Hugging Face model directory "
                    f"(no config.json, no checkpoints/)")
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {first_line(e)}") from None
  if not isinstance(config, dict):
    raise UserError(f"cannot read {path}: not a JSON object")
  family = families.for_hf_config(config, path)
  try:
    kwargs, extras = family.from_hf_config(config, path)
  except KeyError as e:
    raise UserError(f"{path} lacks the key {e} that a {family.architecture} config has") from None
  return family, kwargs, extras


class _Files:
  """The safetensors files of a directory, open for lazy slicing, by tensor name."""

  def __init__(self, directory, stack):
    found = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not found:
      raise UserError(f"{directory} has a config.json but no *.safetensors weights (PyTorch .bin files are not read: "
                      f"save with safe_serialization=True)")
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    self.where = {}
    for path in found:
      try:
        f = stack.enter_context(safe_open(path, framework="numpy"))
      except Exception as e:  # pylint: disable=broad-except  (SafetensorError: it checks the size against the header)
        raise UserError(f"{path} is not a whole safetensors file ({first_line(e, 120)}): truncated or damaged; "
                        f"copy it again") from None
      self.where.update({name: f for name in f.keys()})

  def shape(self, name):
    return tuple(self.where[name].get_slice(name).get_shape())

  def read(self, name, index, transposed):
    """The slice `index` (of our layout) of tensor `name`."""
    tensor = self.where[name].get_slice(name)
    return tensor[index[::-1]].T if transposed else tensor[index]


def load_params(directory, family, abstract_params, allow_unused=False):
  """The params of an HF directory, each array created in the sharding of
  `abstract_params` (a tree of ShapeDtypeStructs with shardings, e.g. Strategy.abstract_state).
  A weight of the directory that no param reads is an error, unless `allow_unused` (a
  subset of the params, as init_from reads)."""
  flat = dict(paths.named_leaves(abstract_params))
  with contextlib.ExitStack() as stack:
    files = _Files(directory, stack)
    names_of, unused = _check(files, family, flat, directory)
    loaded = {path: jax.make_array_from_callback(
        leaf.shape, leaf.sharding, lambda index, names=names_of[path], path=path, leaf=leaf: _read(
            files, names, family.is_stacked(path), index, leaf.dtype)) for path, leaf in flat.items()}
  if unused and not allow_unused:
    raise UserError(f"{directory} holds weights jaxtrain's {family.title} has no place for: "
                    f"{', '.join(unused[:4])}{' ...' if len(unused) > 4 else ''}; is it a {family.title} checkpoint?")
  leaves = [loaded[path] for path in flat]
  return jax.tree.unflatten(jax.tree.structure(abstract_params), leaves)


def check_weights(directory, family, abstract_params):
  """The weights of an HF directory that `abstract_params` would not read; raises, reading
  only the files' headers, where one it would read is missing or of another shape."""
  with contextlib.ExitStack() as stack:
    return _check(_Files(directory, stack), family, dict(paths.named_leaves(abstract_params)), directory)[1]


def _check(files, family, flat, directory):
  """({param path: its HF names}, the directory's weights no param reads)."""
  names_of = {}
  for path, leaf in flat.items():
    stacked = family.is_stacked(path)
    names = [family.hf_name(path, i) for i in range(leaf.shape[0])] if stacked else [family.hf_name(path)]
    for name, transposed in names:
      _check_shape(files, name, transposed, leaf.shape[1:] if stacked else leaf.shape, directory)
    names_of[path] = names
  used = {name for names in names_of.values() for name, _ in names}
  return names_of, sorted(name for name in files.where if name not in used and not family.ignored.search(name))


def _check_shape(files, name, transposed, shape, directory):
  if name not in files.where:
    raise UserError(f"{directory} lacks the weight {name} that its config.json implies (tie_word_embeddings?)")
  want = tuple(shape[::-1]) if transposed else tuple(shape)
  if files.shape(name) != want:
    raise UserError(f"{directory}: weight {name} has shape {list(files.shape(name))}, but config.json implies "
                    f"{list(want)}")


def _read(files, names, stacked, index, dtype):
  if not stacked:
    (name, transposed), = names
    return np.asarray(files.read(name, index, transposed), dtype)
  parts = []
  for i in range(*index[0].indices(len(names))):
    name, transposed = names[i]
    parts.append(np.asarray(files.read(name, index[1:], transposed), dtype))
  return np.stack(parts)


def save(directory, family, module, params, tokenizer, context_length, dtype="float32"):
  """Writes an HF directory that `transformers` loads as the family's architecture. With
  several processes, all must call it (each gathers its shards); process 0 writes."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  check_new_directory(directory)
  family.to_hf_config(module, context_length, dtype, {})  # A module the family cannot hold: one line, now.
  tensors = {}
  for path, array in paths.named_leaves(params):
    array = np.asarray(gathered(array), np.dtype(jax.numpy.dtype(dtype)))
    for i, part in enumerate(array) if family.is_stacked(path) else [(None, array)]:
      name, transposed = family.hf_name(path, i)
      tensors[name] = np.ascontiguousarray(part.T if transposed else part)
  if jax.process_index() != 0:
    return

  def write(tmp):
    save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    special = _write_tokenizer(tmp, tokenizer)
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
      json.dump(family.to_hf_config(module, context_length, dtype, special), f, indent=2, sort_keys=True)
  write_directory(directory, write)


def check_new_directory(directory):
  """Export writes only a new (or empty) directory, and needs to create it beside its parent."""
  if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
    raise UserError(f"{directory} exists and is not empty; export to a new directory")
  parent = os.path.dirname(os.path.abspath(directory))
  if not os.path.isdir(parent):
    raise UserError(f"cannot write {directory}: {parent} is not a directory; create it first")


def write_directory(directory, write):
  """`write(tmp)` fills a fresh temporary directory beside `directory`, renamed into place
  once complete: never half-written, and nothing there before is touched (the temporary
  name is new; only it is removed on failure)."""
  parent, name = os.path.split(os.path.abspath(directory))
  try:
    tmp = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
  except OSError as e:
    raise UserError(f"cannot write {directory}: {e.strerror}; export to a writable place") from None
  try:
    write(tmp)
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; the export is an ordinary directory.
    if os.path.isdir(directory):
      os.rmdir(directory)  # Empty: checked before.
    os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _write_tokenizer(directory, tokenizer):
  """Copies the tokenizer file (tokenizer.json, or SentencePiece's tokenizer.model) and
  writes tokenizer_config.json naming its special tokens; returns their ids."""
  special = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
  names = {f"{role}_token": tokenizer.id_to_token(i) for role, i in
           (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id), ("pad", tokenizer.pad_id)) if i is not None}
  shutil.copyfile(tokenizer.path, os.path.join(directory, tokenizer.file_name))
  if tokenizer.kind == "sentencepiece":
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
              "add_prefix_space": False, **names}
  else:
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **names}
  if tokenizer.chat_template:
    config["chat_template"] = tokenizer.chat_template
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  return special


def gathered(array):
  """The whole array on this host (from every process's shards where there are several)."""
  if jax.process_count() > 1 and not array.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return multihost_utils.process_allgather(array, tiled=True)
  return jax.device_get(array)
