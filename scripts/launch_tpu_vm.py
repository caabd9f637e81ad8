"""Runs a jaxtrain experiment on a Cloud TPU VM (one host or a whole pod slice).

    python scripts/launch_tpu_vm.py --name=NAME --zone=ZONE --accelerator_type=TYPE \\
        [--version=V] [--project=P] [--spot] [--reuse] [--keep] [--dry-run] \\
        -- --config=experiments/NAME.py[:ARG] --workdir=gs://BUCKET/DIR|/SHARED/DIR [--config.a.b=V ...]

Examples:

    # A v4-32 slice (4 hosts) for one run, deleted when the run ends:
    python scripts/launch_tpu_vm.py --name=d1 --zone=us-central2-b --accelerator_type=v4-32 \\
        -- --config=experiments/digits.py --workdir=gs://my-bucket/runs/d1
    # Again on the same TPU, kept afterwards; print the commands only:
    python scripts/launch_tpu_vm.py --name=d1 --zone=us-central2-b --reuse --dry-run \\
        -- --config=experiments/digits.py --workdir=/mnt/shared/runs/d1 --config.total_epochs=20

Steps, each printed (`+ command`) before it runs:
  1. create the TPU VM (`gcloud compute tpus tpu-vm create`), or with --reuse check that
     it exists (`... describe`);
  2. pack the repository's committed files (`git archive HEAD`: commit your changes
     first) and copy the tarball to every worker (`... scp --worker=all`);
  3. on every worker at once (`... ssh --worker=all`): unpack into ~/jaxtrain, install
     it (with its `gcs` extra) and `jax[tpu]` into a Python 3.11 venv (~/jaxtrain-venv, made with uv; or into
     --python), and run `python -m jaxtrain.launch` with the arguments after `--`. gcloud streams every worker's output to this terminal: that is
     the job's log.
  4. delete the TPU VM, also when the job fails or on Ctrl-C (not with --keep or --reuse).
The exit status is the job's.

Every worker runs the same command; jaxtrain sees it is on a Cloud TPU VM and calls
`jax.distributed.initialize()`, which finds the other workers itself, so no
--coordinator_address/--num_processes/--process_id are passed. --workdir must outlive the
TPU VM and be shared by every worker (checkpoints are written by every worker): a bucket,
gs://BUCKET/DIR, which jaxtrain writes itself (no mount needed; the TPU VM's service
account needs write access to it), or an absolute path every worker mounts (NFS, Filestore).

jaxtrain needs Python 3.11 or newer, and the Ubuntu 22.04 TPU images' python3 is 3.10:
so by default the workers get a 3.11 venv from uv (`--python=PATH` uses one you installed).
"""

import argparse
import os
import pathlib
import shlex
import subprocess
import sys

from launch_args import fail, on_path, shared_workdir, split_at_dashes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]


def main(argv):
  own, job_args = split_at_dashes(argv)
  parser = _parser()
  args = parser.parse_args(own)
  if not args.reuse and not args.accelerator_type:
    parser.error("--accelerator_type is required (unless --reuse)")
  shared_workdir(job_args, "that every worker shares (an NFS/Filestore mount), or gs://BUCKET/DIR", bucket=True)
  if not args.dry_run:
    for tool in ("gcloud", "git"):
      if not on_path(tool):
        fail(f"{tool} is not on PATH (install the Google Cloud CLI and git, or use --dry-run)")
    _warn_if_uncommitted()

  where = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
  if args.reuse:
    describe = TPU_VM + ["describe", args.name, *where, "--format=value(state)"]
    _show(describe)
    if not args.dry_run:
      result = subprocess.run(describe, stdout=subprocess.PIPE, text=True, check=False)
      if result.returncode:
        return result.returncode  # gcloud said why (no such TPU VM, say).
      if result.stdout.strip() != "READY":
        fail(f"TPU VM {args.name} is {result.stdout.strip() or 'in an unknown state'}, not READY")
  else:
    # --project after --zone, as in every command here; --spot last.
    create = TPU_VM + ["create", args.name, where[0], f"--accelerator-type={args.accelerator_type}",
                       f"--version={args.version}", *where[1:]] + (["--spot"] if args.spot else [])
    status = _step(create, args.dry_run)
    if status:
      return status  # Nothing was created, so there is nothing to delete.

  tarball = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"jaxtrain-{args.name}.tar.gz")
  try:  # Ctrl-C (KeyboardInterrupt) also goes through the finally.
    status = (_step(["git", "-C", ROOT, "archive", "--format=tar.gz", "-o", tarball, "HEAD"], args.dry_run)
              or _step(TPU_VM + ["scp", tarball, f"{args.name}:~/jaxtrain.tar.gz", "--worker=all", *where],
                       args.dry_run)
              or _step(TPU_VM + ["ssh", args.name, *where, "--worker=all",
                                 f"--command={_remote_command(args.python, job_args)}"], args.dry_run))
  finally:
    if not args.dry_run:
      pathlib.Path(tarball).unlink(missing_ok=True)
    if not (args.keep or args.reuse):
      _step(TPU_VM + ["delete", args.name, *where, "--quiet"], args.dry_run)
  return status


