"""A trained language model out to Hugging Face's formats and to GGUF: what `python -m
jaxtrain.export` runs (see there for the formats), importable by tests and notebooks
without its flags."""

import os

import ml_collections

from jaxtrain import config as config_lib
from jaxtrain.errors import UserError
from jaxtrain.lm import gguf
from jaxtrain.lm import hf
from jaxtrain.lm import language_model as lm_lib
from jaxtrain.lm import peft
from jaxtrain.rundir import layout
from jaxtrain.rundir import storage

FORMATS = ("hf", "peft", "gguf")


def export(workdir, fmt, out, step=None, dtype="float32", outtype="f32"):
  """Writes run `workdir` (its newest checkpoint, or `step`) to `out` in format `fmt`
  (`outtype`: the GGUF tensor type)."""
  if fmt not in FORMATS:
    raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
  if storage.is_gcs(out):
    raise UserError(f"--out={out}: export writes a local path; give one (then `gcloud storage cp -r` it to the "
                    f"bucket)")
  if fmt == "gguf":
    gguf.check_outtype(outtype)
  try:
    (gguf.check_new_file if fmt == "gguf" else hf.check_new_directory)(out)
  except UserError as e:
    raise UserError(f"--out={e}") from None
  if not layout.has_checkpoints(workdir):
    raise UserError(f"--workdir={workdir} is not a jaxtrain work directory (no checkpoints/)")
  run_config = config_lib.Reader(ml_collections.ConfigDict(layout.read_config(workdir, key="--workdir")))
  lm = lm_lib.load(workdir, step)
  if fmt == "hf":
    lm.export_hf(out, dtype)
    return
  if fmt == "gguf":
    lm.export_gguf(out, outtype)
    return
  if lm.lora is None:
    raise UserError(f"{workdir} is not a LoRA run (no config.lora): export it with --format=hf")
  hf_dir = run_config.section("init_from").get("hf_dir", kind=str)
  spec, params = lm.lora
  peft.save_peft(out, lm.family, lm.module, lm_lib.EXAMPLE, spec, params,
                 base=os.path.abspath(os.path.expanduser(hf_dir)) if hf_dir else None)
