"""The project's import graph: no cycles, and no module imports from a layer above its own.

Layers, low to high (DESIGN.md): a module may import from its own layer or any lower one.
"""

import ast
import itertools
from pathlib import Path

from tests.helpers import ROOT

# (layer, module-name prefixes in it), low to high. The most specific prefix decides.
LAYERS = [
    ("errors", ["efficiency", "efficiency.errors"]),
    ("core", ["efficiency.backends", "efficiency.model", "efficiency.attention",
              "efficiency.position", "efficiency.quant", "efficiency.sharding",
              "efficiency.metrics"]),
    ("data", ["data"]),
    ("training", ["efficiency.train", "efficiency.peft", "efficiency.workdir", "efficiency.hf",
                  "efficiency.evaluation"]),
    ("serving", ["efficiency.serving"]),
    ("config", ["efficiency.config", "efficiency.sweep", "efficiency.cli"]),
    ("entry points", ["evals", "benchmarks", "train", "configs", "data.prepare"]),
]
SOURCES = ["efficiency", "data", "evals", "benchmarks", "configs", "train.py"]


def project_modules(root: Path) -> dict[str, Path]:
  """Dotted module name -> file, for every module of the project (tests excluded)."""
  modules = {}
  for source in SOURCES:
    paths = [root / source] if source.endswith(".py") else sorted((root / source).rglob("*.py"))
    for path in paths:
      parts = path.relative_to(root).with_suffix("").parts
      modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return modules


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
  """The project modules `path` imports by name anywhere in it (function-level imports
  included): for `from a import b`, the submodule a.b where there is one, else a. (A package's
  __init__, which Python runs before any of its submodules, is counted only where it is named.)"""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [f"{node.module}.{alias.name}" for alias in node.names]
      names = [n if n in modules else node.module for n in names]
    else:
      continue
    for name in names:
      while name and name not in modules:
        name = name.rpartition(".")[0]
      if name:
        found.add(name)
  return found


def layer_of(module: str) -> int:
  """The index in LAYERS of the layer whose most specific prefix names `module`."""
  matches = [
      (len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
      if module == prefix or module.startswith(prefix + ".")
  ]
  assert matches, f"{module} is in no layer; add it to LAYERS"
  return max(matches)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  """'a (layer) -> b (higher layer)' for every import from a lower layer to a higher one."""
  return [
      f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"
      for a, targets in sorted(graph.items()) for b in sorted(targets)
      if layer_of(b) > layer_of(a)
  ]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle per strongly connected component of more than one module (or a self-import)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []
  counter = itertools.count()

  def visit(v):  # Tarjan's algorithm
    index[v] = low[v] = next(counter)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1 or v in graph.get(v, ()):
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_no_cycles_and_no_upward_imports():
  modules = project_modules(ROOT)
  assert len(modules) > 80 and "efficiency.config" in modules and "train" in modules
  graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
  assert sum(map(len, graph.values())) > 200  # the walk really finds the imports
  assert cycles(graph) == []
  assert upward_imports(graph) == []


def test_the_checks_find_a_cycle_and_an_upward_import():
  graph = {
      "efficiency.model.layers": {"efficiency.serving.export"},  # core -> serving
      "efficiency.serving.export": {"efficiency.workdir.restore"},
      "efficiency.workdir.restore": {"efficiency.model.layers"},
  }
  assert cycles(graph) == [sorted(graph)]
  assert upward_imports(graph) == [
      "efficiency.model.layers (core) -> efficiency.serving.export (serving)",
  ]
  assert layer_of("data.prepare") == len(LAYERS) - 1 and layer_of("data.pipeline") == 2


def private_imports(root: Path) -> list[str]:
  """'module: from other import _name' for every private name a module takes from another."""
  modules = project_modules(root)
  found = []
  for name, path in sorted(modules.items()):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module in modules and not node.level:
        found += [f"{name}: from {node.module} import {alias.name}" for alias in node.names
                  if alias.name.startswith("_")]
  return found


def test_no_module_imports_a_private_name_and_serving_is_one_module_per_role():
  assert private_imports(ROOT) == []
  serving = sorted(p.stem for p in (ROOT / "efficiency" / "serving").glob("*.py"))
  assert len(serving) - 1 <= 13, serving  # __init__ aside
  library = [n for n, p in project_modules(ROOT).items()
             if any(i.startswith("tests") for i in _raw_imports(p))]
  assert library == []  # the numpy references and the host engine stay in tests/


def _raw_imports(path: Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
  return names
