"""What the cluster launchers share: splitting their own arguments from the run's (after
`--`), checking the run's --config and --workdir, finding a tool, and failing in one line."""

import os
import sys


def split_at_dashes(argv):
  """(the launcher's own arguments, the arguments after the first `--`)."""
  if "--" not in argv:
    return argv, []
  i = argv.index("--")
  return argv[:i], argv[i + 1:]


def flag_value(args, name):
  """The value of --name=V or --name V in args (the last one wins, as in absl), or None."""
  value = None
  for i, arg in enumerate(args):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(args):
      value = args[i + 1]
  return value


def shared_workdir(job_args, where, bucket=False):
  """The run's --workdir, once its flags are known to name a config and an absolute work
  directory (or, with `bucket`, a gs:// one): the hosts run elsewhere, where a relative
  path would mean another place."""
  workdir = flag_value(job_args, "workdir")
  if not flag_value(job_args, "config") or not workdir:
    fail("after --, pass the run's flags, at least --config=experiments/NAME.py and --workdir=/SHARED/DIR")
  if bucket and workdir.startswith("gs://"):
    return workdir.rstrip("/")
  if not workdir.startswith("/"):
    fail(f"--workdir={workdir}: give an absolute path {where}")
  return workdir.rstrip("/") or "/"


def on_path(tool):
  return any(os.access(os.path.join(d, tool), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep) if d)


def fail(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)
