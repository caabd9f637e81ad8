"""The host memory of a run: huge pages for XLA:CPU's step buffers, and the memory freed
by building the run given back to the system before the loop.

**Huge pages.** XLA:CPU allocates each execution's temporaries afresh: 2.5 GiB a step for the email
assistant's LoRA fine-tune of SmolLM2-135M (4 x 256 tokens). glibc serves blocks that large
with mmap and gives them back with munmap, so every step faults each 4 KiB page in again:
667,000 page faults and 1.19 s of kernel time a step. With glibc's tunable
`glibc.malloc.hugetlb=1`, malloc asks the kernel for transparent huge pages (madvise) and
the same step takes 1,800 faults and 0.33 s of kernel time: 5.12 -> 4.67 s a step (2 cores
of an AMD EPYC, jax 0.10.2, glibc 2.36, 2026-12-07). Peak RSS is unchanged (4.07, 4.03 GiB).

glibc reads its tunables when a process starts, so `python -m jaxtrain.launch` starts itself
again with the tunable set (exec: the same process id, signals and all), where that can
help: Linux with glibc 2.35 or later and THP on request ('[madvise]'; with '[always]' every
large mapping has them already). JAXTRAIN_HUGE_PAGES=0 turns it off.

**Giving freed memory back.** Compiling the steps and reading a GGUF file's weights leave
freed memory that glibc keeps in its arenas, counted in the process's RSS. `malloc_trim(0)`
after the build and again before the first step returns it: the email assistant's
command (3 steps, from the GGUF, compiling) peaked at 3.79 GiB instead of 4.05.
"""

import ctypes
import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def environment(environ=None):
  """`environ` (default os.environ) with the tunable added where it helps and is not set
  yet, else None: nothing to change."""
  environ = os.environ if environ is None else environ
  if environ.get("JAXTRAIN_HUGE_PAGES", "1") == "0" or not sys.platform.startswith("linux"):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:
    return None  # Set already: by the user (kept), or by the start before this one.
  library, version = platform.libc_ver()
  if library != "glibc" or tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < (2, 35):
    return None
  try:
    with open(THP_MODE, encoding="ascii") as f:
      if "[madvise]" not in f.read():
        return None
  except OSError:
    return None
  return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, TUNABLE)))}


def restart_with_huge_pages():
  """Runs this command again, as it was typed (interpreter flags included), with the
  tunable set where `environment` says so; returns where it does not."""
  env = environment()
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)


def give_back_freed():
  """Returns the memory glibc holds free to the system (malloc_trim); nothing elsewhere."""
  if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
    return
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc's name for itself on every Linux.
  except (OSError, AttributeError):
    pass  # No such libc here: nothing to give back this way.
