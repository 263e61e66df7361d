"""The import graph of histojax (every import, including those inside functions): no cycle,
and every arrow points down: the data layer, metrics and models never import tasks or the loop.
"""
import ast

from conftest import ROOT


def import_graph():
  """{module: {histojax modules it imports}} over histojax/."""
  graph = {}
  for path in sorted((ROOT / 'histojax').rglob('*.py')):
    parts = path.relative_to(ROOT).with_suffix('').parts
    module = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
    package = module if parts[-1] == '__init__' else module.rpartition('.')[0]
    imports = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        imports += [(a.name, None) for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:  # relative import
          base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] +
                          ([base] if base else []))
        imports += [(base, a.name) for a in node.names]
    graph[module] = imports
  modules = set(graph)
  out = {}
  for m, imports in graph.items():
    # `from pkg import sub` is an arrow to the module pkg.sub; `from pkg import name` to pkg.
    targets = {f'{base}.{name}' if f'{base}.{name}' in modules else base
               for base, name in imports}
    out[m] = {t for t in targets if t in modules and t != m}
  return out


def _cycle(graph):
  state, stack = {}, []

  def visit(m):
    state[m] = 'open'
    stack.append(m)
    for t in sorted(graph[m]):
      if state.get(t) == 'open':
        return stack[stack.index(t):] + [t]
      if t not in state:
        found = visit(t)
        if found:
          return found
    state[m] = 'done'
    stack.pop()
    return None
  for m in sorted(graph):
    if m not in state:
      found = visit(m)
      if found:
        return found
  return None


def test_no_import_cycle():
  graph = import_graph()
  assert 'histojax.data.pipeline' in graph['histojax.data.datasets']  # the scan sees imports
  assert _cycle(graph) is None, f'import cycle: {" -> ".join(_cycle(graph))}'


def test_lower_layers_never_import_tasks_or_the_loop():
  upper = ('histojax.tasks', 'histojax.train', 'histojax.predict', 'histojax.report')
  lower = ('histojax.data', 'histojax.metrics', 'histojax.models', 'histojax.inference')
  # histojax.data.show is a command for a person (sample grids), not part of the data layer.
  offenders = {m: sorted(t for t in targets if t.startswith(upper))
               for m, targets in import_graph().items()
               if m.startswith(lower) and m != 'histojax.data.show'}
  assert not {m: t for m, t in offenders.items() if t}, offenders
