"""Checkpoints and the faults around them: a restore that fails without the checkpoint
being damaged (out of memory, the storage failing, a shape Orbax refuses) stops the run and
moves nothing; a damaged one is set aside only once an older one restores, and never the
last; a full disk during a save is one line, and the run resumes once there is room.

The fast tests run `train.run` in-process on a small digits MLP and fake the failures (a
monkeypatched Orbax restore or save); the slow one fills a real 4 MiB tmpfs under the
launcher (where `mount` is permitted).
"""

import asyncio
import errno
import gc
import glob
import json
import logging as std_logging
import os
import shutil
import subprocess
import sys

import orbax.checkpoint as ocp
import pytest

from conftest import ROOT
from test_train import tiny_config
from jaxtrain.checkpoints import faults as checkpoint_faults
from jaxtrain.errors import UserError
from jaxtrain.rundir import disk
from jaxtrain.rundir import exits
from jaxtrain.rundir import layout
from jaxtrain.rundir import storage
from jaxtrain import train


@pytest.fixture(scope="module")
def uninterrupted(tfds_dir, tmp_path_factory):
  """A whole run of 30 steps: checkpoints 10, 20 and 30."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
  train.run(tiny_config(), workdir)
  return workdir


@pytest.fixture
def trained_20(uninterrupted):
  return uninterrupted  # Each test takes it with `copy_of`: as if killed after saving step 20.


def copy_of(workdir, tmp_path):
  """A copy of the run without checkpoint 30: as if it had been killed after saving 20 (the
  rows it logged after 20 are still there; a resume drops them)."""
  target = str(tmp_path / "run")
  shutil.copytree(workdir, target)
  shutil.rmtree(os.path.join(target, "checkpoints", "30"))
  return target


def snapshot(workdir):
  """Everything a failed resume must leave as it was: the files under checkpoints/ (with
  their sizes), metrics.jsonl byte for byte, and that nothing was set aside."""
  files = sorted((os.path.relpath(p, workdir), os.path.getsize(p))
                 for p in glob.glob(os.path.join(workdir, "checkpoints", "**"), recursive=True) if os.path.isfile(p))
  with open(os.path.join(workdir, "metrics.jsonl"), "rb") as f:
    metrics = f.read()
  return files, metrics, os.path.exists(os.path.join(workdir, "checkpoints_set_aside"))


def rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith(("_per_sec", "_seconds"))} for line in f]


def damage(workdir, step):
  """Truncates the parameters' data files, as a full disk or a bad copy would leave them."""
  for name in glob.glob(os.path.join(workdir, "checkpoints", str(step), "params", "ocdbt.process_0", "d", "*")):
    with open(name, "r+b") as f:
      f.truncate(10)


# ---- A restore that fails for another reason than damage: stop, move nothing -----------------

