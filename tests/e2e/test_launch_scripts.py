"""scripts/launch_tpu_vm.py and scripts/launch_slurm.py, run as a user runs them.

Mostly with --dry-run, comparing the printed `+ command` lines; a few runs go further with
a stand-in `gcloud`, `sbatch` or `srun` (a small Python script that records its arguments)
first on PATH, so what would run on a cluster is checked without one.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

TPU = os.path.join(ROOT, "scripts", "launch_tpu_vm.py")
SLURM = os.path.join(ROOT, "scripts", "launch_slurm.py")
# An override with a space and parentheses, and one with both kinds of quotes: the shell
# on the far side must hand them to jaxtrain.launch unchanged.
JOB = ["--config=experiments/digits.py", "--workdir=/mnt/shared/runs/d1", "--config.model.features=(8, 16)",
       """--config.name=it's "quoted\""""]
TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]
WHERE = ["--zone=us-central2-b"]
V4_32 = ["--name=d1", "--zone=us-central2-b", "--accelerator_type=v4-32"]


def run(script, *args, env=None, **kwargs):
  return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
                        env=env, check=False, **kwargs)


def commands(stdout):
  """The printed `+ ` lines, as argument lists."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def assert_usage_error(result, *words):
  assert result.returncode == 2, result.stdout + result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  for word in words:
    assert word in lines[0]
  assert not commands(result.stdout)


def fake_tool(bin_dir, name, body):
  """An executable `name` in bin_dir that appends its argv to $FAKE_LOG, then runs `body`."""
  bin_dir.mkdir(exist_ok=True)
  path = bin_dir / name
  path.write_text(f"#!{sys.executable}\n"
                  "import json, os, sys, tarfile, time\n"
                  "with open(os.environ['FAKE_LOG'], 'a') as f:\n"
                  "  f.write(json.dumps(sys.argv) + '\\n')\n" + body)
  path.chmod(0o755)


def logged(log):
  return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def remote_command(ssh):
  [command] = [arg.split("=", 1)[1] for arg in ssh if arg.startswith("--command=")]
  return command


# --- Cloud TPU VM ---------------------------------------------------------------------------


def test_tpu_creates_copies_runs_and_deletes_in_that_order():
  result = run(TPU, *V4_32, "--dry-run", "--", *JOB)
  assert result.returncode == 0, result.stderr
  tarball = "/tmp/jaxtrain-d1.tar.gz"
  create, archive, scp, ssh, delete = commands(result.stdout)
  assert create == TPU_VM + ["create", "d1", *WHERE, "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
  assert archive == ["git", "-C", ROOT, "archive", "--format=tar.gz", "-o", tarball, "HEAD"]
  assert scp == TPU_VM + ["scp", tarball, "d1:~/jaxtrain.tar.gz", "--worker=all", *WHERE]
  assert ssh[:-1] == TPU_VM + ["ssh", "d1", *WHERE, "--worker=all"]
  assert delete == TPU_VM + ["delete", "d1", *WHERE, "--quiet"]


UNPACK = ["set", "-e;", "mkdir", "-p", "~/jaxtrain", "&&", "tar", "-xzf", "~/jaxtrain.tar.gz", "-C", "~/jaxtrain",
          "&&", "cd", "~/jaxtrain"]


def test_tpu_workers_get_a_python_311_venv_install_then_run_the_users_arguments_unchanged():
  result = run(TPU, *V4_32, "--dry-run", "--", *JOB)
  command = remote_command(commands(result.stdout)[3])
  venv = "~/jaxtrain-venv"
  assert shlex.split(command) == [
      *UNPACK, "&&", "python3", "-m", "pip", "install", "-q", "--user", "uv",
      "&&", "{", "[", "-x", f"{venv}/bin/python", "]", "||", "python3", "-m", "uv", "venv", "-q", "--python", "3.11",
      f"{venv};", "}",
      "&&", "python3", "-m", "uv", "pip", "install", "-q", "--python", f"{venv}/bin/python", "-e", ".[gcs]", "jax[tpu]",
      "&&", f"{venv}/bin/python", "-m", "jaxtrain.launch", *JOB]
  assert "--coordinator_address" not in command  # jax.distributed.initialize() finds the workers itself.
  # And the workers' shell can parse it.
  assert subprocess.run(["bash", "-n", "-c", command], check=False).returncode == 0


def test_tpu_workers_use_a_given_python_as_it_is():
  result = run(TPU, *V4_32, "--python=/opt/py311/bin/python3", "--dry-run", "--", *JOB)
  command = remote_command(commands(result.stdout)[3])
  assert shlex.split(command) == [
      *UNPACK, "&&", "/opt/py311/bin/python3", "-m", "pip", "install", "-q", "-e", ".[gcs]", "jax[tpu]",
      "&&", "/opt/py311/bin/python3", "-m", "jaxtrain.launch", *JOB]
  assert subprocess.run(["bash", "-n", "-c", command], check=False).returncode == 0


def test_tpu_reuse_checks_the_vm_and_neither_creates_nor_deletes_it():
  result = run(TPU, "--name=d1", "--zone=us-central2-b", "--reuse", "--dry-run", "--", *JOB)
  assert result.returncode == 0, result.stderr
  steps = commands(result.stdout)
  assert steps[0] == TPU_VM + ["describe", "d1", *WHERE, "--format=value(state)"]
  assert [step[4] for step in steps[1:] if step[0] == "gcloud"] == ["scp", "ssh"]


def test_tpu_keep_creates_but_does_not_delete():
  steps = commands(run(TPU, *V4_32, "--keep", "--dry-run", "--", *JOB).stdout)
  assert [step[4] for step in steps if step[0] == "gcloud"] == ["create", "scp", "ssh"]


def test_tpu_project_goes_to_every_gcloud_command_and_spot_to_create():
  steps = commands(run(TPU, *V4_32, "--project=my-proj", "--spot", "--version=v2-alpha-tpuv5-lite", "--dry-run",
                       "--", *JOB).stdout)
  gcloud = [step for step in steps if step[0] == "gcloud"]
  assert len(gcloud) == 4
  assert all(step.count("--project=my-proj") == 1 for step in gcloud)
  assert gcloud[0] == TPU_VM + ["create", "d1", *WHERE, "--accelerator-type=v4-32", "--version=v2-alpha-tpuv5-lite",
                                "--project=my-proj", "--spot"]
  assert all("--spot" not in step for step in gcloud[1:])


@pytest.mark.parametrize("job,words", [
    ([], ["--config=", "--workdir="]),
    (["--config=experiments/digits.py"], ["--workdir="]),
    (["--workdir=/mnt/shared/runs/d1"], ["--config="]),
    (["--config=experiments/digits.py", "--workdir=runs/d1"], ["absolute"]),
])
def test_tpu_refuses_a_job_without_config_or_shared_workdir(job, words):
  assert_usage_error(run(TPU, *V4_32, "--dry-run", "--", *job), *words)


def test_tpu_takes_a_bucket_as_the_work_directory_unchanged():
  job = ["--config=experiments/digits.py", "--workdir=gs://my-bucket/runs/d1/"]
  result = run(TPU, *V4_32, "--dry-run", "--", *job)
  assert result.returncode == 0, result.stderr
  command = shlex.split(remote_command(commands(result.stdout)[3]))
  assert command[-3:] == ["jaxtrain.launch", *job]  # No mount: jaxtrain writes the bucket itself.
  assert "gs://BUCKET/DIR, which jaxtrain writes itself (no mount needed" in run(TPU, "--help").stdout


def test_tpu_without_gcloud_on_path_fails_in_one_line(tmp_path):
  assert_usage_error(run(TPU, *V4_32, "--", *JOB, env={"PATH": str(tmp_path)}), "gcloud")


def tpu_env(tmp_path, **fake):
  """PATH with a stand-in gcloud first: it checks what scp gets, and acts as `fake` says."""
  fake_tool(tmp_path / "bin", "gcloud", """
