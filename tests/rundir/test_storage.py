"""jaxtrain.rundir.storage on a local directory and on a bucket of the emulator alike; what a
gs:// run writes (metrics, profile traces) and its one-line refusals: a bucket it may not
write, a missing gcsfs, and what Cloud Storage's errors mean."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from jaxtrain.errors import UserError
from jaxtrain.rundir import metrics
from jaxtrain.rundir import storage
from jaxtrain import runs
from jaxtrain import train
from test_train import tiny_config


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
  return str(tmp_path) if request.param == "local" else f"{request.getfixturevalue('bucket')}/{tmp_path.name}"


def test_the_same_calls_do_the_same_on_disk_and_on_a_bucket(root, tmp_path):
  storage.makedirs(f"{root}/run/sub")
  storage.write_text(f"{root}/run/a.json", '{"x": 1}\n')
  storage.write_bytes(f"{root}/run/sub/b.bin", b"\x00\x01")
  (tmp_path / "local.txt").write_text("copied")
  storage.copy_in(str(tmp_path / "local.txt"), f"{root}/run/c.txt")
  assert storage.read_text(f"{root}/run/a.json") == '{"x": 1}\n'
  assert sorted(storage.listdir(f"{root}/run")) == ["a.json", "c.txt", "sub"]
  assert storage.isdir(f"{root}/run/sub") and storage.isfile(f"{root}/run/c.txt")
  assert not storage.isfile(f"{root}/run/sub") and not storage.exists(f"{root}/run/nothing")
  assert sorted(os.path.relpath(p, f"{root}/run") for p in storage.files_under(f"{root}/run")) == [
      "a.json", "c.txt", "sub/b.bin"]
  with storage.open_file(f"{root}/run/sub/b.bin", "rb") as f:
    assert f.read() == b"\x00\x01"
  storage.makedirs(f"{root}/aside")
  storage.move(f"{root}/run/sub", f"{root}/aside/sub")  # A directory, as a damaged checkpoint is set aside.
  assert not storage.exists(f"{root}/run/sub") and storage.read_text(f"{root}/run/c.txt") == "copied"
  assert storage.files_under(f"{root}/aside") == [f"{root}/aside/sub/b.bin"]
  with pytest.raises(FileNotFoundError):
    storage.read_text(f"{root}/run/nothing")
  assert storage.is_gcs(root) == root.startswith("gs://")


def test_metrics_on_a_bucket_are_rewritten_whole_and_a_resume_drops_later_rows(root):
  workdir = f"{root}/run"
  storage.makedirs(workdir)
  writer = metrics.Writer(workdir)
  for step in (10, 20, 30):
    writer.write(step, {"train/loss": 1.0 / step})
  writer.write_texts(20, "samples", [{"prompt": "a", "completion": "b\u2028c"}])
  writer.close()
  resumed = metrics.Writer(workdir, start_step=20)  # As a resume from checkpoint 20 starts.
  resumed.write(30, {"train/loss": 0.5})
  resumed.close()
  rows = [json.loads(line) for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]
  assert rows == [{"step": 10, "train/loss": 0.1}, {"step": 20, "train/loss": 0.05}, {"step": 30, "train/loss": 0.5}]
  samples = storage.read_text(f"{workdir}/samples.jsonl")
  assert [json.loads(line) for line in samples.split("\n")[:-1]] == [
      {"step": 20, "evaluator": "samples", "prompt": "a", "completion": "b\u2028c"}]
  assert len(storage.listdir(f"{workdir}/tensorboard")) == 2  # One event file per start.


def test_an_evaluation_beside_a_live_run_on_a_bucket_loses_no_row(bucket):
  """Two writers of one metrics.jsonl (the run, and --mode=eval, which takes no lock)."""
  training, evaluation = metrics.Writer(f"{bucket}/beside"), metrics.Writer(f"{bucket}/beside", start_step=None)
  training.write(10, {"train/loss": 1.0})
  training.flush()
  evaluation.write(10, {"val/loss": 2.0})  # Its first row goes out at once, then it waits a second.
  training.write(20, {"train/loss": 0.5})
  evaluation.write(20, {"val/loss": 1.5})  # Waits: the same writer wrote less than a second ago.
  training.close()
  evaluation.close()
  rows = [json.loads(line) for line in storage.read_text(f"{bucket}/beside/metrics.jsonl").splitlines()]
  assert sorted((r["step"], *r) for r in rows) == [(10, "step", "train/loss"), (10, "step", "val/loss"),
                                                   (20, "step", "train/loss"), (20, "step", "val/loss")]


def test_a_profile_trace_on_a_bucket(bucket, tfds_dir):
  c = tiny_config()
  c.profile = dict(start_step=5, num_steps=3)
  train.run(c, f"{bucket}/profiled")
  names = [os.path.basename(p) for p in storage.files_under(f"{bucket}/profiled/profile")]
  assert "perfetto_trace.json.gz" in names and any(name.endswith(".xplane.pb") for name in names)


def test_a_bucket_it_may_not_write_is_one_line_and_nothing_is_written(bucket, tfds_dir, monkeypatch):
  from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
  from google.cloud import storage as gcs  # pylint: disable=import-outside-toplevel

  def forbidden(*args, **kwargs):
    raise exceptions.Forbidden("POST https://storage.googleapis.com/upload/storage/v1/b/b/o: me@p.iam.gserviceaccount"
                               ".com does not have storage.objects.create access to the Google Cloud Storage object.")

  monkeypatch.setattr(gcs.Blob, "upload_from_string", forbidden)  # The lock object: the run's first write.
  workdir = f"{bucket}/forbidden"
  with pytest.raises(UserError) as e:
    train.run(tiny_config(), workdir)
  assert str(e.value).startswith(f"--workdir={workdir}: cannot write the run's lock object: no permission (Forbidden: "
                                 f"403 POST ")
  assert str(e.value).endswith("; grant this account roles/storage.objectAdmin on the bucket")
  assert not storage.exists(workdir)


def test_no_credentials_is_one_line_before_any_work(tmp_path):
  """No emulator, and credentials that are not there: google-auth says so at once, with no
  network needed (no bucket is reached)."""
  env = {k: v for k, v in os.environ.items() if k not in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
  env["GOOGLE_APPLICATION_CREDENTIALS"] = str(tmp_path / "missing-key.json")
  result = subprocess.run([sys.executable, "-m", "jaxtrain.launch", "--config=experiments/digits.py:mlp",
                           "--workdir=gs://some-bucket/run"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 2
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith("error: --workdir=gs://some-bucket/run: cannot reach bucket gs://some-bucket: no credentials "
                         "(DefaultCredentialsError: File ") and "missing-key.json was not found" in line
  assert line.endswith("; run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS "
                       "(on a VM: give it a service account)")


def test_what_cloud_storage_errors_mean():
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
  from gcsfs.retry import HttpError  # pylint: disable=import-outside-toplevel
  anonymous = HttpError({"code": 401, "message": "Anonymous caller does not have storage.buckets.get access to the "
                                                 "Google Cloud Storage bucket."})
  assert storage.access_problem(anonymous).startswith("no credentials (HttpError: Anonymous caller does not have ")
  assert storage.access_problem(anonymous).endswith("; run `gcloud auth application-default login`, or set "
                                                    "GOOGLE_APPLICATION_CREDENTIALS (on a VM: give it a service "
                                                    "account)")
  denied = HttpError({"code": 403, "message": "me@p.iam.gserviceaccount.com does not have storage.buckets.get access"})
  assert storage.access_problem(denied).startswith("no permission (HttpError: me@p.iam")
  assert storage.access_problem(ConnectionError("Cannot connect to host storage.googleapis.com:443")) == (
      "ConnectionError: Cannot connect to host storage.googleapis.com:443")


def test_without_gcsfs_a_bucket_work_directory_is_one_line(monkeypatch):
  monkeypatch.setitem(sys.modules, "gcsfs", None)  # As if not installed.
  storage.gcs.cache_clear()
  try:
    with pytest.raises(UserError, match=r"^a gs:// work directory needs gcsfs and google-cloud-storage: "
                                        r"pip install -e '\.\[gcs\]'$"):
      storage.check_bucket("gs://some-bucket/run")
  finally:
    storage.gcs.cache_clear()


def no_network(*args, **kwargs):
  raise AssertionError("Cloud Storage was reached")


RULES = ("fix it (Cloud Storage bucket names are 3-63 characters of lowercase letters, digits, '-', '_' and '.', "
         "starting and ending with a letter or digit; with dots, up to 222, each part between dots at most 63)")


@pytest.mark.parametrize("name, problem", [
    ("jt", "it is shorter than 3 characters"),
    ("JT-runs", "'J' is not allowed"),
    ("my bucket", "' ' is not allowed"),
    ("-jt-runs", "it must start and end with a letter or digit"),
    ("jt-runs_", "it must start and end with a letter or digit"),
    ("a" * 64, "it is longer than 63 characters"),
    ("a." + "b" * 64, "a part between dots is longer than 63 characters"),
    (".".join(["a" * 60] * 4), "it is longer than 222 characters"),
])
def test_an_invalid_bucket_name_is_one_line_before_any_network(name, problem, monkeypatch):
  """TensorStore would end in a traceback: refused at start-up, no emulator needed, nothing reached."""
  monkeypatch.setattr(storage, "client", no_network)
  monkeypatch.setattr(storage, "gcs", no_network)
  with pytest.raises(UserError) as e:
    train.run(tiny_config(), f"gs://{name}/run")
  assert str(e.value) == f"--workdir=gs://{name}/run: bucket name {name!r} is invalid: {problem}; {RULES}"


def test_every_gs_path_has_its_bucket_name_checked(monkeypatch, capsys):
  """Not only work directories: whatever names a gs:// path (a run to compare, a model to
  load, a file to read) is refused before Cloud Storage is reached; good names pass."""
  monkeypatch.setattr(storage, "client", no_network)
  monkeypatch.setattr(storage, "gcs", no_network)
  for call in (storage.exists, storage.isdir, storage.read_text, storage.absolute):
    with pytest.raises(UserError, match=r"^gs://jt/run/x: bucket name 'jt' is invalid: it is shorter than 3 "):
      call("gs://jt/run/x")
  with pytest.raises(SystemExit) as exit_info:
    runs.main(["gs://Runs/d1"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == f"error: gs://Runs/d1: bucket name 'Runs' is invalid: 'R' is not allowed; {RULES}\n"
  for good in ("abc", "a" * 63, "my-bucket_2", "www.example.com", ".".join(["a" * 63] * 3 + ["b" * 30])):
    assert storage.absolute(f"gs://{good}/run/") == f"gs://{good}/run"
  with pytest.raises(UserError, match=r"^--workdir=gs:///run names no bucket; give gs://BUCKET/PATH$"):
    storage.one_spelling("gs:///run")
