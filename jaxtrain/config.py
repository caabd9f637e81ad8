"""Reading experiment configs: every key must be read, durations in any unit.

A run reads its `ml_collections.ConfigDict` through a `Reader`, which records each key it
hands out. Once everything is built, `check_all_read` fails on any key that nothing read
(almost always a typo), naming it and suggesting the closest key the run did look for.
"""

import importlib
import math

import ml_collections

from jaxtrain.errors import UserError, did_you_mean

_REQUIRED = object()


class Reader:
  """Read-only view of a ConfigDict that records the keys the run reads.

  `r.a.b` reads a required key; `r.get('a', default)` an optional one. Sub-dicts come
  back as Readers sharing the same record, so `check_all_read` sees the whole tree.
  """

  def __init__(self, config, path="", record=None):
    self._config = config
    self._path = path
    # Paths read, and paths asked for but absent (the latter feed the suggestions).
    self._record = record if record is not None else {"read": set(), "asked": set()}

  def path(self, name):
    return f"{self._path}.{name}" if self._path else name

  def __getattr__(self, name):
    if name.startswith("_"):
      raise AttributeError(name)
    return self.get(name, _REQUIRED)

  def __contains__(self, name):
    return name in self._config and self._config[name] is not None

  def keys(self):
    return list(self._config.keys())

  def get(self, name, default=None):
    path = self.path(name)
    if name not in self._config or self._config[name] is None:
      self._record["asked"].add(path)
      if default is _REQUIRED:
        others = [k for k in self.keys() if k != name]
        raise UserError(f"config key '{path}' is required but not set{did_you_mean(name, others)}")
      return default
    value = self._config[name]
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      self._record["asked"].add(path)
      return Reader(value, path, self._record)
    self._record["read"].add(path)
    return value

  def section(self, name):
    """The sub-dict `name`, or an empty one where the config has none."""
    value = self.get(name)
    return value if value is not None else Reader({}, self.path(name), self._record)

  def to_dict(self):
    """All keys below this point as a plain dict; marks every one of them read."""
    self._record["read"].add(self._path)
    config = self._config
    return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)

  def take(self, *names):
    """The keys of this sub-dict other than `names`, as a dict, all marked read.

    For passing the rest of a section as keyword arguments (`model.name` picks the class,
    the other keys are its arguments)."""
    rest = {}
    for key in self.keys():
      if key not in names and self._config[key] is not None:
        value = self.get(key)
        rest[key] = value.to_dict() if isinstance(value, Reader) else value
    return rest


def unknown_key(section, key, accepted, owner):
  """The error for a key that `owner` (e.g. "model 'cnn'") does not take."""
  close = did_you_mean(key, accepted, prefix=section.path(""))
  return UserError(f"unknown config key '{section.path(key)}'{close}; {owner} takes {', '.join(sorted(accepted))}")


def _leaves(config, prefix=""):
  for key, value in config.items():
    path = f"{prefix}.{key}" if prefix else key
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from _leaves(value, path)  # An empty section has nothing to read.
    elif value is not None:
      yield path


def unread_keys(reader):
  read = reader._record["read"]  # pylint: disable=protected-access

  def is_read(path):
    parts = path.split(".")
    return any(".".join(parts[:i]) in read for i in range(len(parts) + 1))  # '' is the root.

  return [path for path in _leaves(reader._config) if not is_read(path)]  # pylint: disable=protected-access


def check_all_read(reader):
  """Raises UserError naming the first key the run never read."""
  unread = unread_keys(reader)
  if unread:
    record = reader._record  # pylint: disable=protected-access
    known = record["read"] | record["asked"]
    first = unread[0]
    more = f" (and {len(unread) - 1} more: {', '.join(unread[1:])})" if len(unread) > 1 else ""
    raise UserError(f"unknown config key '{first}'{did_you_mean(first, known)}; nothing reads it{more}")


# ---------------------------------------------------------------------------------------
# Durations.
# ---------------------------------------------------------------------------------------

UNITS = ("steps", "epochs", "examples")


def steps(reader, prefix, *, steps_per_epoch, batch_size, default=_REQUIRED):
  """Reads `{prefix}_steps`, `{prefix}_epochs` or `{prefix}_examples` as a step count.

  Exactly one of the three may be set. Epochs may be fractional; the result is rounded up
  so that a duration is never zero steps.
  """
  given = {unit: reader.get(f"{prefix}_{unit}") for unit in UNITS if f"{prefix}_{unit}" in reader}
  names = [reader.path(f"{prefix}_{unit}") for unit in UNITS]
  if len(given) > 1:
    raise UserError(f"set only one of {', '.join(reader.path(f'{prefix}_{u}') for u in given)}")
  if not given:
    for unit in UNITS:  # Recorded as asked for, so that a typo gets a suggestion.
      reader.get(f"{prefix}_{unit}")
    if default is _REQUIRED:
      raise UserError(f"set one of {', '.join(names)}")
    return default
  (unit, value), = given.items()
  if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
    raise UserError(f"config key '{reader.path(f'{prefix}_{unit}')}' must be a positive number, got {value!r}")
  if unit == "steps":
    if value != int(value):
      raise UserError(f"config key '{reader.path(f'{prefix}_steps')}' must be a whole number, got {value!r}")
    return int(value)
  # Rounded before the ceiling so that 2.2 epochs of 25 steps is 55 steps, not 56.
  if unit == "epochs":
    return max(1, math.ceil(round(value * steps_per_epoch, 6)))
  return max(1, math.ceil(round(value / batch_size, 6)))


# ---------------------------------------------------------------------------------------
# Import by path: a registry name like 'my_project.models:Net' names any importable object.
# ---------------------------------------------------------------------------------------


def import_object(spec, what):
  module_name, _, attr = spec.partition(":")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise UserError(f"cannot import module '{module_name}' for {what} '{spec}': {e}") from None
  if not hasattr(module, attr):
    raise UserError(f"module '{module_name}' has no '{attr}' for {what} '{spec}'")
  return getattr(module, attr)
