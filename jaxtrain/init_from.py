"""Starting a fresh run from the weights of another run: `config.init_from`.

    config.init_from = dict(workdir="runs/pretrain")                  # its newest checkpoint
    config.init_from = dict(hf_dir="path/to/SmolLM-135M")             # a Hugging Face Llama
    config.init_from = dict(workdir="runs/pretrain", step=400,
                            ignore=("params/head/",),                 # left at their fresh init
                            rename=(("^params/encoder/(.*)", r"params/\\1"),))  # new name -> old

The model's variables are loaded: params and state such as BatchNorm statistics (named
'params/Conv_0/kernel', 'batch_stats/BatchNorm_0/mean'), never the optimizer state, step
or data position, which start afresh. Each array of the new model is matched by name: an
`ignore` pattern (regex, searched) leaves it at its initialisation; else the first
`rename` pattern that searches its name rewrites it (`re.sub`) into the name to read;
else it reads its own name. Arrays the checkpoint lacks stay fresh; arrays of the
checkpoint nothing reads are listed as unused. Everything is planned at start-up from the
checkpoint's metadata alone: a shape that does not fit, or a checkpoint that shares no
array with the model (another architecture), is one line before anything is written.

It applies to a fresh start only: a work directory with checkpoints resumes its own, and
the source is not read (it may be gone by then).
"""

import dataclasses
import os
import re

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxtrain import checkpoint
from jaxtrain import hf_llama
from jaxtrain import models
from jaxtrain import paths
from jaxtrain.errors import UserError, first_line


@dataclasses.dataclass
class Plan:
  """Which array of the new model reads which array of the source."""

  source: object            # A _RunSource or an _HFSource: names, shapes, reading.
  reads: dict               # New name -> source name.
  ignored: list             # New names left fresh by `ignore`.
  missing: list             # New names the source lacks (left fresh).
  unused: list              # Source names nothing reads.
  loaded_values: int

  def log(self):
    show = lambda names: ", ".join(names) if names else "none"  # noqa: E731
    logging.info("init_from %s: loaded %d arrays (%s values); left fresh by init_from.ignore: %s; left fresh, "
                 "not in the checkpoint: %s; unused from the checkpoint: %s.", self.source.what, len(self.reads),
                 f"{self.loaded_values:,}", show(self.ignored), show(self.missing), show(self.unused))

  def apply(self, state):
    """`state` (a fresh TrainState) with the planned arrays read from the source, each in
    the sharding (and dtype) the new model gives it."""
    targets = _variables_by_name(state)
    restored = self.source.read({old: jax.ShapeDtypeStruct(targets[new].shape, targets[new].dtype,
                                                           sharding=targets[new].sharding)
                                 for new, old in self.reads.items()})
    loaded = {new: restored[old] for new, old in self.reads.items()}

    def pick(path, leaf, collection):
      return loaded.get(f"{collection}/{paths.name_of(path)}", leaf)

    params = jax.tree_util.tree_map_with_path(lambda p, x: pick(p, x, "params"), state.params)
    model_state = {name: jax.tree_util.tree_map_with_path(lambda p, x, name=name: pick(p, x, name), tree)
                   for name, tree in state.model_state.items()}
    return state.replace(params=params, model_state=model_state)


def plan_for(section, abstract_state, module, workdir):
  """The Plan of a fresh start in `workdir`, logged; None without the section, or when
  `workdir` already has checkpoints (a resumed run reads its own, not the source's)."""
  if not section.keys():
    return None
  directory = os.path.join(workdir or "", "checkpoints")
  if workdir and os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory)):
    section.to_dict()  # Read: the start of this run checked them.
    logging.info("init_from is not applied: %s has checkpoints, and resuming reads its own.", workdir)
    return None
  result = plan(section, abstract_state, module)
  result.log()
  return result


def plan(section, abstract_state, module=None):
  """The Plan of `config.init_from` (a Reader) for a new model (`module`, `abstract_state`)."""
  quiet = checkpoint.QuietReading()
  logging.get_absl_handler().addFilter(quiet)
  try:
    return _plan(section, abstract_state, module)
  finally:
    logging.get_absl_handler().removeFilter(quiet)


def _plan(section, abstract_state, module):
  workdir, hf_dir = section.get("workdir", kind=str), section.get("hf_dir", kind=str)
  if (workdir is None) == (hf_dir is None):
    raise UserError("config key 'init_from' needs one of workdir= (a jaxtrain run) or hf_dir= (a Hugging Face "
                    "Llama directory)" + (", not both" if workdir else ""))
  if workdir is not None:
    source = _RunSource(os.path.expanduser(workdir), section)
  else:
    source = _HFSource(os.path.expanduser(hf_dir), section.path("hf_dir"), module)
  new = _variables_by_name(abstract_state)
  ignore = section.get("ignore", (), kind=object)
  ignore = [ignore] if isinstance(ignore, str) else list(ignore)
  rules = [tuple(rule) for rule in section.get("rename", (), kind=object)]
  if any(len(rule) != 2 or not all(isinstance(part, str) for part in rule) for rule in rules):
    raise UserError(f"config key '{section.path('rename')}' must be a list of (new-name regex, old name) pairs, "
                    f"got {rules!r}")
  names_tree = dict.fromkeys(new, 0)  # paths.match wants a tree; a flat dict of names is one.
  ignored_by = paths.match(names_tree, ignore, section.path("ignore"), " of the new model") if ignore else {}
  renamed_by = paths.match(names_tree, [p for p, _ in rules], section.path("rename"), " of the new model") \
      if rules else {}
  reads, ignored, missing = {}, [], []
  for name, leaf in new.items():
    if ignored_by.get(name, -1) >= 0:
      ignored.append(name)
      continue
    i = renamed_by.get(name, -1)
    old = re.sub(rules[i][0], rules[i][1], name, count=1) if i >= 0 else name
    if old not in source.shapes:
      missing.append(name)
      continue
    if tuple(source.shapes[old]) != tuple(leaf.shape):
      via = f" (read as {old})" if old != name else ""
      raise UserError(f"init_from: {name}{via} has shape {list(leaf.shape)} in the new model but "
                      f"{list(source.shapes[old])} in {source.where}; leave it fresh with init_from.ignore, or "
                      f"fix the model")
    reads[name] = old
  if not reads:
    raise UserError(f"init_from: {source.where} shares no array with the new model (it has "
                    f"{', '.join(sorted(source.shapes)[:3])}, ...; the model {', '.join(sorted(new)[:3])}, ...): "
                    f"a run of another model? rename arrays with init_from.rename")
  used = set(reads.values())
  return Plan(source=source, reads=reads, ignored=ignored, missing=missing,
              unused=sorted(n for n in source.shapes if n not in used),
              loaded_values=sum(int(np.prod(new[n].shape)) for n in reads))


