"""Named registries (models, losses, evaluators, preprocessing ops).

A name is either registered with `@REGISTRY.register('name')`, or written as
'module.path:attr' to use any importable object without registering it, so an experiment
module can bring its own model or evaluator without touching the core.
"""

from jaxtrain import config as config_lib
from jaxtrain.errors import UserError, did_you_mean


class Registry:

  def __init__(self, what):
    self.what = what
    self._items = {}

  def register(self, name):
    def decorator(obj):
      if name in self._items:
        raise ValueError(f"{self.what} '{name}' is registered twice")
      self._items[name] = obj
      return obj
    return decorator

  def names(self):
    return sorted(self._items)

  def get(self, name):
    if not isinstance(name, str):
      raise UserError(f"{self.what} name must be a string, got {name!r}")
    if ":" in name:
      return config_lib.import_object(name, self.what)
    if name not in self._items:
      raise UserError(
          f"unknown {self.what} '{name}'{did_you_mean(name, self._items)}; "
          f"known: {', '.join(self.names())} (or 'module.path:attr')")
    return self._items[name]
