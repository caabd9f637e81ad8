"""Input: TFDS sources, text (tokenizers, packing), preprocessing ops and Grain pipelines."""

from jaxtrain.data import ops
from jaxtrain.data import pipeline
from jaxtrain.data import text
from jaxtrain.data import tokenizers
from jaxtrain.data.packing import PackedSource
from jaxtrain.data.sources import open_source


def open_from_config(data, default_data_dir=None, like=None):
  """Opens the data section `data` (a config Reader).

  A TFDS dataset: `name`, `split` (optional: `data_dir`, `cache`). Text for language models
  (any of seq_len, tokenizer, files, format, ... set, or a text dataset such as
  'stdlib_code'): a `PackedSource` of rows, see `jaxtrain.data.text`. `like`, the training
  source, supplies the text settings (dataset, tokenizer, seq_len, data_dir) that an
  evaluator's section does not set; it is ignored for other data."""
  if text.is_text(data, like):
    return text.open_from_config(data, default_data_dir, like=like)
  return open_source(data.name, data.split, data.get("data_dir", default_data_dir, kind=str),
                     cache=data.get("cache", False), data_dir_key=data.path("data_dir"))


__all__ = ["ops", "pipeline", "text", "tokenizers", "PackedSource", "open_source", "open_from_config"]
