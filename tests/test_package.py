"""The package's shape, read from its source. The import graph (every import, at the top of a module or inside a
function): no circle, and no module importing one above it; WORKSPACE.md's dependency paragraph states the same
rules. And no function longer than a screen."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "cnnjax"
# The layers below the commands: what each may import from cnnjax (besides its own files).
MAY_IMPORT = {
  "cnnjax.errors": set(),
  "cnnjax.models": set(),  # the architectures: only their own files
  "cnnjax.data": {"cnnjax.errors", "cnnjax.cloud", "cnnjax.workdir"},  # knows no model and no training
  "cnnjax.cloud": {"cnnjax.errors"},
  "cnnjax.workdir": {"cnnjax.errors", "cnnjax.cloud"},
}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
  """module -> the cnnjax modules it imports (`from cnnjax import x` counts as cnnjax.x where that is a module)."""
  modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {name: set() for name in modules}
  for name, path in modules.items():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = [
          f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
        ]
      else:
        continue
      graph[name] |= {t for t in targets if t.startswith("cnnjax") and t != name}
  return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One import path that comes back to its start, for each back edge a depth-first walk meets."""
  found, state, path = [], {}, []

  def visit(module):
    state[module] = "open"
    path.append(module)
    for target in sorted(graph.get(module, ())):
      if state.get(target) == "open":
        found.append(path[path.index(target) :] + [target])
      elif target not in state:
        visit(target)
    path.pop()
    state[module] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module)
  return found


def package_of(module: str) -> str:
  """The layer a module belongs to: its MAY_IMPORT key, or itself."""
  return next((layer for layer in MAY_IMPORT if module == layer or module.startswith(layer + ".")), module)


def test_the_import_graph_has_no_circle():
  # the package's __init__ imports cloud (to configure it before any client loads), and importing any module runs
  # the package's __init__ first: an import of the package itself is not an edge
  graph = {module: targets - {"cnnjax"} for module, targets in imports().items()}
  assert circles(graph) == []


def test_a_circle_is_found():
  assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_no_module_imports_one_above_it(layer):
  graph = imports()
  above = {
    (module, target)
    for module, targets in graph.items()
    for target in targets
    if package_of(module) == layer
    and package_of(target) != layer
    and target != "cnnjax"
    and package_of(target) not in MAY_IMPORT[layer]
  }
  assert above == set()


def test_no_function_is_longer_than_60_lines():
  long = {
    f"{path.relative_to(PACKAGE.parent)}:{node.name}": node.end_lineno - node.lineno + 1
    for path in PACKAGE.rglob("*.py")
    for node in ast.walk(ast.parse(path.read_text()))
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60
  }
  assert long == {}
