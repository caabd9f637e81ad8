"""The one exception type for mistakes a user can fix, and the command line's mistakes.

The commands print its message as a single line and exit non-zero, without a traceback;
a flag mistake (absl's or argparse's) ends the same way (`parse_flags`, `ArgumentParser`).
Every message names the problem and, where it can, the fix.
"""

import argparse
import difflib
import os
import re
import sys

from absl import flags


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


# ---- The command line's mistakes, as one line too ------------------------------------------


def parse_flags(argv):
  """absl's flag parsing for `app.run(main, flags_parser=errors.parse_flags)`: a flag mistake
  ends as every other mistake does, one `error:` line and exit status 2, not absl's
  "FATAL Flags parsing error" and exit status 1."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    exit_with(flag_problem(e, argv))


def flag_problem(error, argv):
  """absl's message for a flag mistake (`error`, from parsing `argv`) in one line that names
  the flag and the fix; a message of another shape as absl wrote it."""
  text = " ".join(str(error).split())
  if isinstance(error, flags.UnrecognizedFlagError):
    close = re.search(r"Did you mean: ([\w.-]+)", text)
    hint = f" (did you mean '--{close.group(1)}'?)" if close else ""
    return f"unknown flag --{error.flagname}{hint}; `{_command()} --help` lists the flags"
  missing = re.fullmatch(r"Missing value for flag -+([\w.-]+)", text)
  if missing:
    return f"--{missing.group(1)} needs a value: give --{missing.group(1)}=VALUE"
  required = re.fullmatch(r"flag --([\w.-]+)=None: Flag --\1 must have a value other than None\.", text)
  if required and required.group(1) in flags.FLAGS:
    name = required.group(1)
    what = flags.FLAGS[name].help.strip().rstrip(".")
    return f"--{name} is required: {what[:1].lower()}{what[1:]}"
  bad = re.match(r"flag --([\w.-]+)=", text)
  if isinstance(error, flags.IllegalFlagValueError) and bad and bad.group(1) in flags.FLAGS:
    name = bad.group(1)
    expected = _expected(flags.FLAGS[name].parser)
    # absl's text is 'flag --NAME=VALUE: why', and VALUE may hold ': ': take it as typed.
    given = next((v for v in _values(argv, name) if str(error).startswith(f"flag --{name}={v}: ")), None)
    if expected and given is not None:
      return f"--{name} must be {expected}, got {given or 'nothing'}"
  return text


def _expected(parser):
  """What a flag's parser accepts, in words ('a positive integer'), or None."""
  if isinstance(parser, flags.EnumParser):
    return f"one of {', '.join(parser.enum_values)}"
  if isinstance(parser, flags.BooleanParser):
    return "true or false"
  return getattr(parser, "syntactic_help", None) or None


def _values(argv, name):
  """The values given to --NAME in `argv`, as typed (--NAME=V, -NAME=V, or --NAME V)."""
  for i, arg in enumerate(argv[1:], 1):
    flag, equals, value = arg.partition("=")
    if flag.lstrip("-") == name and flag.startswith("-"):
      if equals:
        yield value
      elif i + 1 < len(argv):
        yield argv[i + 1]


def _command():
  """How the user ran this command: 'python -m jaxtrain.NAME'."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  return f"python -m {spec.name}" if spec and spec.name else os.path.basename(sys.argv[0])


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose mistakes end as one `error:` line and exit status 2, like every jaxtrain
  command's; a flag it does not know gets the one it may have meant, and where to look."""

  def error(self, message):
    if message.startswith("unrecognized arguments: "):
      typed = re.match(r"unrecognized arguments: --([\w-]+)", message)
      known = [option[2:] for option in self._option_string_actions if option.startswith("--")]
      message += did_you_mean(typed.group(1), known, prefix="--") if typed else ""
      message += f"; `{self.prog} --help` lists the flags"
    exit_with(message)