verb = sys.argv[4]
if verb == "scp":  # The tarball must hold the package.
  assert "jaxtrain/launch.py" in tarfile.open(sys.argv[5]).getnames()
if verb == "describe":
  print(os.environ.get("FAKE_STATE", "READY"))
if verb == "ssh" and os.environ.get("FAKE_SSH_SLEEP"):
  time.sleep(float(os.environ["FAKE_SSH_SLEEP"]))
sys.exit(int(os.environ.get(f"FAKE_{verb.upper()}_STATUS", "0")))
""")
  return dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp_path),
              FAKE_LOG=str(tmp_path / "log"), **fake)


def test_tpu_deletes_the_vm_when_the_job_fails_and_exits_with_its_status(tmp_path):
  result = run(TPU, *V4_32, "--", *JOB, env=tpu_env(tmp_path, FAKE_SSH_STATUS="3"))
  assert result.returncode == 3, result.stderr
  calls = logged(tmp_path / "log")
  assert [call[4] for call in calls] == ["create", "scp", "ssh", "delete"]
  assert [call[1:] for call in calls] == [step[1:] for step in commands(result.stdout) if step[0] == "gcloud"]
  assert not (tmp_path / "jaxtrain-d1.tar.gz").exists()  # The local tarball is cleaned up.


def test_tpu_deletes_the_vm_on_ctrl_c(tmp_path):
  env = tpu_env(tmp_path, FAKE_SSH_SLEEP="30")
  # A SIGINT ignored by whoever started pytest (a background job) would be inherited:
  # restore Python's handler in the child (a preexec_fn would fork a process running JAX).
  with_sigint = ("import os, runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "sys.argv = sys.argv[1:]; sys.path.insert(0, os.path.dirname(sys.argv[0])); "
                 "runpy.run_path(sys.argv[0], run_name='__main__')")
  with subprocess.Popen([sys.executable, "-c", with_sigint, TPU, *V4_32, "--", *JOB], cwd=ROOT, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as launcher:
    deadline = time.time() + 20
    while [call[4] for call in logged(tmp_path / "log")][-1:] != ["ssh"] and time.time() < deadline:
      time.sleep(0.05)
    launcher.send_signal(signal.SIGINT)
    launcher.communicate(timeout=20)
  assert launcher.returncode == 130
  assert [call[4] for call in logged(tmp_path / "log")] == ["create", "scp", "ssh", "delete"]


def test_tpu_does_not_delete_a_vm_it_failed_to_create(tmp_path):
  # The name may belong to someone else's TPU VM.
  result = run(TPU, *V4_32, "--", *JOB, env=tpu_env(tmp_path, FAKE_CREATE_STATUS="1"))
  assert result.returncode == 1
  assert [call[4] for call in logged(tmp_path / "log")] == ["create"]


def test_tpu_reuse_refuses_a_vm_that_is_not_ready(tmp_path):
  result = run(TPU, "--name=d1", "--zone=us-central2-b", "--reuse", "--", *JOB,
               env=tpu_env(tmp_path, FAKE_STATE="STOPPED"))
  assert result.returncode == 2
  # (A warning that the working tree has uncommitted changes may come first.)
  assert result.stderr.splitlines()[-1] == "error: TPU VM d1 is STOPPED, not READY"
  assert [call[4] for call in logged(tmp_path / "log")] == ["describe"]


# --- SLURM ----------------------------------------------------------------------------------


def slurm_dry_run(*args, job=JOB):
  """(the batch script, the sbatch command) that --dry-run prints."""
  result = run(SLURM, *args, "--dry-run", "--", *job)
  assert result.returncode == 0, result.stderr
  script, _, last = result.stdout.rstrip("\n").rpartition("\n")
  [submit] = commands(last)
  return script + "\n", submit


def directives(script):
  return [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_slurm_one_process_per_gpu_by_default(tmp_path):
  workdir = tmp_path / "run"
  script, submit = slurm_dry_run("--nodes=2", "--gpus_per_node=8", job=[JOB[0], f"--workdir={workdir}"])
  assert directives(script) == ["--job-name=jaxtrain", "--nodes=2", "--ntasks=16", "--ntasks-per-node=8",
                                "--gpus-per-task=1", f"--output={workdir}/slurm-%j.out",
                                "--signal=TERM@300"]
  assert "\nexport JAX_LOCAL_DEVICE_IDS=0\n" in script  # Its one visible GPU.
  assert submit == ["sbatch", f"{workdir}/slurm_job.sh"]
  assert not workdir.exists()  # A dry run writes nothing.


def test_slurm_one_process_per_node():
  script, _ = slurm_dry_run("--nodes=3", "--gpus_per_node=4", "--per=node", "--job_name=big")
  assert directives(script) == ["--job-name=big", "--nodes=3", "--ntasks-per-node=1", "--gpus-per-node=4",
                                "--output=/mnt/shared/runs/d1/slurm-%j.out", "--signal=TERM@300"]
  assert "\nexport JAX_LOCAL_DEVICE_IDS=0,1,2,3\n" in script  # All the node's GPUs.


def test_slurm_partition_and_time():
  script, _ = slurm_dry_run("--nodes=1", "--gpus_per_node=8", "--partition=a100", "--time=04:00:00")
  assert directives(script)[-3:] == ["--partition=a100", "--time=04:00:00", "--signal=TERM@300"]


def test_slurm_sigterm_before_the_time_limit_can_be_moved_or_dropped():
  script, _ = slurm_dry_run("--nodes=1", "--gpus_per_node=8", "--stop_before_limit=900")
  assert directives(script)[-1] == "--signal=TERM@900"
  script, _ = slurm_dry_run("--nodes=1", "--gpus_per_node=8", "--stop_before_limit=0")
  assert not any(d.startswith("--signal") for d in directives(script))


def test_slurm_script_runs_srun_from_the_repository():
  script, _ = slurm_dry_run("--nodes=2", "--gpus_per_node=8", "--venv=/opt/venvs/jax env")
  lines = script.splitlines()
  assert lines[0] == "#!/bin/bash"
  body = [line for line in lines if not line.startswith("#")]
  assert body[:3] == ["set -euo pipefail", f"cd {shlex.quote(ROOT)}", "source '/opt/venvs/jax env/bin/activate'"]
  assert shlex.split(body[-1]) == ["srun", "python", "-m", "jaxtrain.launch", *JOB]
  assert "SLURM_PROCID" in script and "SLURM_NTASKS" in script  # The comment on why no flags.
  assert "--coordinator_address" not in script


def test_slurm_script_hands_the_arguments_to_srun_unchanged(tmp_path):
  """Runs the batch script itself with a stand-in srun and venv."""
  venv = tmp_path / "my venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "activate").write_text("export FAKE_VENV=on\n")
  fake_tool(tmp_path / "bin", "srun", """
