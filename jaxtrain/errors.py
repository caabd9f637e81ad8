"""The one exception type for mistakes a user can fix.

The launcher prints its message as a single line and exits non-zero, without a traceback.
Every message names the problem and, where it can, the fix.
"""

import difflib
import sys


class UserError(Exception):
  """A mistake in the config, the command line or the inputs: named, with the fix."""


def did_you_mean(name, candidates, prefix=""):
  """' (did you mean 'PREFIXx'?)' when a candidate x is close to `name`, else ''."""
  close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
  return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def first_line(error, limit=300):
  """The first non-empty line of an exception's message (library errors run to pages)."""
  line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
  return line[:limit]


def chain(error):
  """`error` and its causes and contexts, each once."""
  seen = []
  stack = [error]
  while stack:
    e = stack.pop()
    if e is None or any(e is s for s in seen):
      continue
    seen.append(e)
    stack += [e.__cause__, e.__context__]
  return seen


def exit_with(message):
  """A user's mistake ends a command: one line on stderr, no traceback, exit status 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)
