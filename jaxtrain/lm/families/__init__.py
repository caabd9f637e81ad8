"""Model families: how a jaxtrain model maps to and from the formats other tools keep.

A family is one file here that registers itself: which Hugging Face architecture it reads
(`config.json`'s `architectures` or `model_type`), how that config becomes the keyword
arguments of a jaxtrain model (and back), and how each parameter is named in the other
format's state dict. `lm.hf` reads and writes directories through the family, so a new
architecture needs its Flax module (`jaxtrain.models`) and one file here; nothing else in
jaxtrain names an architecture.
"""

import re

from jaxtrain.errors import UserError


class Family:
  """What a model family says about itself. Subclasses set the class attributes and
  implement the methods; `register` makes them known."""
  title = None          # For messages ('Llama').
  model_name = None     # The name in jaxtrain.models.MODELS ('llama').
  architecture = None   # Hugging Face's class name ('LlamaForCausalLM').
  model_type = None     # Hugging Face's config.json model_type ('llama').
  stacked_prefix = None  # Parameter paths of layers stacked by scan ('layers/'), one slice per layer.
  ignored = re.compile(r"(?!)")  # Hugging Face weights read by nothing (recomputed buffers).
  # GGUF (lm.gguf): llama.cpp's name for the architecture ('llama', 'qwen2'), and whether
  # llama.cpp's converter permuted the Q/K projections' rows for its rotary layout (it does
  # so for the 'llama' architecture only). A family with no gguf_arch has no GGUF form.
  gguf_arch = None
  gguf_permutes_qk = False
  gguf_keeps_window = False  # Whether llama.cpp's architecture honours the sliding window the file records.

  def module(self, **kwargs):
    """The Flax module for the keyword arguments `from_hf_config` returns."""
    raise NotImplementedError

  def from_hf_config(self, config, path):
    """(module keyword arguments, extras: context_length, bos_id, eos_ids) of an HF config
    dict read from `path`; one line for a setting the module cannot express."""
    raise NotImplementedError

  def to_hf_config(self, module, context_length, dtype, special):
    """The HF config.json dict of `module` (special: bos/eos/pad token ids)."""
    raise NotImplementedError

  def hf_name(self, path, layer=None):
    """(the HF state-dict name of param path `path`, whether it is transposed there);
    `layer` picks the layer of a stacked (scanned) param."""
    raise NotImplementedError

  def gguf_offset(self, hf_name):
    """What llama.cpp adds to the HF weight `hf_name` in a GGUF (Gemma's norms: 1)."""
    del hf_name
    return 0.0

  def gguf_config(self, config, f):
    """The HF config dict `lm.gguf.hf_config` made of gguf.File `f`, with what the
    architecture's metadata leaves out (llama.cpp's hard-coded values) filled in."""
    del f
    return config

  def gguf_metadata(self, writer, module):
    """Metadata beyond `lm.gguf`'s common keys, added to a gguf.GGUFWriter."""

  def is_stacked(self, path):
    return bool(self.stacked_prefix) and path.startswith(self.stacked_prefix)


_FAMILIES = []


def register(cls):
  """Class decorator: makes a Family known by its model name and Hugging Face names."""
  _FAMILIES.append(cls())
  return cls


def for_model(name, where):
  """The family of jaxtrain model `name` (a run's model.name); one line if none."""
  for family in _FAMILIES:
    if family.model_name == name:
      return family
  raise UserError(f"{where} trains model '{name}', which has no language-model family (jaxtrain.lm knows "
                  f"{', '.join(repr(f.model_name) for f in _FAMILIES)})")


def for_gguf_arch(arch, path):
  """The family that llama.cpp's architecture name `arch` (a GGUF's general.architecture) is."""
  for family in _FAMILIES:
    if family.gguf_arch == arch:
      return family
  known = sorted({f.gguf_arch for f in _FAMILIES if f.gguf_arch})
  raise UserError(f"{path} holds a '{arch}' model, not an architecture jaxtrain reads from GGUF ({', '.join(known)})")


def for_hf_config(config, path):
  """The family of a Hugging Face config dict (read from `path`); one line if none."""
  architectures = config.get("architectures") or []
  for family in _FAMILIES:
    if family.architecture in architectures or config.get("model_type") == family.model_type:
      return family
  what = ", ".join(architectures) or config.get("model_type") or "an unknown model"
  raise UserError(f"{path} describes {what}, not an architecture jaxtrain reads "
                  f"({', '.join(f.architecture for f in _FAMILIES)})")


# Importing the families registers them.
from jaxtrain.lm.families import llama  # pylint: disable=wrong-import-position,unused-import  # noqa: E402,F401
from jaxtrain.lm.families import qwen2  # pylint: disable=wrong-import-position,unused-import  # noqa: E402,F401
from jaxtrain.lm.families import qwen3  # pylint: disable=wrong-import-position,unused-import  # noqa: E402,F401
from jaxtrain.lm.families import mistral  # pylint: disable=wrong-import-position,unused-import  # noqa: E402,F401
from jaxtrain.lm.families import gemma3  # pylint: disable=wrong-import-position,unused-import  # noqa: E402,F401