with open(os.environ['FAKE_LOG'], 'a') as f:
  f.write(json.dumps([os.getcwd(), os.environ.get('FAKE_VENV'), os.environ.get('JAX_LOCAL_DEVICE_IDS')]) + '\\n')
""")
  script, _ = slurm_dry_run("--nodes=2", "--gpus_per_node=8", f"--venv={venv}")
  (tmp_path / "job.sh").write_text(script)
  env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", FAKE_LOG=str(tmp_path / "log"))
  result = subprocess.run(["bash", str(tmp_path / "job.sh")], capture_output=True, text=True, env=env,
                          timeout=30, check=False)
  assert result.returncode == 0, result.stderr
  srun, where = logged(tmp_path / "log")
  assert srun[1:] == ["python", "-m", "jaxtrain.launch", *JOB]
  assert where == [ROOT, "on", "0"]


@pytest.mark.parametrize("job,words", [
    (["--config=experiments/digits.py"], ["--workdir="]),
    (["--workdir=/shared/runs/d1"], ["--config="]),
    (["--config=experiments/digits.py", "--workdir=runs/d1"], ["absolute"]),
    (["--config=experiments/digits.py", "--workdir=gs://b/runs/d1"], ["absolute"]),  # Its script goes in the workdir.
])
def test_slurm_refuses_a_job_without_config_or_absolute_workdir(job, words):
  assert_usage_error(run(SLURM, "--nodes=1", "--gpus_per_node=8", "--dry-run", "--", *job), *words)


def test_slurm_without_sbatch_on_path_fails_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  result = run(SLURM, "--nodes=1", "--gpus_per_node=8", "--", JOB[0], f"--workdir={workdir}",
               env={"PATH": str(tmp_path)})
  assert_usage_error(result, "sbatch")
  assert not workdir.exists()


def test_slurm_writes_the_script_into_the_workdir_and_submits_it(tmp_path):
  workdir = tmp_path / "run"
  job = [JOB[0], f"--workdir={workdir}"]
  fake_tool(tmp_path / "bin", "sbatch", "print('Submitted batch job 42')\n")
  env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", FAKE_LOG=str(tmp_path / "log"))
  result = run(SLURM, "--nodes=2", "--gpus_per_node=8", "--", *job, env=env)
  assert result.returncode == 0, result.stderr
  assert "Submitted batch job 42" in result.stdout
  path = workdir / "slurm_job.sh"
  assert commands(result.stdout) == [["sbatch", str(path)]]
  assert [call[1:] for call in logged(tmp_path / "log")] == [[str(path)]]
  assert path.read_text() == slurm_dry_run("--nodes=2", "--gpus_per_node=8", job=job)[0]
