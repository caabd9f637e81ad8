"""GGUF files (what llama.cpp, Ollama and LM Studio run) in and out, for every family with
a `gguf_arch` (lm.families). The `gguf` package, llama.cpp's own reader and writer, does
the format; this file maps it to jaxtrain's models.

Reading: the file's metadata becomes the Hugging Face config the family already reads
(`hf_config`), and each tensor name follows from the family's Hugging Face name through
gguf's own name table (`gguf.get_tensor_name_map`). Tensors are dequantized with
`gguf.quants` (F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0, the K- and I-quants: whatever that
package reads) into each device's shard, reading only the rows the shard holds (a shard
split along a Linear's input dimension needs every row, dequantized, then its columns):
a quantized model never exists whole in float on the host. llama.cpp's converter reorders
the rows of the Q and K projections of the 'llama' architecture for its rotary layout
(`gguf_permutes_qk`); reading undoes it by reading rows in the inverse order, writing
applies it. A family's hooks cover the rest of
an architecture's quirks: `gguf_offset` (Gemma's norms are stored as 1 + w: subtracted on
reading, added on writing), `gguf_config` (metadata llama.cpp leaves out) and `gguf_metadata`.

Writing (`save`): the model in f32, f16, bf16 or q8_0 (norms and other 1-D tensors stay
f32, as llama.cpp's converter keeps them), its tokenizer and chat template
(`lm.gguf_tokenizer`), into a temporary file beside the target renamed into place.
"""

import os
import tempfile

from absl import logging
import jax
import numpy as np

from jaxtrain.errors import UserError, first_line
from jaxtrain.lm import families
from jaxtrain.lm import gguf_tokenizer
from jaxtrain.lm import hf
from jaxtrain import paths

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def is_gguf(path):
  """Whether `path` names a GGUF file (by its name; the magic is checked on opening)."""
  return str(path).lower().endswith(".gguf")


class File:
  """An open GGUF file: its metadata (`value`) and tensors (`tensors`, by GGUF name)."""

  def __init__(self, path):
    import gguf  # pylint: disable=import-outside-toplevel
    if not os.path.isfile(path):
      raise UserError(f"GGUF file {path} does not exist")
    try:
      self.reader = gguf.GGUFReader(path)
    except Exception as e:  # pylint: disable=broad-except  (ValueError for a bad magic, others when truncated)
      raise UserError(f"cannot read {path} as GGUF ({first_line(e, 120)}): is it a whole .gguf file?") from None
    self.path = path
    self.tensors = {t.name: t for t in self.reader.tensors}
    self.arch = self.value("general.architecture")
    if not isinstance(self.arch, str):
      raise UserError(f"{path} has no general.architecture: not a model GGUF")

  def value(self, key, default=None):
    field = self.reader.fields.get(key)
    return default if field is None else field.contents()

  def arch_value(self, key, default=None):
    return self.value(f"{self.arch}.{key}", default)

  def shape(self, name):
    """The tensor's shape in numpy (row-major) order: a Linear weight is [out, in]."""
    return tuple(int(n) for n in reversed(self.tensors[name].shape))


def read_config(path):
  """(family, module keyword arguments, extras: context_length, bos_id, eos_ids, File) of
  a GGUF file."""
  f = File(path)
  family = families.for_gguf_arch(f.arch, path)
  config = family.gguf_config(hf_config(f, family), f)
  if family.model_type == "llama" and config.get("sliding_window"):
    # llama.cpp writes Mistral as 'llama'; a window in the file (jaxtrain's exports write it) is Mistral's.
    family = families.for_hf_config({"model_type": "mistral"}, path)
    config.update(architectures=[family.architecture], model_type=family.model_type)
  try:
    kwargs, extras = family.from_hf_config(config, path)
  except KeyError as e:
    raise UserError(f"{path} lacks the metadata for {e} that a {f.arch} GGUF has") from None
  return family, kwargs, extras, f


