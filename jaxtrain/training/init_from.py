"""Starting a fresh run from the weights of another run: `config.init_from`.

    config.init_from = dict(workdir="runs/pretrain")                  # its newest checkpoint
    config.init_from = dict(hf_dir="path/to/SmolLM-135M")             # a Hugging Face model
    config.init_from = dict(gguf="SmolLM2-135M-Instruct.Q4_1.gguf")   # a GGUF file (dequantized)
    config.init_from = dict(workdir="runs/pretrain", step=400,
                            ignore=("params/head/",),                 # left at their fresh init
                            rename=(("^params/encoder/(.*)", r"params/\\1"),))  # new name -> old

    config.init_from = dict(workdir="runs/code_lm", model=True)     # its architecture too

`model=True` takes the model section from the source (a run's config.json, the Hugging
Face config.json, or a GGUF's metadata) and, where input.data.tokenizer is unset, its
tokenizer (a GGUF's converted once into a tokenizer.json: lm/gguf_tokenizer.py): an experiment
can then fine-tune whatever model it is given (experiments/email_assistant.py). Keys the
config's own `model` sets win (dropout rates, dtype, remat); see `resolve_model`.

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

import copy
import dataclasses
import os
import re

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtrain.checkpoints import checkpointer as checkpoint
from jaxtrain import config as config_lib
from jaxtrain.data import text as text_lib
from jaxtrain.errors import UserError
from jaxtrain.lm import gguf
from jaxtrain.lm import gguf_tokenizer
from jaxtrain.lm import hf
from jaxtrain import models
from jaxtrain import paths
from jaxtrain.rundir import layout
from jaxtrain.rundir import storage


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
    adapters = [n for n in self.missing if n.endswith(("/lora_A", "/lora_B"))]  # Fresh by design: one count.
    missing = show([n for n in self.missing if n not in adapters]) + (
        f" (and the {len(adapters)} LoRA adapter arrays)" if adapters else "")
    logging.info("init_from %s: loaded %d arrays (%s values); left fresh by init_from.ignore: %s; left fresh, "
                 "not in the checkpoint: %s; unused from the checkpoint: %s.", self.source.what, len(self.reads),
                 f"{self.loaded_values:,}", show(self.ignored), missing, show(self.unused))

  def create_fn(self, create):
    """`create` (() -> a fresh TrainState) with the arrays this plan reads made zeros: their
    random initialisation is then dead code that XLA drops. Measured on SmolLM2-135M
    (2-core CPU, 2026-12-07): create_state compiled in 54 s with it, 0.5 s without."""
    def keep(path, leaf, collection):
      return jnp.zeros_like(leaf) if f"{collection}/{paths.name_of(path)}" in self.reads else leaf

    def created():
      state = create()
      params = jax.tree_util.tree_map_with_path(lambda p, x: keep(p, x, "params"), state.params)
      model_state = {name: jax.tree_util.tree_map_with_path(lambda p, x, name=name: keep(p, x, name), tree)
                     for name, tree in state.model_state.items()}
      return state.replace(params=params, model_state=model_state)

    return created

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
  if workdir and layout.newest_complete_step(workdir) is not None:
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
  gguf_path = section.get("gguf", kind=str)
  section.get("model", False)  # Used by resolve_model, before the model was built.
  _check_one_source(workdir, hf_dir, gguf_path)
  if workdir is not None:
    source = _RunSource(os.path.expanduser(workdir), section)
  elif hf_dir is not None:
    source = _HFSource(os.path.expanduser(hf_dir), section.path("hf_dir"), module)
  else:
    source = _GGUFSource(_given_path(gguf_path), section.path("gguf"), module)
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


# ---- init_from.model=True: the model section and tokenizer of the source ------------------

def resolve_model(config, workdir=None):
  """`config` with the source's architecture when `init_from.model` is True, else `config`.

  The model section becomes the source's (a run's config.json; a Hugging Face directory's
  config.json), with the keys this config's `model` sets on top (dropout rates, dtype,
  scan_layers, remat); an unset `input.data.tokenizer` becomes the source's tokenizer
  file. A resumed run (`workdir` has checkpoints) takes both from its own config.json and
  tokenizer copy instead, so the source may be gone by then. Returns a copy."""
  section = config.get("init_from")
  if not section or not section.get("model"):
    return config
  if not isinstance(section.get("model"), bool):
    raise UserError(f"config key 'init_from.model' must be True or False, got {section.get('model')!r}")
  saved = layout.saved_config(workdir)
  if saved is not None:
    base, tokenizer, where = saved.get("model", {}), layout.kept_tokenizer(workdir), workdir
  else:
    base, tokenizer, where = _source_model(section)
  overrides = {k: v for k, v in (config.get("model") or {}).items() if v is not None}
  if overrides.get("scan_layers") and not getattr(models.MODELS.get(base.get("name")), "scans_layers", True):
    # An experiment's default for whatever model it is given (the email assistant's): a
    # family whose layers differ in kind (gemma3) runs them unrolled instead of failing.
    del overrides["scan_layers"]
    logging.info("init_from.model: %s's layers differ in kind; model.scan_layers=True is not applied.", where)
  source_scans = bool(base.get("scan_layers", False))
  from_run = saved is not None or section.get("workdir") is not None
  if from_run and overrides.get("scan_layers", source_scans) != source_scans:
    # A run's checkpoint keeps its layers as it trained them, stacked or one by one (a run
    # begun before the email assistant scanned them resumes unrolled).
    del overrides["scan_layers"]
    logging.info("init_from.model: %s keeps its layers %s; model.scan_layers follows it.", where,
                 "stacked" if source_scans else "one by one")
  for new_name, old_name in (("residual_dropout", "dropout"), ("dropout", "residual_dropout")):
    if new_name in overrides:  # Two names of one rate: the override's wins.
      base.pop(old_name, None)
  data = (config.get("input") or {}).get("data")
  if tokenizer is None and data is not None and data.get("tokenizer") is None and (
      "mixture" in data or text_lib.is_text(config_lib.Reader(data))):
    raise UserError(f"init_from.model: {where} has no tokenizer (a run of model '{base.get('name')}'), and this "
                    f"config trains a language model on text; start from a language model's run or Hugging Face "
                    f"directory")
  resolved = copy.deepcopy(config)
  with resolved.unlocked():
    resolved.model = ml_collections.ConfigDict({**base, **overrides})
    data = resolved.get("input", {}).get("data")
    if tokenizer and data is not None and data.get("tokenizer") is None:
      data.tokenizer = tokenizer
  logging.info("init_from.model: the model section of %s%s%s.", where,
               f" with model.{', model.'.join(sorted(overrides))} from this config" if overrides else "",
               f"; tokenizer {tokenizer}" if tokenizer and data is not None else "")
  return resolved


def _source_model(section):
  """(model section, tokenizer path or None, where) of the init_from source."""
  workdir, hf_dir, gguf_path = section.get("workdir"), section.get("hf_dir"), section.get("gguf")
  _check_one_source(workdir, hf_dir, gguf_path)
  if gguf_path is not None:
    gguf_path = _given_path(gguf_path)
    family, kwargs, _, f = gguf.read_config(gguf_path)
    tokenizer = gguf_tokenizer.load(f).path
    return dict(name=family.model_name, **{k: v for k, v in kwargs.items() if v is not None}), tokenizer, gguf_path
  if hf_dir is not None:
    hf_dir = os.path.expanduser(hf_dir)
    if not os.path.isdir(hf_dir):
      raise UserError(f"init_from.hf_dir={hf_dir} is not a directory; give a Hugging Face model directory "
                      f"(config.json, *.safetensors)")
    family, kwargs, _ = hf.read_config(hf_dir)
    return dict(name=family.model_name, **{k: v for k, v in kwargs.items() if v is not None}), hf_dir, hf_dir
  workdir = _given_path(workdir)
  run_config = layout.read_config(workdir, key="init_from.workdir")
  tokenizer = layout.kept_tokenizer(workdir)
  data = run_config.get("input", {}).get("data", {})
  if tokenizer is None and text_lib.is_text(config_lib.Reader(data)):
    # Runs from before the copy was kept: the tokenizer their config names or trained.
    tokenizer = text_lib.tokenizer_from_config(config_lib.Reader(ml_collections.ConfigDict(data))).path
  return dict(run_config.get("model", {})), tokenizer, workdir


def _check_one_source(workdir, hf_dir, gguf_path):
  given = sum(source is not None for source in (workdir, hf_dir, gguf_path))
  if given != 1:
    raise UserError("config key 'init_from' needs one of workdir= (a jaxtrain run), hf_dir= (a Hugging Face model "
                    "directory) or gguf= (a GGUF file)" + (", not several" if given else ""))


def _given_path(path):
  """A path from the config, made absolute once: the run may read it from elsewhere (Orbax
  reads no metadata through a relative path)."""
  return storage.absolute(os.path.expanduser(path))


class _RunSource:
  """A checkpoint of a jaxtrain run: names and shapes from its metadata, arrays by a
  partial restore of its 'params' and 'rest' items."""

  def __init__(self, workdir, section):
    workdir = _given_path(workdir)
    if not layout.has_checkpoints(workdir):
      raise UserError(f"{section.path('workdir')}={workdir} holds no checkpoints/; give the work directory of a "
                      f"jaxtrain run")
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    try:
      self.step = layout.pick_step(ckpt.all_steps(), section.get("step", kind=int), workdir, key=section.path("step"))
      self.shapes = ckpt.variable_shapes(self.step)
    finally:
      ckpt.close()
    self.workdir, self.what = workdir, f"{workdir} step {self.step}"
    self.where = f"{layout.checkpoints(workdir)}/{self.step}"

  def read(self, targets):
    """{source name: array} for {source name: ShapeDtypeStruct with a sharding}."""
    ckpt = checkpoint.Checkpointer(self.workdir, read_only=True)
    try:
      return ckpt.restore_named(self.step, targets)
    finally:
      ckpt.close()


class _HFSource:
  """A Hugging Face directory, seen as the jaxtrain model its config.json describes
  (scanning layers as the new model does): names 'params/...', read by hf.load_params
  slice by slice into the new model's shardings."""

  def __init__(self, directory, key, module):
    if not os.path.isdir(directory):
      raise UserError(f"{key}={directory} is not a directory; give a Hugging Face model directory (config.json, "
                      f"*.safetensors)")
    self.family, kwargs, _ = hf.read_config(directory)
    scan = {"scan_layers": module.scan_layers} if hasattr(module, "scan_layers") else {}
    source = self.family.module(**kwargs, **scan)
    abstract = jax.eval_shape(lambda: source.init(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32), train=False))
    hf.check_weights(directory, self.family, abstract["params"])  # Headers only: a broken directory says so now.
    self.what = self.where = directory
    self.shapes = {name: tuple(leaf.shape) for name, leaf in paths.named_leaves(abstract["params"], "params/")}

  def read(self, targets):
    tree = {}
    for old, target in targets.items():
      _put(tree, old.split("/")[1:], target)  # Without 'params/'.
    loaded = hf.load_params(self.where, self.family, tree, allow_unused=True)
    return dict(paths.named_leaves(loaded, "params/"))


