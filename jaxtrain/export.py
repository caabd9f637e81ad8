"""Command line: a trained language model out to Hugging Face's formats and to GGUF.

    python -m jaxtrain.export --workdir=runs/code_lm --format=hf --out=out/code_lm_hf [--step=N] [--dtype=bfloat16]
    python -m jaxtrain.export --workdir=runs/lora --format=peft --out=out/lora_adapter [--step=N]
    python -m jaxtrain.export --workdir=runs/chat --format=gguf --out=out/chat.gguf [--outtype=f32|f16|bf16|q8_0]

`hf`: a `LlamaForCausalLM` directory (config.json, model.safetensors, the tokenizer); a
LoRA run's adapters are merged into the kernels first (W + alpha/rank A B). `peft`: a LoRA
run's adapters alone, as the `peft` library saves them (adapter_config.json,
adapter_model.safetensors), for `PeftModel.from_pretrained(base, DIR)` on the base model
the run started from (its init_from.hf_dir, written as base_model_name_or_path). --out
must be new or empty: nothing is written over, and nothing is half-written. `gguf`: one
file that llama.cpp, Ollama and LM Studio run (LoRA merged), with the tokenizer and chat
template; --out must not exist.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging

from jaxtrain.checkpoints import checkpointer as checkpoint
from jaxtrain import errors
from jaxtrain.errors import UserError, exit_with
from jaxtrain.lm.export import export
from jaxtrain.rundir import storage

_WORKDIR = flags.DEFINE_string("workdir", None, "The jaxtrain work directory (a language model run) to export.")
_FORMAT = flags.DEFINE_string("format", "hf", "hf: a merged Hugging Face directory; peft: a LoRA adapter; "
                              "gguf: a GGUF file for llama.cpp.")
_OUT = flags.DEFINE_string("out", None, "The directory to write (new or empty), or the .gguf file (new).")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint (default: the newest).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Of the weights written (--format=hf).")
_OUTTYPE = flags.DEFINE_enum("outtype", "f32", ["f32", "f16", "bf16", "q8_0"],
                             "Of the tensors written (--format=gguf); norms stay f32.")


def check_out(out):
  """--out (absolute): the export is made in its parent and renamed into place, after the
  model is loaded; the parent taking new files is tried first. export() names the rest."""
  parent = os.path.dirname(out)
  if storage.is_gcs(out) or not os.path.isdir(parent):
    return
  problem = storage.writable_problem(parent)
  if problem:
    raise UserError(f"--out={out}: cannot write in {parent} ({problem}); export to a writable place")


def main(argv):
  if len(argv) > 1:
    exit_with(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(checkpoint.QuietReading())
  try:
    if not _WORKDIR.value or not _OUT.value:
      raise UserError("give --workdir=RUN and --out=DIR (or --out=FILE.gguf)")
    workdir, out = storage.absolute_path(_WORKDIR.value, "workdir"), storage.absolute_path(_OUT.value, "out")
    check_out(out)
    export(workdir, _FORMAT.value, out, _STEP.value, _DTYPE.value, _OUTTYPE.value)
  except UserError as e:
    exit_with(e)
  print(f"wrote {out}")
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main, flags_parser=errors.parse_flags)
