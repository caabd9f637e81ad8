"""jaxtrain.launch starts itself again with glibc's huge-page tunable where it helps."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from jaxtrain.training import huge_pages


@pytest.fixture
def madvise(tmp_path, monkeypatch):
  mode = tmp_path / "enabled"
  mode.write_text("always [madvise] never\n")
  monkeypatch.setattr(huge_pages, "THP_MODE", str(mode))
  monkeypatch.setattr(huge_pages.platform, "libc_ver", lambda: ("glibc", "2.36"))
  monkeypatch.setattr(huge_pages.sys, "platform", "linux")
  return mode


def test_the_tunable_is_added_to_the_users_own(madvise):
  env = huge_pages.environment({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
  assert huge_pages.environment({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_nothing_changes_where_it_cannot_help_or_is_set_or_turned_off(madvise, monkeypatch):
  assert huge_pages.environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None  # The user's choice.
  assert huge_pages.environment({"JAXTRAIN_HUGE_PAGES": "0"}) is None
  for mode in ("[always] madvise never", "always madvise [never]"):
    madvise.write_text(mode)
    assert huge_pages.environment({}) is None
  madvise.write_text("always [madvise] never")
  monkeypatch.setattr(huge_pages.platform, "libc_ver", lambda: ("glibc", "2.34"))  # Before the tunable.
  assert huge_pages.environment({}) is None
  monkeypatch.setattr(huge_pages.platform, "libc_ver", lambda: ("", ""))  # musl, say.
  assert huge_pages.environment({}) is None
  monkeypatch.setattr(huge_pages, "THP_MODE", str(madvise) + ".missing")  # A kernel without THP.
  assert huge_pages.environment({}) is None


SCRIPT = """
import os, sys
from jaxtrain.training import huge_pages
huge_pages.THP_MODE = sys.argv[1]
huge_pages.platform.libc_ver = lambda: ("glibc", "2.36")
huge_pages.restart_with_huge_pages()
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
