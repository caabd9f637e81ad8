"""Writing a trained language model in Hugging Face's formats, and PEFT adapters back in:
what `python -m jaxtrain.export` runs (see there for the formats), importable by tests and
notebooks without that command's flags.
"""

import json
import os
import shutil

from absl import logging
import jax
import numpy as np

from jaxtrain import config as config_lib
from jaxtrain.lm import hf_llama
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.models import lora as lora_lib
from jaxtrain.rundir import storage
from jaxtrain.errors import UserError

FORMATS = ("hf", "peft")
PREFIX = "base_model.model."  # PEFT's names: the PeftModel, then the wrapped LlamaForCausalLM's own.


def export(workdir, fmt, out, step=None, dtype="float32"):
  """Writes run `workdir` (its newest checkpoint, or `step`) to `out` in format `fmt`."""
  if fmt not in FORMATS:
    raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
  if storage.is_gcs(out):
    raise UserError(f"--out={out}: export writes a local directory; give a local path (then `gcloud storage cp -r` "
                    f"it to the bucket)")
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise UserError(f"--out={out} exists and is not empty; export to a new directory")
  if not storage.isdir(os.path.join(workdir, "checkpoints")):
    raise UserError(f"--workdir={workdir} is not a jaxtrain work directory (no checkpoints/)")
  lm = lm_lib.load(workdir, step)
  if fmt == "hf":
    lm.export_hf(out, dtype)
    return
  if lm.lora is None:
    raise UserError(f"{workdir} is not a LoRA run (no config.lora): export it with --format=hf")
  run_config = lm_lib._run_config(workdir)  # pylint: disable=protected-access
  hf_dir = config_lib.Reader(run_config).section("init_from").get("hf_dir", kind=str)
  spec, params = lm.lora
  save_peft(out, lm.module, spec, params, base=os.path.abspath(os.path.expanduser(hf_dir)) if hf_dir else None)


def peft_tensors(spec, params):
  """{PEFT tensor name: numpy array} of a LoRA Llama's adapters: lora_A.weight is A.T
  [rank, in], lora_B.weight is B.T [out, rank], one pair per layer of stacked params."""
  tensors = {}
  for kernel, (a, b) in lora_lib.adapters(params).items():
    for layer, (module, _) in _modules(kernel, a):
      a_i, b_i = (a, b) if layer is None else (a[layer], b[layer])
      tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a_i.T, np.float32)
      tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b_i.T, np.float32)
  return tensors


def _modules(kernel, a):
  """[(layer index or None, (HF module name, transposed))] of a kernel name."""
  path = kernel[len("params/"):]
  if path.startswith("layers/"):  # scan_layers: stacked on axis 0.
    return [(i, _module(hf_llama.hf_name(path, i))) for i in range(a.shape[0])]
  return [(None, _module(hf_llama.hf_name(path)))]


def _module(named):
  name, transposed = named
  return name[:-len(".weight")], transposed


def target_modules(module, spec):
  """PEFT's target_modules: the short names ('q_proj') where every Dense of that name is
  adapted, else the full module names (PEFT matches a name or a '.'-suffix of one)."""
  every = lora_lib.dense_kernels(module, lm_lib.EXAMPLE)
  short = lambda kernel: kernel.split("/")[-2]  # noqa: E731
  targets = []
  for name in sorted({short(k) for k in spec.kernels}):
    if {k for k in every if short(k) == name} <= set(spec.kernels):
      targets.append(name)
    else:
      targets += [m for k in spec.kernels if short(k) == name
                  for _, (m, _) in _modules(k, np.zeros((module.num_layers,)))]
  return targets


def adapter_config(module, spec, base=None):
  return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": spec.rank,
          "lora_alpha": spec.alpha, "lora_dropout": spec.dropout, "target_modules": target_modules(module, spec),
          "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
          "use_rslora": False, "use_dora": False, "modules_to_save": None, "layers_to_transform": None,
          "rank_pattern": {}, "alpha_pattern": {}}


def save_peft(directory, module, spec, params, base=None):
  """Writes a PEFT adapter directory, beside `directory` first and renamed into place."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  tensors = peft_tensors(spec, jax.device_get(params))
  if jax.process_index() != 0:
    return
  tmp = directory.rstrip("/") + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(tmp, "adapter_config.json"), "w", encoding="utf-8") as f:
    json.dump(adapter_config(module, spec, base), f, indent=2, sort_keys=True)
  if os.path.exists(directory):
    os.rmdir(directory)  # Empty: checked by the caller.
  os.replace(tmp, directory)
  logging.info("Wrote %s (PEFT LoRA adapter, %d tensors).", directory, len(tensors))


def read_peft(directory, params):
  """`params` of a LoRA Llama with its adapters read from a PEFT adapter directory."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  tensors = load_file(os.path.join(directory, "adapter_model.safetensors"))

  def read(path, leaf):
    name = "params/" + jax.tree_util.keystr(path, simple=True, separator="/")
    if not lora_lib.is_adapter(name):
      return leaf
    which = name.rsplit("/", 1)[1]
    parts = [tensors[f"{PREFIX}{m}.{which}.weight"].T for _, (m, _) in _modules(name.rsplit("/", 1)[0] + "/kernel",
                                                                                 leaf)]
    return np.stack(parts) if name.startswith("params/layers/") else parts[0]

  return jax.tree_util.tree_map_with_path(read, params)
