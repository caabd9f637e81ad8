"""Input: TFDS sources, preprocessing ops and Grain pipelines."""

from jaxtrain.data import ops
from jaxtrain.data import pipeline
from jaxtrain.data.sources import open_source


def open_from_config(data, default_data_dir=None):
  """Opens `data.name` / `data.split` from a config Reader (optional: `data_dir`, `cache`)."""
  return open_source(data.name, data.split, data.get("data_dir", default_data_dir, kind=str),
                     cache=data.get("cache", False), data_dir_key=data.path("data_dir"))


__all__ = ["ops", "pipeline", "open_source", "open_from_config"]
