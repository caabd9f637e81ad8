"""LoRA adapters as the `peft` library saves them (adapter_config.json,
adapter_model.safetensors), out of a LoRA run and back in: names follow the model family's
Hugging Face names, under PeftModel's prefix, so every family (Llama, Qwen2, Qwen3,
Mistral) is written alike. Adapters sit on kernels alone: q/k/v biases (Qwen2) stay the
base model's, as PEFT's `bias='none'` says.
"""

import json
import os

from absl import logging
import jax
import numpy as np

from jaxtrain.errors import UserError, first_line
from jaxtrain.lm import hf
from jaxtrain.models import lora as lora_lib
from jaxtrain import paths

PREFIX = "base_model.model."  # PEFT's names: the PeftModel, then the wrapped model's own.


def peft_tensors(family, spec, params):
  """{PEFT tensor name: numpy array} of a LoRA model's adapters: lora_A.weight is A.T
  [rank, in], lora_B.weight is B.T [out, rank], one pair per layer of stacked params."""
  tensors = {}
  for kernel, (a, b) in lora_lib.adapters(params).items():
    for layer, module in _modules(family, kernel, a):
      a_i, b_i = (a, b) if layer is None else (a[layer], b[layer])
      tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a_i.T, np.float32)
      tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b_i.T, np.float32)
  return tensors


def _modules(family, kernel, a):
  """[(layer index or None, HF module name)] of a kernel name ('params/.../kernel')."""
  path = kernel[len("params/"):]
  layers = range(a.shape[0]) if family.is_stacked(path) else [None]  # scan_layers: stacked on axis 0.
  return [(layer, family.hf_name(path, layer)[0][:-len(".weight")]) for layer in layers]


def target_modules(family, module, example, spec):
  """PEFT's target_modules: the short names ('q_proj') where every Dense of that name is
  adapted, else the full module names (PEFT matches a name or a '.'-suffix of one)."""
  every = lora_lib.dense_kernels(module, example)
  short = lambda kernel: kernel.split("/")[-2]  # noqa: E731
  targets = []
  for name in sorted({short(k) for k in spec.kernels}):
    if {k for k in every if short(k) == name} <= set(spec.kernels):
      targets.append(name)
    else:
      targets += [m for k in spec.kernels if short(k) == name
                  for _, m in _modules(family, k, np.zeros((module.num_layers,)))]
  return targets


def adapter_config(family, module, example, spec, base=None):
  return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": spec.rank,
          "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
          "target_modules": target_modules(family, module, example, spec), "bias": "none", "fan_in_fan_out": False,
          "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
          "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {}}


def save_peft(directory, family, module, example, spec, params, base=None):
  """Writes a PEFT adapter directory, beside `directory` first and renamed into place."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  hf.check_new_directory(directory)
  tensors = peft_tensors(family, spec, jax.device_get(params))
  if jax.process_index() != 0:
    return

  def write(tmp):
    save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "adapter_config.json"), "w", encoding="utf-8") as f:
      json.dump(adapter_config(family, module, example, spec, base), f, indent=2, sort_keys=True)
  hf.write_directory(directory, write)
  logging.info("Wrote %s (PEFT LoRA adapter, %d tensors).", directory, len(tensors))


def read_peft(directory, family, params):
  """`params` of a LoRA model with its adapters read from a PEFT adapter directory."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  path = os.path.join(directory, "adapter_model.safetensors")
  try:
    tensors = load_file(path)
  except Exception as e:  # pylint: disable=broad-except  (SafetensorError: damaged; OSError: missing)
    raise UserError(f"{path} is not a whole safetensors file ({first_line(e, 120)}); copy it again") from None

  def read(path, leaf):
    name = "params/" + paths.name_of(path)
    if not lora_lib.is_adapter(name):
      return leaf
    kernel, which = name.rsplit("/", 1)
    parts = [tensors[f"{PREFIX}{m}.{which}.weight"].T for _, m in _modules(family, kernel + "/kernel", leaf)]
    return np.stack(parts) if family.is_stacked(name[len("params/"):]) else parts[0]

  return jax.tree_util.tree_map_with_path(read, params)
