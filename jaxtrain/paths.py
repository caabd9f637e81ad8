"""Naming the arrays of a pytree by path, and matching regex rules against those names.

One mechanism for everything chosen per parameter: sharding specs (`parallel.rules`) now,
frozen parameters, learning-rate groups and LoRA targets next. A path reads
'params/Dense_0/kernel' (or 'opt_state/1/mu/Dense_0/kernel' inside a TrainState); a rule
applies to an array when its pattern `re.search`es the name, and the first rule wins.
"""

import re

import jax

from jaxtrain.errors import UserError


def name_of(path):
  """'params/Dense_0/kernel' for a jax.tree_util key path."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def names(tree):
  return [name_of(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def compile_patterns(patterns, key):
  """The regexes of config key `key` (a list of strings, or of (pattern, value) pairs' patterns)."""
  compiled = []
  for i, pattern in enumerate(patterns):
    try:
      compiled.append(re.compile(pattern))
    except (re.error, TypeError) as e:
      raise UserError(f"{key}[{i}] pattern {pattern!r} is not a regular expression: {e}") from None
  return compiled


def match(tree, patterns, key, what="", prefix=""):
  """`what` (' of the train state') completes the error message.

  A tree like `tree` holding, for each array, the index of the first pattern that
  searches its name (`prefix` + path), or -1. A pattern that matches nothing is an error
  at config key `key`: almost always a typo, and silently doing nothing is the worst outcome."""
  compiled = compile_patterns(patterns, key)
  used = set()

  def first(path, _):
    name = prefix + name_of(path)
    for i, pattern in enumerate(compiled):
      if pattern.search(name):
        used.add(i)
        return i
    return -1

  indices = jax.tree_util.tree_map_with_path(first, tree)
  unused = [i for i in range(len(compiled)) if i not in used]
  if unused:
    all_names = [prefix + name for name in names(tree)]
    example = next((name for name in all_names if "params/" in name), all_names[0] if all_names else "")
    raise UserError(f"{key}[{unused[0]}] pattern {patterns[unused[0]]!r} matches no array{what} "
                    f"(paths look like {example!r}); fix the pattern or drop the rule")
  return indices


def named_leaves(tree, prefix=""):
  """[(name, array)] of a pytree's arrays, concrete or abstract (anything with a shape, Orbax's
  metadata included), named as `name_of` names them, after `prefix`."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return [(prefix + name_of(path), leaf) for path, leaf in leaves]
