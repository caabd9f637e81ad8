"""Reading experiment configs: every key must be read, with its type; durations in any unit.

A run reads its `ml_collections.ConfigDict` through a `Reader`, which records each key it
hands out. Once everything is built, `check_all_read` fails on any key that nothing read
(almost always a typo), naming it and suggesting the closest key the run looked for.
"""

import difflib
import importlib
import math
import numbers

import ml_collections

from jaxtrain.errors import UserError, did_you_mean

REQUIRED = object()

# The type a value must have, given the type its default has (ints pass for floats; numpy
# scalars pass too; bools pass only for bools).
_ACCEPTS = {bool: (bool,), int: (numbers.Integral,), float: (numbers.Real,), str: (str,)}


def check_type(path, value, kind):
  """Raises unless `value` may stand where a `kind` (bool, int, float or str) is expected."""
  if kind not in _ACCEPTS:
    return
  if isinstance(value, (ml_collections.ConfigDict, dict)):
    raise UserError(f"config key '{path}' must be {kind.__name__}, got a section")
  if not isinstance(value, _ACCEPTS[kind]) or (kind is not bool and isinstance(value, bool)):
    raise UserError(f"config key '{path}' must be {kind.__name__}, got {value!r}")


class Reader:
  """Read-only view of a ConfigDict that records the keys the run reads.

  `r.a.b` reads a required key; `r.get('a', default)` an optional one, which must have
  the type of its default (or `kind`) and be at least `minimum` if one is given. Sub-dicts come back as Readers sharing the same
  record, so `check_all_read` sees the whole tree.
  """

  def __init__(self, config, path="", record=None):
    self._config = config
    self._path = path
    # Paths read, and paths asked for but absent (the latter feed the suggestions).
    self._record = record if record is not None else {"read": set(), "asked": set()}

  def path(self, name):
    return f"{self._path}.{name}" if self._path else name

  def __repr__(self):
    return f"a section with keys {', '.join(self.keys())}"

  def __getattr__(self, name):
    if name.startswith("_"):
      raise AttributeError(name)
    return self.get(name, REQUIRED)

  def __contains__(self, name):
    return name in self._config and self._config[name] is not None

  def keys(self):
    return list(self._config.keys())

  def get(self, name, default=None, kind=None, minimum=None):
    path = self.path(name)
    if name not in self._config or self._config[name] is None:
      self._record["asked"].add(path)
      if default is REQUIRED:
        others = [k for k in self.keys() if k != name]
        raise UserError(f"config key '{path}' is required but not set"
                        f"{did_you_mean(name, others, prefix=self.path(''))}")
      return default
    value = self._config[name]
    check_type(path, value, kind or type(default))
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      self._record["asked"].add(path)
      return Reader(value, path, self._record)
    self._record["read"].add(path)
    if minimum is not None and value < minimum:
      raise UserError(f"config key '{path}' must be at least {minimum}, got {value!r}")
    return value

  def section(self, name):
    """The sub-dict `name`, or an empty one where the config has none."""
    value = self.get(name)
    if value is None:
      return Reader({}, self.path(name), self._record)
    if not isinstance(value, Reader):
      raise UserError(f"config key '{self.path(name)}' must be a section (a dict of keys), got {value!r}")
    return value

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


def check_kwargs(section, kwargs, defaults, owner):
  """Raises for the first of `kwargs` that `owner` (e.g. "model 'cnn'") does not take, or
  whose type is not its default's. `defaults`: {argument: default (None if it has none)}."""
  for key, value in kwargs.items():
    if key not in defaults:
      close = did_you_mean(key, defaults, prefix=section.path(""))
      raise UserError(f"unknown config key '{section.path(key)}'{close}; {owner} takes "
                      f"{', '.join(sorted(defaults))}")
    check_type(section.path(key), value, type(defaults[key]))


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
    first = unread[0]
    parent, _, leaf = first.rpartition(".")
    # Suggest only keys of the same section: 'schedule.end_factor' is not 'schedule.name'.
    siblings = {k.rpartition(".")[2] for k in record["read"] | record["asked"] if k.rpartition(".")[0] == parent}
    close = did_you_mean(leaf, siblings - {leaf}, prefix=f"{parent}." if parent else "")
    more = f" (and {len(unread) - 1} more: {', '.join(unread[1:])})" if len(unread) > 1 else ""
    raise UserError(f"unknown config key '{first}'{close}; nothing reads it with these settings{more}")


# ---------------------------------------------------------------------------------------
# Durations.
# ---------------------------------------------------------------------------------------

UNITS = ("steps", "epochs", "examples")