def _remote_command(python, job_args):
  """What every worker runs: unpack the code, install it, start the run.

  With python 'auto', a Python 3.11 virtual environment made by uv (TPU images' own
  python3 is older than jaxtrain needs; uv fetches a 3.11), reused by later runs."""
  unpack = "set -e; mkdir -p ~/jaxtrain && tar -xzf ~/jaxtrain.tar.gz -C ~/jaxtrain && cd ~/jaxtrain"
  if python == "auto":
    venv = "~/jaxtrain-venv"
    return (f"{unpack} && python3 -m pip install -q --user uv"
            f" && {{ [ -x {venv}/bin/python ] || python3 -m uv venv -q --python 3.11 {venv}; }}"
            f" && python3 -m uv pip install -q --python {venv}/bin/python -e '.[gcs]' 'jax[tpu]'"
            f" && {venv}/bin/python -m jaxtrain.launch {shlex.join(job_args)}")
  python = shlex.quote(python)
  return (f"{unpack} && {python} -m pip install -q -e '.[gcs]' 'jax[tpu]'"
          f" && {python} -m jaxtrain.launch {shlex.join(job_args)}")


def _parser():
  parser = argparse.ArgumentParser(
      usage="%(prog)s --name=NAME --zone=ZONE --accelerator_type=TYPE [options] "
      "-- --config=... --workdir=gs://BUCKET/DIR|/SHARED/DIR [--config.a.b=V ...]",
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--name", required=True, help="TPU VM name (also names the local tarball)")
  parser.add_argument("--zone", required=True, help="e.g. us-central2-b")
  parser.add_argument("--accelerator_type", help="e.g. v4-8 (one host), v4-32 (4 hosts), v5litepod-16")
  parser.add_argument("--version", default="tpu-ubuntu2204-base",
                      help="TPU software version (default %(default)s, for v4; v5e: v2-alpha-tpuv5-lite, "
                      "v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e)")
  parser.add_argument("--project", help="Google Cloud project (default: gcloud's configured one)")
  parser.add_argument("--spot", action="store_true", help="create a Spot TPU VM (cheaper, can be preempted)")
  parser.add_argument("--reuse", action="store_true",
                      help="use an existing TPU VM instead of creating one; it is not deleted")
  parser.add_argument("--keep", action="store_true", help="do not delete the TPU VM when the job ends")
  parser.add_argument("--python", default="auto",
                      help="Python on the workers, 3.11 or newer; 'auto' (default): a Python 3.11 venv made "
                      "with uv in ~/jaxtrain-venv")
  parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                      help="print the commands, run nothing")
  return parser


def _warn_if_uncommitted():
  """git archive ships HEAD only: say so when the working tree differs from it."""
  changes = subprocess.run(["git", "-C", ROOT, "status", "--porcelain"], capture_output=True, text=True,
                           check=False).stdout.splitlines()
  if changes:
    print(f"warning: {len(changes)} uncommitted change(s) in {ROOT} are not copied: the workers get HEAD",
          file=sys.stderr)


def _show(command):
  print("+ " + shlex.join(command), flush=True)


def _step(command, dry_run):
  """Prints `+ command`, then runs it (unless dry_run): its exit status."""
  _show(command)
  return 0 if dry_run else subprocess.run(command, check=False).returncode


if __name__ == "__main__":
  try:
    sys.exit(main(sys.argv[1:]))
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
