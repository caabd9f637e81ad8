"""Command line: python -m jaxtrain.launch --config=experiments/NAME.py[:ARG] --workdir=DIR

`--mode=eval [--step=N]` evaluates a checkpoint instead of training.
`--config.a.b=value` overrides any config value. On several hosts, run the same command
on every host. In a SLURM job step (srun) or on a Cloud TPU VM, JAX finds the other
processes itself; elsewhere give `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`, which go to `jax.distributed.initialize`.

Failures a user can act on end as one line on stderr, `error: ...`, without a traceback:
a mistake (exit status 2), a full disk (2), a checkpoint that does not restore (2), a
lost peer process of a multi-process run (75, see peers.py).
"""

import logging as std_logging
import os
import re
import sys

if __name__ == "__main__":  # Before jax's import (2.5 s): this may start the command again (host_memory.py).
  from jaxtrain.training import host_memory
  host_memory.restart_with_huge_pages()

# pylint: disable=wrong-import-position
from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from jaxtrain import config as config_lib
from jaxtrain import errors
from jaxtrain.errors import UserError, exit_with
from jaxtrain.modes import dry_run
from jaxtrain.modes import evaluate
from jaxtrain.modes import lr_find
from jaxtrain import parallel
from jaxtrain.rundir import exits
from jaxtrain.rundir import peers
from jaxtrain.rundir import storage
from jaxtrain import train
# pylint: enable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file: path/to/experiment.py, or path.py:arg.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run keeps config, metrics and checkpoints.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "dry_run", "lr_find"],
                          "train (or resume); eval: run the evaluators on a checkpoint of --workdir; dry_run: "
                          "build and compile, print parameters, FLOPs, memory and cost, write nothing; lr_find: "
                          "a learning-rate range test from fresh parameters, --workdir untouched.")
_STEP = flags.DEFINE_integer("step", None, "With --mode=eval: the checkpoint to evaluate (default: the newest).")
_ACCELERATOR = flags.DEFINE_string("accelerator", None, "With --mode=dry_run: the device the cost estimate assumes "
                                   "(a name from the table it prints, e.g. tpu-v5e, h100).")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", None, "With --mode=dry_run: peak TFLOP/s per device (overrides "
                                  "--accelerator's).")
_PRICE = flags.DEFINE_float("price_per_hour", None, "With --mode=dry_run: price of one device-hour (overrides "
                            "--accelerator's).")
_LR_FIND_OUT = flags.DEFINE_string("lr_find_out", "lr_find.png", "With --mode=lr_find: the plot (outside --workdir).")
_LR_FIND_MIN = flags.DEFINE_float("lr_find_min", 1e-7, "With --mode=lr_find: the first learning rate.")
_LR_FIND_MAX = flags.DEFINE_float("lr_find_max", 10.0, "With --mode=lr_find: the last learning rate.")
_LR_FIND_STEPS = flags.DEFINE_integer("lr_find_steps", 100, "With --mode=lr_find: steps of the ramp.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: how many processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_LIBRARY_INFO = flags.DEFINE_bool("library_info_logs", False, "Also show INFO logs of Orbax, TFDS and JAX.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "On an error, also print the traceback (to debug your own code).")
flags.mark_flags_as_required(["config", "workdir"])

_CHATTY = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/", "/etils/")


class _QuietLibraries(std_logging.Filter):
  """Drops INFO lines of libraries that log every checkpoint step; keeps their warnings."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(p in record.pathname for p in _CHATTY)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}; flags are written --name=value")
  try:
    workdir = storage.absolute_path(_WORKDIR.value, "workdir")  # Once, here: every mode gets the same path.
  except UserError as e:
    _fail(e)
  if not _LIBRARY_INFO.value:
    logging.get_absl_handler().addFilter(_QuietLibraries())
  exits.quiet_disk_full_in_threads_and_atexit()
  cluster = parallel.join_processes(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if cluster:
    logging.info("Process %d of %d (found by %s).", jax.process_index(), jax.process_count(), cluster)
  config_file = config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]  # Less ':arg'.
  if not os.path.isfile(config_file):
    _fail(f"--config={config_file}: no such file")
  for line in config_lib.command_line_units(_CONFIG.value, sys.argv[1:]):
    logging.info("%s.", line)
  watch = peers.PeerWatch(workdir).start() if jax.process_count() > 1 else None
  try:
    if _MODE.value == "eval":
      evaluate.run(_CONFIG.value, workdir, _STEP.value)
    elif _MODE.value == "dry_run":
      dry_run.run(_CONFIG.value, workdir, accelerator=_ACCELERATOR.value, peak_tflops=_PEAK_TFLOPS.value,
                  price_per_hour=_PRICE.value)
    elif _MODE.value == "lr_find":
      lr_find.run(_CONFIG.value, workdir, out=_LR_FIND_OUT.value, lr_min=_LR_FIND_MIN.value,
                  lr_max=_LR_FIND_MAX.value, steps=_LR_FIND_STEPS.value)
    else:
      train.run(_CONFIG.value, workdir)
  except BaseException as e:  # pylint: disable=broad-except
    lost = peers.lost_peer(e)
    if lost:
      peers.exit_lost(lost, workdir)  # One line, then os._exit: no barrier waits for the dead process.
    if watch:
      watch.bye()  # This process leaves on purpose: the others are not to take it for a crash.
    exits.report(e, workdir, show_traceback=_TRACEBACK.value)
    raise
  if watch:
    watch.bye()
  exits.warn_of_quiet_failures()


_fail = exit_with  # A user's mistake: one line on stderr, no traceback, exit status 2.


def _parse_flags(argv):
  """Flag mistakes (a config that raises, a bad override, any other flag) as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if "Traceback" in text:  # get_config raised: the traceback's last line says why.
      _fail(f"{text.split(': Error whilst', 1)[0]}: get_config raised {text.strip().splitlines()[-1]}")
    if text.startswith("flag --config."):  # A bad override, in ml_collections' words (key, value and why).
      _fail(text)
    _fail(errors.flag_problem(e, argv))
  except SyntaxError as e:
    _fail(f"--config: {e.filename}:{e.lineno}: SyntaxError: {e.msg}")
  except (AttributeError, KeyError) as e:
    if "get_config" in str(e):
      _fail("--config: the file has no get_config() function; define get_config(arg=None) returning a ConfigDict")
    _fail(_no_such_key(str(e), argv))  # ml_collections has no such key.
  except Exception as e:  # pylint: disable=broad-except  (the config module raised while loading)
    _fail(f"--config: loading the file raised {type(e).__name__}: {e}")


def _no_such_key(text, argv):
  suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  missing = suggestion.group(2) if suggestion else re.sub(r"[^\w.]", "", text.split("\\n")[0])
  override = next((a.split("=")[0] for a in argv
                   if a.startswith("--config.") and missing in a.split("=")[0].split(".")), "--config.*")
  hint = f" (did you mean '{suggestion.group(1)}'?)" if suggestion else ""
  return f"{override}: the config has no key '{missing}'{hint}; overrides can only change keys the config file sets"


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
