"""Hugging Face Llama directories in and out: `config.json`, `*.safetensors` (one file or
an index of shards), and the tokenizer beside them. No PyTorch: safetensors reads the
tensors as numpy, slice by slice.

Parameter names map one to one (see `jaxtrain.models.llama`): HF's Linear weights are
[out, in] and Flax kernels [in, out], so kernels are transposed on the way in and out.
Loading goes straight into the shardings the caller asks for: each device's shard is read
from the files alone (`make_array_from_callback` + safetensors' lazy slices), so a model
larger than one device's memory never exists whole on the host or on one device.

config.json is read as transformers 4.x writes it (`rope_theta`, `rope_scaling`) and as
5.x does (`rope_parameters`); we write the 4.x keys, which both read.
"""

import contextlib
import glob
import json
import os
import re
import shutil

import jax
import numpy as np

from jaxtrain.errors import UserError, first_line
from jaxtrain.models import llama

ARCHITECTURE = "LlamaForCausalLM"
# Old checkpoints saved RoPE's buffer (recomputed here); tied ones may store the head's copy
# of the embedding (an untied model reads it, so it is never left over there).
_IGNORED = re.compile(r"rotary_emb\.inv_freq$|^lm_head\.weight$")


def read_config(directory):
  """(Llama keyword arguments, extras: context_length, bos_id, eos_ids) of an HF model dir."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"{directory} is neither a jaxtrain work directory nor a Hugging Face model directory "
                    f"(no config.json, no checkpoints/)")
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {first_line(e)}") from None
  architectures = config.get("architectures") or []
  if config.get("model_type") != "llama" and ARCHITECTURE not in architectures:
    what = ", ".join(architectures) or config.get("model_type") or "an unknown model"
    raise UserError(f"{path} describes {what}, not the Llama architecture ({ARCHITECTURE}); jaxtrain loads Llama-"
                    f"family checkpoints only")
  for key, unsupported in (("attention_bias", True), ("mlp_bias", True)):
    if config.get(key) == unsupported:
      raise UserError(f"{path} sets {key}={unsupported}; jaxtrain's Llama has no biases")
  if config.get("hidden_act", "silu") != "silu":
    raise UserError(f"{path} sets hidden_act={config['hidden_act']!r}; jaxtrain's Llama uses 'silu'")
  theta, scaling = _rope(config, path)
  heads = config["num_attention_heads"]
  model = dict(vocab_size=config["vocab_size"], dim=config["hidden_size"], num_layers=config["num_hidden_layers"],
               num_heads=heads, num_kv_heads=config.get("num_key_value_heads") or heads,
               head_dim=config.get("head_dim") or config["hidden_size"] // heads,
               mlp_dim=config["intermediate_size"], rope_theta=theta, rope_scaling=scaling,
               norm_eps=config.get("rms_norm_eps", 1e-6), tie_embeddings=bool(config.get("tie_word_embeddings", False)))
  eos = config.get("eos_token_id")
  extras = dict(context_length=config.get("max_position_embeddings", 2048), bos_id=config.get("bos_token_id"),
                eos_ids=[] if eos is None else eos if isinstance(eos, list) else [eos])
  return model, extras


def _rope(config, path):
  """(theta, rope_scaling or None) from either generation of config.json."""
  params = config.get("rope_parameters") or {}
  scaling = dict(params or config.get("rope_scaling") or {})
  theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
  kind = scaling.pop("rope_type", scaling.pop("type", "default"))
  scaling.pop("rope_theta", None)
  if kind == "default":
    return theta, None
  if kind not in llama.ROPE_SCALINGS:
    raise UserError(f"{path} asks for rope scaling '{kind}'; jaxtrain implements "
                    f"{', '.join(llama.ROPE_SCALINGS)}")
  keep = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
  return theta, {"rope_type": kind, **{k: v for k, v in scaling.items() if k in keep}}


def hf_name(path, layer=None):
  """The HF state-dict name of a param path ('layers_0/mlp/up_proj/kernel'), and whether
  it is transposed there. `layer` names the layer of a scanned (stacked) param."""
  parts = path.split("/")
  if parts[0] == "layers":
    parts[0] = f"layers_{layer}"
  head, leaf = parts[:-1], {"kernel": "weight", "scale": "weight", "embedding": "weight"}[parts[-1]]
  if head[0].startswith("layers_"):
    head = ["model", "layers", head[0][len("layers_"):]] + head[1:]
  elif head[0] != "lm_head":
    head = ["model"] + head
  return ".".join(head + [leaf]), parts[-1] == "kernel"


class _Files:
  """The safetensors files of a directory, open for lazy slicing, by tensor name."""

  def __init__(self, directory, stack):
    paths = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not paths:
      raise UserError(f"{directory} has a config.json but no *.safetensors weights (PyTorch .bin files are not read: "
                      f"save with safe_serialization=True)")
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    self.where = {}
    for path in paths:
      f = stack.enter_context(safe_open(path, framework="numpy"))
      self.where.update({name: f for name in f.keys()})

  def shape(self, name):
    return tuple(self.where[name].get_slice(name).get_shape())

  def read(self, name, index, transposed):
    """The slice `index` (of our layout) of tensor `name`."""
    tensor = self.where[name].get_slice(name)
    return tensor[index[::-1]].T if transposed else tensor[index]


def load_params(directory, abstract_params, allow_unused=False):
  """The params of an HF directory, each array created in the sharding of
  `abstract_params` (a tree of ShapeDtypeStructs with shardings, e.g. Strategy.abstract_state).
  A weight of the directory that no param reads is an error, unless `allow_unused` (a
  subset of the params, as init_from reads)."""
  flat = _flat(abstract_params)
  with contextlib.ExitStack() as stack:
    files = _Files(directory, stack)
    names_of, unused = _check(files, flat, directory)
    loaded = {path: jax.make_array_from_callback(
        leaf.shape, leaf.sharding, lambda index, names=names_of[path], path=path, leaf=leaf: _read(
            files, names, path.startswith("layers/"), index, leaf.dtype)) for path, leaf in flat.items()}
  if unused and not allow_unused:
    raise UserError(f"{directory} holds weights jaxtrain's Llama has no place for: {', '.join(unused[:4])}"
                    f"{' ...' if len(unused) > 4 else ''}; is it a Llama checkpoint?")
  leaves = [loaded[path] for path in flat]
  return jax.tree.unflatten(jax.tree.structure(abstract_params), leaves)


def check_weights(directory, abstract_params):
  """The weights of an HF directory that `abstract_params` would not read; raises, reading
  only the files' headers, where one it would read is missing or of another shape."""
  with contextlib.ExitStack() as stack:
    return _check(_Files(directory, stack), _flat(abstract_params), directory)[1]


def _flat(abstract_params):
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}


def _check(files, flat, directory):
  """({param path: its HF names}, the directory's weights no param reads)."""
  names_of = {}
  for path, leaf in flat.items():
    stacked = path.startswith("layers/")
    names = [hf_name(path, i) for i in range(leaf.shape[0])] if stacked else [hf_name(path)]
    for name, transposed in names:
      _check_shape(files, name, transposed, leaf.shape[1:] if stacked else leaf.shape, directory)
    names_of[path] = names
  used = {name for names in names_of.values() for name, _ in names}
  return names_of, sorted(name for name in files.where if name not in used and not _IGNORED.search(name))


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


def save(directory, module, params, tokenizer, context_length, dtype="float32"):
  """Writes an HF Llama directory that `transformers` loads as LlamaForCausalLM. It is
  written beside `directory` and renamed into place: never half-written, never over
  an existing directory's files. With several processes, all must call it."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  if os.path.exists(directory) and os.listdir(directory):
    raise UserError(f"{directory} exists and is not empty; export to a new directory")
  tensors = {}
  for path, array in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = "/".join(str(getattr(k, "key", k)) for k in path)
    array = np.asarray(_gathered(array), np.dtype(jax.numpy.dtype(dtype)))
    for i, part in enumerate(array) if path.startswith("layers/") else [(None, array)]:
      name, transposed = hf_name(path, i)
      tensors[name] = np.ascontiguousarray(part.T if transposed else part)
  if jax.process_index() != 0:
    return  # Every process took part in gathering the arrays; one writes.
  tmp = directory.rstrip("/") + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
  special = _write_tokenizer(tmp, tokenizer)
  with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_config(module, context_length, dtype, **special), f, indent=2, sort_keys=True)
  if os.path.exists(directory):
    os.rmdir(directory)  # Empty: checked above.
  os.replace(tmp, directory)


def hf_config(module, context_length, dtype, bos_token_id=None, eos_token_id=None, pad_token_id=None):
  scaling = dict(module.rope_scaling) if module.rope_scaling else None
  return {"architectures": [ARCHITECTURE], "model_type": "llama", "vocab_size": module.vocab_size,
          "hidden_size": module.dim, "intermediate_size": module.hidden_size, "num_hidden_layers": module.num_layers,
          "num_attention_heads": module.num_heads, "num_key_value_heads": module.kv_heads,
          "head_dim": module.head_size, "hidden_act": "silu", "max_position_embeddings": context_length,
          "rms_norm_eps": module.norm_eps, "rope_theta": module.rope_theta, "rope_scaling": scaling,
          "tie_word_embeddings": module.tie_embeddings, "attention_bias": False, "mlp_bias": False,
          "initializer_range": 0.02, "torch_dtype": dtype, "use_cache": True, "bos_token_id": bos_token_id,
          "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}


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
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  return special


def _gathered(array):
  """The whole array on this host (from every process's shards where there are several)."""
  if jax.process_count() > 1 and not array.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return multihost_utils.process_allgather(array, tiled=True)
  return jax.device_get(array)