class _RunSource:
  """A checkpoint of a jaxtrain run: names and shapes from its metadata, arrays by a
  partial restore of its 'params' and 'rest' items."""

  def __init__(self, workdir, section):
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
      raise UserError(f"{section.path('workdir')}={workdir} holds no checkpoints/; give the work directory of a "
                      f"jaxtrain run")
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    try:
      saved = ckpt.all_steps()
    finally:
      ckpt.close()
    step = section.get("step", saved[-1] if saved else None, kind=int)
    if step not in saved:
      raise UserError(f"{section.path('step')}: {workdir} has no checkpoint at step {step}; it has "
                      f"{', '.join(map(str, saved)) or 'none'}")
    self.what, self.where = f"{workdir} step {step}", os.path.join(workdir, "checkpoints", str(step))
    self.shapes = {}
    for item in ("params", "rest"):
      try:
        metadata = ocp.StandardCheckpointer().metadata(os.path.join(self.where, item)).item_metadata
      except Exception as e:  # pylint: disable=broad-except  (any unreadable checkpoint: one line)
        raise UserError(f"init_from: cannot read the metadata of {self.where}/{item}: {first_line(e)}") from None
      tree = metadata.tree if hasattr(metadata, "tree") else metadata
      if item == "rest":
        tree = tree.get("model_state", {})
      self.shapes.update({_source_name(item, path): tuple(leaf.shape) for path, leaf in _flat(tree)})

  def read(self, targets):
    """{source name: array} for {source name: ShapeDtypeStruct with a sharding}."""
    items = {}  # Checkpoint item ('params' or 'rest') -> the partial tree to restore.
    for old, target in targets.items():
      keys = old.split("/")
      item, keys = ("params", keys[1:]) if keys[0] == "params" else ("rest", ["model_state"] + keys)
      _put(items.setdefault(item, {}), keys, target)
    restored = {}
    with ocp.PyTreeCheckpointer() as reader:
      for item, tree in items.items():
        got = reader.restore(os.path.join(self.where, item), args=ocp.args.PyTreeRestore(
            item=tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree), partial_restore=True))
        restored.update({_source_name(item, path): leaf for path, leaf in _flat(got)})
    return restored


class _HFSource:
  """A Hugging Face Llama directory, seen as the jaxtrain Llama its config.json describes
  (scanning layers as the new model does): names 'params/...', read by
  hf_llama.load_params slice by slice into the new model's shardings."""

  def __init__(self, directory, key, module):
    if not os.path.isdir(directory):
      raise UserError(f"{key}={directory} is not a directory; give a Hugging Face Llama directory (config.json, "
                      f"*.safetensors)")
    kwargs, _ = hf_llama.read_config(directory)
    scan = {"scan_layers": module.scan_layers} if hasattr(module, "scan_layers") else {}
    llama = models.llama.Llama(**kwargs, **scan)
    abstract = jax.eval_shape(lambda: llama.init(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32), train=False))
    hf_llama.check_weights(directory, abstract["params"])  # Headers only: a broken directory says so now.
    self.what = self.where = directory
    self.shapes = {f"params/{paths.name_of(path)}": tuple(leaf.shape) for path, leaf in _flat(abstract["params"])}

  def read(self, targets):
    tree = {}
    for old, target in targets.items():
      _put(tree, old.split("/")[1:], target)  # Without 'params/'.
    loaded = hf_llama.load_params(self.where, tree, allow_unused=True)
    return {f"params/{paths.name_of(path)}": leaf for path, leaf in _flat(loaded)}


def _put(tree, keys, value):
  for key in keys[:-1]:
    tree = tree.setdefault(key, {})
  tree[keys[-1]] = value


def _flat(tree):
  return jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]


def _source_name(item, path):
  """'params/Conv_0/kernel' for item 'params'; 'batch_stats/BatchNorm_0/mean' for a
  model_state array of item 'rest' (whose paths start at the collection)."""
  name = paths.name_of(path)
  if item == "params":
    return f"params/{name}"
  return name[len("model_state/"):] if name.startswith("model_state/") else name


def _variables_by_name(state):
  """{'params/...' or 'batch_stats/...': array} of a TrainState (concrete or abstract)."""
  variables = {"params": state.params, **state.model_state}
  return {paths.name_of(path): leaf for path, leaf in _flat(variables)}
