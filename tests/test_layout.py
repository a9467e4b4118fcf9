"""The package's architecture, read from its source: every module lives on a floor, imports only
its own floor or those below, and no import cycle exists, function-level imports included."""

import ast
import os

import kmem_magic

PACKAGE = os.path.dirname(os.path.abspath(kmem_magic.__file__))

# Lowest first. A module belongs to the floor of its longest listed prefix (the package itself,
# ``kmem_magic``, only by its own name).
FLOORS = [
    ("kmem_magic.record", "kmem_magic.sizes", "kmem_magic._nvml", "kmem_magic._host",
     "kmem_magic._cell", "kmem_magic._interrupts", "kmem_magic.ledger"),
    ("kmem_magic.backends",),
    ("kmem_magic.policy", "kmem_magic.measure", "kmem_magic.advise", "kmem_magic.plan"),
    ("kmem_magic.show",),
    ("kmem_magic._magics", "kmem_magic.demo", "kmem_magic"),
]


def modules():
    """``{dotted name: path}`` of every module in the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                found[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return found


def imports(name, path, known):
    """The package's modules that ``name`` imports anywhere in its source."""
    package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            subs = [f"{base}.{alias.name}" for alias in node.names]
            # `from pkg import mod` imports pkg.mod; other names come from pkg itself
            targets.update(s for s in subs if s in known)
            if any(s not in known for s in subs):
                targets.add(base)
    return {t for t in targets if t in known and t != name}


def floor(name):
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            inside = name == prefix or (name.startswith(prefix + ".") and prefix != "kmem_magic")
            if inside and (best is None or len(prefix) > len(best[1])):
                best = (level, prefix)
    return None if best is None else best[0]


def graph():
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_has_a_floor_and_imports_only_its_floor_or_below():
    edges = graph()
    unplaced = sorted(name for name in edges if floor(name) is None)
    assert not unplaced, f"modules on no floor: {unplaced}"
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                    if floor(b) > floor(a))
    assert not upward, "imports of an upper floor:\n" + "\n".join(upward)


def test_no_import_cycle_anywhere():
    edges = graph()
    cycles, state = [], {}

    def visit(name, stack):
        state[name] = "open"
        for target in sorted(edges[name]):
            # a package importing its own submodules is how packages work; the reverse closes
            # a cycle only through the package's __init__, which the edges show as such
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_only_backends_name_a_framework():
    """tensorflow, jax and torch are imported only in backends/ (Keras may be used above)."""
    known = modules()
    offenders = []
    for name, path in known.items():
        if name.startswith("kmem_magic.backends"):
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            offenders += [f"{name}: {n}" for n in names
                          if n.split(".")[0] in ("tensorflow", "jax", "torch")]
    assert not offenders, offenders