def hf_config(f, family):
  """The Hugging Face config.json dict that the file's metadata describes (the keys
  llama.cpp's converter wrote it from), so that each family reads one kind of config."""
  if "rope_freqs.weight" in f.tensors:
    raise UserError(f"{f.path} scales RoPE with a rope_freqs tensor (Llama 3.1's long-context frequencies), which "
                    f"jaxtrain does not read from GGUF yet; load the Hugging Face directory instead")
  a = f.arch_value
  heads, kv_heads = a("attention.head_count"), a("attention.head_count_kv")
  for name, value in (("head_count", heads), ("head_count_kv", kv_heads)):
    if isinstance(value, list):
      raise UserError(f"{f.path} gives {f.arch}.attention.{name} per layer; jaxtrain's layers are all alike")
  if "token_embd.weight" not in f.tensors:
    raise UserError(f"{f.path} has no token_embd.weight: not a whole {f.arch} model")
  config = {"architectures": [family.architecture], "model_type": family.model_type,
            "vocab_size": f.shape("token_embd.weight")[0], "hidden_size": a("embedding_length"),
            "num_hidden_layers": a("block_count"), "num_attention_heads": heads,
            "num_key_value_heads": kv_heads or heads, "intermediate_size": a("feed_forward_length"),
            "max_position_embeddings": a("context_length", 2048),
            "rms_norm_eps": _decimal(a("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": _decimal(a("rope.freq_base", 10000.0)),
            "tie_word_embeddings": "output.weight" not in f.tensors,
            "bos_token_id": f.value("tokenizer.ggml.bos_token_id"),
            "eos_token_id": sorted({f.value(f"tokenizer.ggml.{role}_token_id") for role in ("eos", "eot", "eom")}
                                   - {None}) or None}
  # Always: without it Qwen3's reader would take transformers' default of 128.
  config["head_dim"] = a("attention.key_length") or (config["hidden_size"] // heads if heads else None)
  if a("attention.sliding_window") is not None:  # One window for every layer (jaxtrain's exports write it).
    config.update(sliding_window=a("attention.sliding_window"), use_sliding_window=True, max_window_layers=0)
  scaling = a("rope.scaling.type")
  if scaling not in (None, "none"):
    config["rope_scaling"] = {"rope_type": scaling, "factor": a("rope.scaling.factor")}
  missing = [k for k, v in config.items() if v is None and k not in ("bos_token_id", "eos_token_id")]
  if missing:
    raise UserError(f"{f.path} lacks the {f.arch} metadata for {', '.join(missing)}")
  return config


def _decimal(value):
  """A float32 from the file as the decimal it was written from (9.999999747e-06 -> 1e-05):
  the same float32, and what config.json should say again on export."""
  return None if value is None else float(str(np.float32(value)))


def _name_map(family, num_layers):
  import gguf  # pylint: disable=import-outside-toplevel
  arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == family.gguf_arch)
  return gguf.get_tensor_name_map(arch, num_layers)


def gguf_name(name_map, hf_name):
  """The GGUF tensor name of a Hugging Face state-dict name ('blk.3.attn_q.weight')."""
  name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
  if name is None:
    raise UserError(f"llama.cpp has no GGUF name for the weight {hf_name}")
  return name


def _qk_heads(hf_name, num_heads, num_kv_heads):
  """The head count whose rows llama.cpp permuted in this weight, or None."""
  if hf_name.endswith("self_attn.q_proj.weight"):
    return num_heads
  if hf_name.endswith("self_attn.k_proj.weight"):
    return num_kv_heads
  return None


def rotary_permutation(rows, heads):
  """llama.cpp's row order for a Q or K projection: GGUF row j holds Hugging Face row
  perm[j] (within each head, the two rotary halves interleaved)."""
  return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)


class _Tensors:
  """Where each param path's data is in the file: [(GGUF name, transposed, row order)]."""

  def __init__(self, f, family, abstract_params, num_heads, num_kv_heads, num_layers):
    self.f, self.family = f, family
    name_map = _name_map(family, num_layers)
    self.where = {}
    for path, leaf in paths.named_leaves(abstract_params):
      stacked = family.is_stacked(path)
      hf_names = [family.hf_name(path, i) for i in range(leaf.shape[0])] if stacked else [family.hf_name(path)]
      entries = []
      for hf_name, transposed in hf_names:
        name = gguf_name(name_map, hf_name)
        shape = leaf.shape[1:] if stacked else leaf.shape
        want = tuple(shape[::-1]) if transposed else tuple(shape)
        if name not in f.tensors:
          raise UserError(f"{f.path} lacks the tensor {name} that its metadata implies")
        if f.shape(name) != want:
          raise UserError(f"{f.path}: tensor {name} has shape {list(f.shape(name))}, but its metadata implies "
                          f"{list(want)}")
        heads = _qk_heads(hf_name, num_heads, num_kv_heads) if family.gguf_permutes_qk else None
        order = None if heads is None else np.argsort(rotary_permutation(want[0], heads))
        entries.append((name, transposed, order, family.gguf_offset(hf_name)))
      self.where[path] = entries
    used = {entry[0] for entries in self.where.values() for entry in entries}
    self.unused = sorted(set(f.tensors) - used)

  def read(self, path, index, dtype):
    entries = self.where[path]
    if not self.family.is_stacked(path):
      name, transposed, order, offset = entries[0]
      return _read(self.f.tensors[name], transposed, order, offset, index, dtype)
    return np.stack([_read(self.f.tensors[name], transposed, order, offset, index[1:], dtype)
                     for name, transposed, order, offset in entries[index[0]]])


def _read(tensor, transposed, order, offset, index, dtype):
  """The slice `index` (of our layout) of a GGUF tensor, dequantized: only its rows; less
  `offset`, what llama.cpp added (family.gguf_offset), in float32."""
  from gguf import quants  # pylint: disable=import-outside-toplevel
  data = tensor.data
  if len(tensor.shape) == 1:
    values = quants.dequantize(np.asarray(data), tensor.tensor_type)[index]
    return np.asarray(np.asarray(values, np.float32) - offset if offset else values, dtype)
  rows_at, cols_at = (index[1], index[0]) if transposed else (index[0], index[1])
  rows = np.arange(data.shape[0])[rows_at]  # Rows of the Hugging Face layout ...
  if order is not None:
    rows = order[rows]                      # ... where llama.cpp put them.
  block = quants.dequantize(np.asarray(data[rows]), tensor.tensor_type)[:, cols_at]
  block = block.T if transposed else block
  return np.asarray(np.asarray(block, np.float32) - offset if offset else block, dtype)


def load_params(f, family, abstract_params, module, allow_unused=False):
  """The params of GGUF file `f`, each array made in the sharding of `abstract_params`
  (and its dtype: bfloat16 there halves the host and device memory)."""
  tensors = _Tensors(f, family, abstract_params, module.num_heads, module.kv_heads, module.num_layers)
  if tensors.unused and not allow_unused:
    raise UserError(f"{f.path} holds tensors jaxtrain's {family.title} has no place for: "
                    f"{', '.join(tensors.unused[:4])}{' ...' if len(tensors.unused) > 4 else ''}")
  flat = dict(paths.named_leaves(abstract_params))
  leaves = [jax.make_array_from_callback(leaf.shape, leaf.sharding,
                                         lambda index, path=path, leaf=leaf: tensors.read(path, index, leaf.dtype))
            for path, leaf in flat.items()]
  return jax.tree.unflatten(jax.tree.structure(abstract_params), leaves)


def unused_tensors(f, family, abstract_params, module):
  """The tensors of `f` that `abstract_params` would not read (init_from's check)."""
  return _Tensors(f, family, abstract_params, module.num_heads, module.kv_heads, module.num_layers).unused


# ---------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------


def check_new_file(path):
  """Export writes only a new file, in an existing directory."""
  if os.path.exists(path):
    raise UserError(f"{path} exists; export to a new file")
  if not is_gguf(path):
    raise UserError(f"{path} does not end in .gguf; name the file FILE.gguf")
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise UserError(f"cannot write {path}: {parent} is not a directory; create it first")


def check_outtype(outtype):
  if outtype not in OUTTYPES:
    raise UserError(f"unknown GGUF outtype '{outtype}'; choose one of {', '.join(OUTTYPES)}")


def save(path, family, module, params, tokenizer, context_length, outtype="f32"):
  """Writes `module`'s params as a GGUF file llama.cpp runs. With several processes all must
  call it (each gathers its shards); process 0 writes."""
  import gguf  # pylint: disable=import-outside-toplevel
  check_outtype(outtype)
  check_new_file(path)
  if family.gguf_arch is None:
    raise UserError(f"{family.title} models have no GGUF form in jaxtrain")
  family.to_hf_config(module, context_length, "float32", {})  # A module the family cannot hold: one line, now.
  if module.rope_scaling:
    raise UserError(f"this model scales RoPE ({module.rope_scaling.get('rope_type')}), which jaxtrain does not "
                    f"write to GGUF yet; export --format=hf and convert with llama.cpp")
  if getattr(module, "sliding_window", None) and not family.gguf_keeps_window:
    logging.warning("llama.cpp's '%s' architecture ignores the sliding window of %d that the file records: past "
                    "that many tokens llama.cpp attends to more than this model does", family.gguf_arch,
                    module.sliding_window)
  vocabulary = gguf_tokenizer.fields(tokenizer, module.vocab_size)  # A tokenizer GGUF cannot hold: one line, now.
  tensors = _tensors(family, module, params, outtype)
  if jax.process_index() != 0:
    return
  parent, name = os.path.split(os.path.abspath(path))
  try:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.partial-", dir=parent)
  except OSError as e:
    raise UserError(f"cannot write {path}: {e.strerror}; export to a writable place") from None
  os.close(fd)
  try:
    writer = gguf.GGUFWriter(tmp, family.gguf_arch)
    _write_metadata(writer, family, module, context_length, outtype)
    gguf_tokenizer.write(writer, vocabulary)
    for tensor_name, (data, qtype) in tensors.items():
      writer.add_tensor(tensor_name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.chmod(tmp, 0o666 & ~hf.umask())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _tensors(family, module, params, outtype):
  """{GGUF name: (data, quantization type)} in llama.cpp's layout."""
  from gguf import quants, GGMLQuantizationType as Q  # pylint: disable=import-outside-toplevel
  wanted = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[outtype]
  name_map = _name_map(family, module.num_layers)
  out = {}
  for path, array in paths.named_leaves(params):
    array = np.asarray(hf.gathered(array), np.float32)
    for i, part in enumerate(array) if family.is_stacked(path) else [(None, array)]:
      hf_name, transposed = family.hf_name(path, i)
      data = (part.T if transposed else part) + np.float32(family.gguf_offset(hf_name))
      heads = _qk_heads(hf_name, module.num_heads, module.kv_heads) if family.gguf_permutes_qk else None
      if heads is not None:
        data = data[rotary_permutation(data.shape[0], heads)]
      qtype = wanted if data.ndim > 1 else Q.F32
      if qtype == Q.Q8_0 and data.shape[-1] % 32:
        qtype = Q.F16  # Q8_0 packs blocks of 32 along a row, as llama.cpp's converter falls back.
      out[gguf_name(name_map, hf_name)] = (quants.quantize(np.ascontiguousarray(data), qtype), qtype)
  return out


def _write_metadata(writer, family, module, context_length, outtype):
  import gguf  # pylint: disable=import-outside-toplevel
  writer.add_name(family.title)
  writer.add_block_count(module.num_layers)
  writer.add_context_length(context_length)
  writer.add_embedding_length(module.dim)
  writer.add_feed_forward_length(module.hidden_size)
  writer.add_head_count(module.num_heads)
  writer.add_head_count_kv(module.kv_heads)
  writer.add_key_length(module.head_size)
  writer.add_value_length(module.head_size)
  writer.add_rope_dimension_count(module.head_size)
  writer.add_rope_freq_base(module.rope_theta)
  writer.add_layer_norm_rms_eps(module.norm_eps)
  writer.add_vocab_size(module.vocab_size)
  if getattr(module, "sliding_window", None):
    writer.add_sliding_window(module.sliding_window)
  family.gguf_metadata(writer, module)
  types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
           "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
  writer.add_file_type(types[outtype])
  writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
