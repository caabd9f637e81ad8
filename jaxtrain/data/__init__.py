"""Input: TFDS sources, text (tokenizers, packing), preprocessing ops and Grain pipelines."""

import numbers

from jaxtrain.config import REQUIRED
from jaxtrain.data import mixture
from jaxtrain.data import ops
from jaxtrain.data.packing import PackedSource
from jaxtrain.data import pipeline
from jaxtrain.data.sources import ClassSubset, keep_classes, open_source
from jaxtrain.data import text
from jaxtrain.data import tokenizers
from jaxtrain.errors import UserError


def open_from_config(data, default_data_dir=None, like=None, split_key="split"):
  """Opens the data section `data` (a config Reader).

  A TFDS dataset: `name`, `split` (optional: `data_dir`, `cache`, and `classes`, a list of
  class ids to keep, read from the feature `class_key`, default 'label'; labels are not
  renumbered). Text for language models (any of seq_len, tokenizer, files, format, ...
  set, or a text dataset such as 'stdlib_code'): a `PackedSource` of rows, see
  `jaxtrain.data.text`. `like`, the training source, supplies the text settings (dataset,
  tokenizer, seq_len, data_dir) that an evaluator's section does not set; it is ignored for
  other data. `split_key` names the key that holds the split (a few-shot dataset has
  `train_split` and `test_split`).

  Training data with a `mixture` section is a `mixture.Mixture` of sources (see
  `jaxtrain.data.mixture`); an evaluator's section then names one in `source`."""
  if "mixture" in data:
    if like is not None or split_key != "split":
      raise UserError(f"config key '{data.path('mixture')}': a mixture is for input.data; evaluate its sources one "
                      f"at a time, each naming one in 'source'")
    return mixture.open_mixture(data, lambda section, like_: _open_one(section, None, like_, "split"),
                                default_data_dir)
  data, like = mixture.for_evaluation(data, like)
  return _open_one(data, default_data_dir, like, split_key)


def _open_one(data, default_data_dir, like, split_key):
  if text.is_text(data, like):
    return text.open_from_config(data, default_data_dir, like=like)
  split = data.get(split_key, REQUIRED, kind=str)
  source = open_source(data.name, split, data.get("data_dir", default_data_dir, kind=str),
                       cache=data.get("cache", False), data_dir_key=data.path("data_dir"))
  if "classes" in data:
    source = keep_classes(source, _class_ids(data), data.get("class_key", "label"), name=data.name, split=split,
                          where=data.path("classes"), key_where=data.path("class_key"))
  return source


def _class_ids(data):
  """`classes` as a tuple of ints: a list (or tuple) of them, or one."""
  value = data.get("classes", kind=object)
  values = value if isinstance(value, (list, tuple)) else (value,)
  if not values or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for v in values):
    raise UserError(f"config key '{data.path('classes')}' must be a non-empty list of class ids "
                    f"(integers >= 0), got {value!r}")
  return tuple(int(v) for v in values)


__all__ = ["mixture", "ops", "pipeline", "text", "tokenizers", "ClassSubset", "PackedSource", "keep_classes",
           "open_source", "open_from_config"]
