"""The shape of the package: the public paths users and launch scripts rely on, one room
per concern (a few modules at the top, none too long), and imports that point one way."""

import ast
import importlib
import os

import pytest

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "jaxtrain")
PUBLIC = ["jaxtrain.lm:load", "jaxtrain.lm:LM", "jaxtrain.runs:load", "jaxtrain.config:duration",
          "jaxtrain.errors:UserError", "jaxtrain.train:run", "jaxtrain.step:apply", "jaxtrain.models:MODELS",
          "jaxtrain.evals:EVALUATORS", "jaxtrain.evals:Context", "jaxtrain.evals:gather", "jaxtrain.tasks:TASKS",
          "jaxtrain.losses:LOSSES", "jaxtrain.data.ops:register"]
COMMANDS = ["launch", "generate", "lm_eval", "export", "runs", "sweep", "plot"]


@pytest.mark.parametrize("path", PUBLIC)
def test_the_public_paths_are_where_users_find_them(path):
  module, name = path.split(":")
  assert getattr(importlib.import_module(module), name) is not None


def test_the_commands_are_at_the_top_and_few_modules_join_them():
  top = sorted(name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py") and name != "__init__.py")
  assert set(COMMANDS) <= set(top) and len(top) <= 16, top


def test_no_module_is_over_500_lines():
  long = {path: lines for path, lines in _lines_of_modules().items() if lines > 500}
  assert not long


def test_no_module_imports_a_module_that_imports_it_back():
  """Function-level imports count: a cycle there is a cycle all the same."""
  graph = _imports()
  assert not _cycles(graph), _cycles(graph)


def test_no_two_packages_import_each_other():
  graph = _imports()
  room = lambda module: ".".join(module.split(".")[:2])  # noqa: E731  ('jaxtrain.lm', 'jaxtrain.train')
  edges = {(room(a), room(b)) for a, targets in graph.items() for b in targets if room(a) != room(b)}
  assert not sorted((a, b) for a, b in edges if (b, a) in edges)


def _modules():
  """{'jaxtrain.lm.hf': path} of every module ('jaxtrain.lm' for lm/__init__.py)."""
  found = {}
  for directory, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        found[dotted.removesuffix(".__init__")] = path
  return found


def _lines_of_modules():
  lines = {}
  for path in _modules().values():
    with open(path, encoding="utf-8") as f:
      lines[os.path.relpath(path, ROOT)] = sum(1 for _ in f)
  return lines


def _imports():
  """{module: the jaxtrain modules it imports}, a package's __init__ importing its own
  submodules (a registry filling itself) left out, as is a submodule importing its package."""
  modules = _modules()
  graph = {}
  for module, path in modules.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets |= {alias.name for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        targets |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    found = set()
    for target in targets:
      while target and target not in modules:
        target = target.rpartition(".")[0]
      if target and target != module and not target.startswith(module + ".") and not module.startswith(target + "."):
        found.add(target)
    graph[module] = found
  return graph


def _cycles(graph):
  """The cycles of `graph`, each as the modules on it (depth-first search, colours)."""
  state, stack, cycles = {}, [], []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        cycles.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)
  return cycles
