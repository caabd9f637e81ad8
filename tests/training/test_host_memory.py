"""jaxtrain.launch starts itself again with glibc's huge-page tunable where it helps, and a
run gives the memory its build freed back to the system."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from jaxtrain.training import host_memory


@pytest.fixture
def madvise(tmp_path, monkeypatch):
  mode = tmp_path / "enabled"
  mode.write_text("always [madvise] never\n")
  monkeypatch.setattr(host_memory, "THP_MODE", str(mode))
  monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
  monkeypatch.setattr(host_memory.sys, "platform", "linux")
  return mode


def test_the_tunable_is_added_to_the_users_own(madvise):
  env = host_memory.environment({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
  assert host_memory.environment({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_nothing_changes_where_it_cannot_help_or_is_set_or_turned_off(madvise, monkeypatch):
  assert host_memory.environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None  # The user's choice.
  assert host_memory.environment({"JAXTRAIN_HUGE_PAGES": "0"}) is None
  for mode in ("[always] madvise never", "always madvise [never]"):
    madvise.write_text(mode)
    assert host_memory.environment({}) is None
  madvise.write_text("always [madvise] never")
  monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("glibc", "2.34"))  # Before the tunable.
  assert host_memory.environment({}) is None
  monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))  # musl, say.
  assert host_memory.environment({}) is None
  monkeypatch.setattr(host_memory, "THP_MODE", str(madvise) + ".missing")  # A kernel without THP.
  assert host_memory.environment({}) is None


SCRIPT = """
import os, sys
from jaxtrain.training import host_memory
host_memory.THP_MODE = sys.argv[1]
host_memory.platform.libc_ver = lambda: ("glibc", "2.36")
host_memory.restart_with_huge_pages()
print(os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.flags.utf8_mode, sys.argv[1:])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="exec with glibc's tunables: Linux")
def test_the_command_starts_again_in_the_same_process_with_its_flags_and_arguments(tmp_path):
  mode = tmp_path / "enabled"
  mode.write_text("always [madvise] never\n")
  script = tmp_path / "start.py"
  script.write_text(SCRIPT)
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXTRAIN_HUGE_PAGES")}
  process = subprocess.Popen([sys.executable, "-X", "utf8", str(script), str(mode)], stdout=subprocess.PIPE,
                             text=True, env={**env, "PYTHONPATH": ROOT}, cwd=tmp_path)
  out, _ = process.communicate(timeout=60)
  pid, tunables, utf8, argv = out.split(maxsplit=3)
  assert int(pid) == process.pid  # exec: signals sent to the process still reach the run.
  assert tunables == "glibc.malloc.hugetlb=1" and utf8 == "1" and argv.strip() == repr([str(mode)])


FREED = """
import ctypes, os, sys
from jaxtrain.training import host_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
blocks = [libc.malloc(4000) for _ in range(50_000)]  # 200 MB on the heap (small blocks).
for b in blocks:
  ctypes.memset(b, 1, 4000)
keep = libc.malloc(4000)  # Above them: the heap's top cannot just shrink.
for b in blocks:
  libc.free(b)
before = rss()
host_memory.give_back_freed()
print(before, rss())
"""


@pytest.mark.skipif(host_memory.platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_memory_freed_inside_the_heap_goes_back_to_the_system(tmp_path):
  script = tmp_path / "freed.py"
  script.write_text(FREED)
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env={**env, "PYTHONPATH": ROOT},
                       cwd=tmp_path, timeout=60, check=True).stdout
  before, after = map(int, out.split())
  assert before - after > 150 * 2**20, (before, after)