def steps(reader, prefix, *, steps_per_epoch, batch_size, default=REQUIRED, allow_zero=False):
  """Reads `{prefix}_steps`, `{prefix}_epochs` or `{prefix}_examples` as a step count.

  Exactly one of the three may be set. Epochs may be fractional; a positive duration is
  rounded up, so it is never zero steps. A unit set to 0 beside a positive one counts as
  unset, so the command line can switch units: --config.total_epochs=0 --config.total_steps=500;
  an optional duration set to 0 alone is unset too (for `every`: only at the end).
  """
  names = [f"{prefix}_{unit}" for unit in UNITS]
  given = {unit: reader.get(f"{prefix}_{unit}") for unit in UNITS if f"{prefix}_{unit}" in reader}
  if any(value != 0 for value in given.values()):
    given = {unit: value for unit, value in given.items() if value != 0}
  elif given and default is not REQUIRED and not allow_zero:
    given = {}  # All zero: as if unset (e.g. --config.checkpoint.every_epochs=0: only at the end).
  if len(given) > 1:
    raise UserError(f"set only one of {', '.join(reader.path(f'{prefix}_{u}') for u in given)}")
  if not given:
    for name in names:  # Recorded as asked for, so that a typo gets a suggestion.
      reader.get(name)
    if default is REQUIRED:
      near = [k for k in reader.keys() if k not in names and difflib.get_close_matches(k, names, n=1, cutoff=0.8)]
      hint = f" ('{reader.path(near[0])}' is set: a typo?)" if near else ""
      raise UserError(f"set one of {', '.join(reader.path(n) for n in names)}{hint}")
    return default
  (unit, value), = given.items()
  path = reader.path(f"{prefix}_{unit}")
  number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
  if not number or value < 0 or (value == 0 and not allow_zero):
    raise UserError(f"config key '{path}' must be a {'non-negative' if allow_zero else 'positive'} number, "
                    f"got {value!r}")
  if value == 0:
    return 0
  if unit == "steps":
    if value != int(value):
      raise UserError(f"config key '{path}' must be a whole number, got {value!r}")
    return int(value)
  # Rounded before the ceiling so that 2.2 epochs of 25 steps is 55 steps, not 56.
  if unit == "epochs":
    return max(1, math.ceil(round(value * steps_per_epoch, 6)))
  return max(1, math.ceil(round(value / batch_size, 6)))


def command_line_units(config, argv):
  """A duration the command line gives in one unit replaces the config file's other units
  of the same quantity (`--config.total_steps=500` on a file that sets total_epochs=40
  trains 500 steps): sets them to None in `config`, in place. Returns one line per
  replacement, for the log. Units given together on the command line are left as given."""
  given = {}
  for arg in argv:
    if arg.startswith("--config."):
      prefix, _, unit = arg[len("--config."):].split("=", 1)[0].rpartition("_")
      if unit in UNITS and prefix:
        given.setdefault(prefix, set()).add(unit)
  lines = []
  for prefix, units in sorted(given.items()):
    *sections, name = prefix.split(".")
    section = config
    for part in sections:
      section = section.get(part) if hasattr(section, "get") else None
    if not hasattr(section, "keys"):
      continue  # No such section: the override itself fails with its own line.
    for unit in UNITS:
      key = f"{name}_{unit}"
      if unit not in units and key in section.keys() and section[key] not in (None, 0):
        lines.append(f"--config.{prefix}_{'/'.join(sorted(units))} replaces the config file's {prefix}_{unit}="
                     f"{section[key]!r}")
        section[key] = None
  return lines


def duration(prefix, *, steps=None, epochs=None, examples=None):
  """Config entries for a duration in one unit, the other two typed placeholders, so that
  `--config.{prefix}_steps=N` (with the set unit zeroed) or fractional epochs work from the
  command line:  c.update(duration("total", epochs=40))."""
  return {f"{prefix}_steps": ml_collections.FieldReference(steps, field_type=int),
          f"{prefix}_epochs": ml_collections.FieldReference(
              None if epochs is None else float(epochs), field_type=float),
          f"{prefix}_examples": ml_collections.FieldReference(examples, field_type=int)}


def due(step, every_steps, total_steps):
  """Whether something done every `every_steps` (None: only at the end) is due at `step`."""
  return step == total_steps or (every_steps is not None and step % every_steps == 0)


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


def flatten(tree, prefix=""):
  """{'optimizer': {'lr': 0.1}} -> {'optimizer.lr': 0.1}: a config (as a dict) by dotted keys;
  lists and empty dicts are values."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat
