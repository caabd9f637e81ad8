"""Submits a jaxtrain experiment to a SLURM cluster of GPU nodes.

    python scripts/launch_slurm.py --nodes=N --gpus_per_node=G [--per=gpu|node] \\
        [--partition=P] [--time=HH:MM:SS] [--job_name=NAME] [--venv=PATH] [--dry-run] \\
        -- --config=experiments/NAME.py[:ARG] --workdir=/SHARED/DIR [--config.a.b=V ...]

Examples:

    # 2 nodes x 8 GPUs, one process per GPU (16 processes):
    python scripts/launch_slurm.py --nodes=2 --gpus_per_node=8 --partition=gpu --time=04:00:00 \\
        -- --config=experiments/digits.py --workdir=/shared/runs/d1
    # One process per node driving its 8 GPUs; show the batch script, submit nothing:
    python scripts/launch_slurm.py --nodes=2 --gpus_per_node=8 --per=node --venv=.venv --dry-run \\
        -- --config=experiments/digits.py --workdir=/shared/runs/d2 --config.total_epochs=20

It writes the batch script to WORKDIR/slurm_job.sh and runs `sbatch` on it; the job's
output (every process's) goes to WORKDIR/slurm-JOBID.out. The job cds to this repository,
activates --venv if given (otherwise it keeps the environment sbatch was run from, as
sbatch does), and starts every process with `srun python -m jaxtrain.launch ARGS`. JAX
reads the SLURM_* variables srun sets, so no --coordinator_address/--num_processes/
--process_id are passed. It does set JAX_LOCAL_DEVICE_IDS: JAX's SLURM setup assumes a
process per GPU that sees all the node's GPUs, which is neither --per=gpu (each process
sees its own GPU only) nor --per=node. The repository and --workdir must be on a
filesystem every node shares (NFS, Lustre, ...), and --workdir must be absolute.
"""

import argparse
import os
import shlex
import subprocess
import sys
import textwrap

from launch_args import fail, on_path, shared_workdir, split_at_dashes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
  own, job_args = split_at_dashes(argv)
  args = _parser().parse_args(own)
  workdir = shared_workdir(job_args, "on a filesystem every node shares")
  # Checked before anything is written, so a failed submission leaves no trace.
  if not args.dry_run and not on_path("sbatch"):
    fail("sbatch is not on PATH (run this on the cluster's login node, or use --dry-run)")

  script = batch_script(args, job_args, workdir)
  path = os.path.join(workdir, "slurm_job.sh")
  submit = ["sbatch", path]
  if args.dry_run:
    print(script, end="")
    print("+ " + shlex.join(submit), flush=True)
    return 0
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w") as f:
    f.write(script)
  print("+ " + shlex.join(submit), flush=True)
  status = subprocess.run(submit, check=False).returncode
  if status == 0:
    print(f"output: {workdir}/slurm-JOBID.out")
  return status


def batch_script(args, job_args, workdir):
  """The text of the batch script."""
  if args.per == "gpu":
    # --ntasks too: Slurm 23.11 refuses --gpus-per-task without it.
    processes = [f"--ntasks={args.nodes * args.gpus_per_node}", f"--ntasks-per-node={args.gpus_per_node}",
                 "--gpus-per-task=1"]
    devices = ["# Each process sees only its own GPU, as device 0; left alone, JAX would drive",
               "# device number SLURM_LOCALID, which only the first process of a node has.",
               "export JAX_LOCAL_DEVICE_IDS=0"]
  else:
    processes = ["--ntasks-per-node=1", f"--gpus-per-node={args.gpus_per_node}"]
    devices = ["# The one process of a node drives all its GPUs; left alone, JAX would assume a",
               "# process per GPU and drive device 0 only.",
               f"export JAX_LOCAL_DEVICE_IDS={','.join(str(i) for i in range(args.gpus_per_node))}"]
  options = [f"--job-name={args.job_name}", f"--nodes={args.nodes}", *processes,
             f"--output={workdir}/slurm-%j.out"]
  if args.partition:
    options.append(f"--partition={args.partition}")
  if args.time:
    options.append(f"--time={args.time}")
  if args.stop_before_limit:
    # SIGTERM to every process before the time limit's SIGKILL: jaxtrain saves and exits 143;
    # submitting the same script again resumes.
    options.append(f"--signal=TERM@{args.stop_before_limit}")
  lines = ["#!/bin/bash", *(f"#SBATCH {option}" for option in options)]
  lines.append(textwrap.dedent("""\
      #
      # No distributed flags: jaxtrain calls jax.distributed.initialize(), which reads the
      # SLURM_* variables that srun sets in each process: coordinator = the first node of
      # the step (SLURM_STEP_NODELIST), process id = SLURM_PROCID, process count = SLURM_NTASKS."""))
  lines += ["set -euo pipefail", f"cd {shlex.quote(ROOT)}"]
  if args.venv:
    lines.append(f"source {shlex.quote(os.path.join(os.path.abspath(args.venv), 'bin', 'activate'))}")
  lines += devices
  lines.append(f"srun python -m jaxtrain.launch {shlex.join(job_args)}")
  return "\n".join(lines) + "\n"


def _parser():
  parser = argparse.ArgumentParser(
      usage="%(prog)s --nodes=N --gpus_per_node=G [options] -- --config=... --workdir=/SHARED/DIR [...]",
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--nodes", type=_positive, required=True, help="how many nodes")
  parser.add_argument("--gpus_per_node", type=_positive, required=True, help="GPUs to use on each node")
  parser.add_argument("--per", choices=["gpu", "node"], default="gpu",
                      help="one process per GPU (default), or one per node that drives all its GPUs")
  parser.add_argument("--partition", help="SLURM partition (default: the cluster's)")
  parser.add_argument("--time", help="time limit, e.g. 04:00:00 (default: the partition's)")
  parser.add_argument("--job_name", default="jaxtrain", help="job name (default %(default)s)")
  parser.add_argument("--stop_before_limit", type=int, default=300,
                      help="seconds before the time limit at which the processes get SIGTERM, so jaxtrain saves "
                      "and stops cleanly (default %(default)s; 0: no signal)")
  parser.add_argument("--venv", help="virtual environment to activate in the job (on a shared filesystem)")
  parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                      help="print the batch script and the sbatch command; write and submit nothing")
  return parser


def _positive(text):
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
  return int(text)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