FAILURES = {
    "out of memory": (MemoryError("Out of memory while trying to allocate 4294967296 bytes."),
                      "MemoryError: Out of memory while trying to allocate 4294967296 bytes; nothing was moved; "
                      "there was not enough memory to restore it"),
    "EIO": (OSError(errno.EIO, "Input/output error"),
            "OSError: [Errno 5] Input/output error; nothing was moved; reading it failed: check that"),
    "permission": (PermissionError(errno.EACCES, "Permission denied"),
                   "PermissionError: [Errno 13] Permission denied; nothing was moved; reading it failed"),
    "timeout": (TimeoutError("Timed out after 600 s reading from gs://bucket"),
                "TimeoutError: Timed out after 600 s reading from gs://bucket; nothing was moved; reading it failed"),
    "shape": (ValueError("Requested shape (64, 32) is not compatible with the stored shape (32, 64)."),
              "ValueError: Requested shape (64, 32) is not compatible with the stored shape (32, 64); nothing was "
              "moved; none of its files is missing or undecodable, so it was not set aside"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_restore_error_that_is_not_damage_stops_the_run_and_moves_nothing(trained_20, tmp_path, monkeypatch,
                                                                              failure):
  error, expected = FAILURES[failure]
  workdir = copy_of(trained_20, tmp_path)
  before = snapshot(workdir)

  def fails(self, step, *args, **kwargs):
    raise error

  monkeypatch.setattr(ocp.CheckpointManager, "restore", fails)
  with pytest.raises(checkpoint_faults.RestoreFailed) as e:
    train.run(tiny_config(), workdir)
  message = str(e.value)
  assert message.startswith(f"could not restore checkpoint {workdir}/checkpoints/20: {expected}"), message
  assert "\n" not in message
  assert snapshot(workdir) == before  # Checkpoints and metric rows all still there.


# ---- A damaged checkpoint: set aside once an older one restores; never the last -------------


def test_a_damaged_newest_checkpoint_is_set_aside_once_the_one_before_restores(trained_20, uninterrupted, tmp_path,
                                                                               caplog):
  workdir = copy_of(trained_20, tmp_path)
  damage(workdir, 20)
  with caplog.at_level(std_logging.WARNING):
    train.run(tiny_config(), workdir)
  [warning] = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert warning.startswith(f"checkpoint {workdir}/checkpoints/20 is damaged (params, array ")
  assert "OUT_OF_RANGE" in warning and "is not valid for value of size 10" in warning
  assert warning.endswith(f"moved it to {workdir}/checkpoints_set_aside/20 and resumed from checkpoint 10, "
                          f"the newest that restores.")
  assert os.listdir(os.path.join(workdir, "checkpoints_set_aside")) == ["20"]
  assert rows(workdir) == rows(uninterrupted)  # Resumed at 10: the same run as one never stopped.


@pytest.mark.parametrize("damaged", [[20, 10], [10]])
def test_when_no_checkpoint_restores_the_run_stops_and_moves_nothing(trained_20, tmp_path, damaged):
  workdir = copy_of(trained_20, tmp_path)
  if damaged == [10]:  # The only checkpoint.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "20"))
  for step in damaged:
    damage(workdir, step)
  before = snapshot(workdir)
  with pytest.raises(UserError) as e:
    train.run(tiny_config(), workdir)
  message = str(e.value)
  which = "the only one is damaged" if len(damaged) == 1 else f"all {len(damaged)} are damaged"
  assert message.startswith(f"no checkpoint in {workdir}/checkpoints restores: {which} ({damaged[0]}: params, "
                            f"array "), message
  for step in damaged:
    assert f"{step}: params, array " in message
  assert message.endswith("nothing was moved and nothing started afresh; put back intact copies, or start afresh "
                          "with a new --workdir")
  assert "\n" not in message
  assert snapshot(workdir) == before  # Never started afresh: every metric row is still there.


def test_a_damaged_newest_then_a_restore_error_moves_neither(trained_20, tmp_path, monkeypatch):
  workdir = copy_of(trained_20, tmp_path)
  damage(workdir, 20)
  before = snapshot(workdir)
  real_restore = ocp.CheckpointManager.restore

  def fails_at_10(self, step, *args, **kwargs):
    if step == 10:
      raise OSError(errno.EIO, "Input/output error")
    return real_restore(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", fails_at_10)
  with pytest.raises(UserError, match=r"^could not restore checkpoint .*/10: OSError: \[Errno 5\] Input/output error; "
                                      r"nothing was moved; .* \(the newer checkpoint 20 is damaged, and stayed where "
                                      r"it was\)$"):
    train.run(tiny_config(), workdir)
  assert snapshot(workdir) == before


# ---- What counts as damage: found by reading the files, not by Orbax's message ---------------


def _truncate_data(path):
  damage_files(path, "params/ocdbt.process_0/d/*", lambda f: f.truncate(10))


def damage_files(path, pattern, change):
  names = glob.glob(os.path.join(path, pattern))
  assert names, pattern
  for name in names:
    with open(name, "r+b") as f:
      change(f)


def _zero(f):
  size = os.fstat(f.fileno()).st_size
  f.seek(0)
  f.write(b"\0" * size)


DAMAGE = {  # What was done to checkpoint 20 -> what find_damage says.
    "data files truncated": (_truncate_data, "params, array Dense_0.kernel: OUT_OF_RANGE: Error reading "),
    "data files zeroed": (lambda p: damage_files(p, "params/ocdbt.process_0/d/*", _zero),
                          "FAILED_PRECONDITION: Error reading "),
    "data files deleted": (lambda p: [os.remove(n) for n in glob.glob(f"{p}/opt_state/ocdbt.process_0/d/*")],
                           "opt_state, array "),
    "manifest truncated": (lambda p: damage_files(p, "params/manifest.ocdbt", lambda f: f.truncate(5)),
                           'params: DATA_LOSS: Error decoding "manifest.ocdbt": Error decoding manifest'),
    "manifest deleted": (lambda p: os.remove(os.path.join(p, "params", "manifest.ocdbt")),
                         "params/manifest.ocdbt is missing"),
    "_METADATA deleted": (lambda p: os.remove(os.path.join(p, "rest", "_METADATA")), "rest/_METADATA is missing"),
    "_METADATA garbled": (lambda p: damage_files(p, "params/_METADATA", lambda f: f.write(b"{garbage")),
                          "params/_METADATA is not valid JSON"),
    "an item missing": (lambda p: shutil.rmtree(os.path.join(p, "opt_state")), "its opt_state/ is missing"),
    "metadata garbled": (lambda p: damage_files(p, "metadata/metadata", lambda f: f.write(b"{garbage")),
                         "metadata/metadata is not valid JSON"),
    "iterator position missing": (lambda p: [os.remove(n) for n in glob.glob(os.path.join(p, "data", "*.json"))],
                                  "data/ has no iterator position"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_found_by_reading_the_checkpoint_and_orbax_fails_on_it_too(trained_20, tmp_path, kind):
  change, expected = DAMAGE[kind]
  workdir = copy_of(trained_20, tmp_path)
  path = os.path.join(workdir, "checkpoints", "20")
  assert checkpoint_faults.find_damage(path) is None
  change(path)
  assert expected in (checkpoint_faults.find_damage(path) or "")
  shutil.rmtree(os.path.join(workdir, "checkpoints", "10"))
  with pytest.raises(UserError, match=f"restores: the only one is damaged \\(20: .*{expected[:20]}"):
    train.run(tiny_config(), workdir)  # Orbax cannot restore it either; the run says why in one line.


def test_a_storage_error_while_checking_is_no_evidence_of_damage(trained_20, tmp_path, monkeypatch):
  workdir = copy_of(trained_20, tmp_path)
  path = os.path.join(workdir, "checkpoints", "20")
  _truncate_data(path)

  def eio(name, *args, **kwargs):
    if f"{os.sep}d{os.sep}" in str(name):
      raise OSError(errno.EIO, "Input/output error", name)
    return open(name, *args, **kwargs)

  monkeypatch.setattr(storage, "open", eio, raising=False)  # The module's `open` before the builtin.
  assert checkpoint_faults.find_damage(path) is None


# ---- A full disk: one line --------------------------------------------------------------------


def test_a_save_on_a_full_disk_is_one_line_naming_the_directory_and_the_checkpoint_to_resume(trained_20, tmp_path,
                                                                                              monkeypatch):
  workdir = copy_of(trained_20, tmp_path)
  real_save = ocp.CheckpointManager.save

  def full_after_20(self, step, *args, **kwargs):
    if step > 20:  # The resume saves 30.
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_after_20)
  with pytest.raises(disk.DiskFull) as e:
    train.run(tiny_config(), workdir)
  message = str(e.value)
  assert message.startswith(f"the disk holding {workdir}/checkpoints is full (")
  assert message.endswith("saving a checkpoint failed; free space there (or lower checkpoint.keep) and run the "
                          "same command again to resume from checkpoint 20")
  assert "\n" not in message


def test_the_launcher_reports_a_full_disk_in_one_line_whichever_write_raises_last(tmp_path, capsys):
  """A save's DiskFull is often followed by the TensorBoard writer's own ENOSPC on close,
  which replaces it as the exception the launcher gets; or only that write fails."""
  workdir = tmp_path / "run"
  os.makedirs(workdir / "checkpoints" / "150")
  os.makedirs(workdir / "checkpoints" / "175.orbax-checkpoint-tmp-1")
  saved = disk.DiskFull(disk.message(str(workdir / "checkpoints"), "saving a checkpoint failed", str(workdir)))
  for error in (saved, _raised_during(saved, OSError(errno.ENOSPC, "No space left on device")),
                OSError(errno.ENOSPC, "No space left on device")):
    with pytest.raises(SystemExit) as e:
      exits.report(error, str(workdir))
    assert e.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: the disk holding {workdir}")
    assert " is full (" in line and line.endswith("run the same command again to resume from checkpoint 150")


def _raised_during(first, second):
  try:
    try:
      raise first
    finally:
      raise second
  except OSError as e:
    return e


def test_orbax_tracebacks_of_a_full_disk_are_dropped_and_others_kept():
  quiet = checkpoint_faults._QuietDiskFull()  # pylint: disable=protected-access
  orbax_file = "/site-packages/orbax/checkpoint/_src/checkpointers/async_checkpointer.py"

  def record(error, pathname=orbax_file):
    try:
      raise error
    except Exception:  # pylint: disable=broad-except
      return std_logging.LogRecord("absl", std_logging.ERROR, pathname, 264, "Failed to run", (), sys.exc_info())

  full = OSError(errno.ENOSPC, "No space left on device")
  assert not quiet.filter(record(full))
  assert not quiet.filter(record(ValueError("RESOURCE_EXHAUSTED: Error writing local file: [OS error 28: No space "
                                            "left on device]")))
  assert quiet.filter(record(OSError(errno.EIO, "Input/output error")))  # Another error: kept.
  assert quiet.filter(record(full, pathname="/work/my_code.py"))  # Not Orbax's: kept.


def test_asyncio_reports_of_orbax_reads_left_behind_are_dropped_and_others_kept(caplog):
  # What a damaged restore once left in CI: a failed read task that nobody awaited, logged by
  # asyncio with a traceback when collected. Made here for real, from code "in" Orbax's package.
  reads = {}
  for where in ("/site-packages/orbax/checkpoint/_src/serialization/serialization.py", "/work/my_code.py"):
    namespace = {}
    exec(compile("async def read():\n  raise Exception('Encountered error while reading array index: (slice(0, 8, 1),)')",
                 where, "exec"), namespace)
    reads[where] = namespace["read"]
  reads["another error"] = _fails_otherwise

  def leave_behind(make):
    async def main():
      task = asyncio.ensure_future(make())
      await asyncio.sleep(0)
      return task
    loop = asyncio.new_event_loop()
    task = loop.run_until_complete(main())
    loop.close()
    del task
    gc.collect()

  asyncio_logger = std_logging.getLogger("asyncio")
  filters = list(asyncio_logger.filters)
  try:
    checkpoint_faults.quiet_orbax_leftovers()
    for where, make in reads.items():
      caplog.clear()
      with caplog.at_level(std_logging.ERROR, logger="asyncio"):
        leave_behind(make)
      logged = [r for r in caplog.records if r.getMessage().startswith("Task exception was never retrieved")]
      assert len(logged) == (0 if "/orbax/" in where else 1), where
  finally:
    asyncio_logger.filters[:] = filters


async def _fails_otherwise():
  raise RuntimeError("not a read")


# ---- A real full disk (slow) -------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_full_disk_stops_with_one_line_and_the_run_resumes_once_there_is_room(reference, tmp_path):
  from test_interruptions import ARGS, assert_same_run  # pylint: disable=import-outside-toplevel
  disk = str(tmp_path / "disk")
  os.makedirs(disk)
  try:
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", disk], capture_output=True,
                             text=True, check=False)
  except FileNotFoundError:
    pytest.skip("no `mount` command here to make a small disk")
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip() or mounted.returncode}")
  try:
    workdir = os.path.join(disk, "run")  # 300 steps, a checkpoint of ~0.5 MiB every 25, all kept: 4 MiB fills.
    result = subprocess.run([sys.executable, "-m", "jaxtrain.launch", f"--workdir={workdir}", *ARGS], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    newest = layout.newest_complete_step(workdir)
    assert errors == [line for line in errors if line.endswith(f"resume from checkpoint {newest}")] and len(errors) == 1
    assert errors[0].startswith(f"error: the disk holding {workdir}/checkpoints is full (")
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr, result.stderr[-3000:]
    assert len(result.stderr.splitlines()) < 40  # Our INFO lines and the error: no tracebacks from Orbax's threads.
    subprocess.run(["mount", "-o", "remount,size=64m", disk], check=True)  # Room again.
    finished = subprocess.run([sys.executable, "-m", "jaxtrain.launch", f"--workdir={workdir}", *ARGS], cwd=ROOT,
                              capture_output=True, text=True, timeout=300, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"Resumed from checkpoint at step {newest}." in finished.stderr
    assert_same_run(workdir, reference)
  finally:
    subprocess.run(["umount", "-l", disk], check=False)


@pytest.fixture(scope="module")
def reference(tfds_dir, tmp_path_factory):
  from test_interruptions import finish  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  finish(workdir)
  return workdir