class _GGUFSource:
  """A GGUF file, seen as the jaxtrain model its metadata describes (as _HFSource): its
  tensors dequantized slice by slice into the new model's shardings and dtypes."""

  def __init__(self, path, key, module):
    if not os.path.isfile(path):
      raise UserError(f"{key}={path} is not a file; give a .gguf file")
    self.family, kwargs, _, self.file = gguf.read_config(path)
    scan = {"scan_layers": module.scan_layers} if hasattr(module, "scan_layers") else {}
    self.module = self.family.module(**kwargs, **scan)
    abstract = jax.eval_shape(lambda: self.module.init(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32),
                                                       train=False))
    gguf.unused_tensors(self.file, self.family, abstract["params"], self.module)  # Names and shapes checked now.
    self.what = self.where = path
    self.shapes = {name: tuple(leaf.shape) for name, leaf in paths.named_leaves(abstract["params"], "params/")}

  def read(self, targets):
    tree = {}
    for old, target in targets.items():
      _put(tree, old.split("/")[1:], target)
    loaded = gguf.load_params(self.file, self.family, tree, self.module, allow_unused=True)
    return dict(paths.named_leaves(loaded, "params/"))


def _put(tree, keys, value):
  for key in keys[:-1]:
    tree = tree.setdefault(key, {})
  tree[keys[-1]] = value


def _variables_by_name(state):
  """{'params/...' or 'batch_stats/...': array} of a TrainState (concrete or abstract)."""
  variables = {"params": state.params, **state.model_state}
  return dict(paths.named_leaves(variables))
