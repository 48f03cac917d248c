"""Guard of the layering (STYLE.md): no import cycle inside jaxps, no ``jaxps._src`` import
outside ``jaxps/`` (applications use the public names), no ``jaxps`` import in ``models/``.
Imports inside functions count (a lazy import is still a dependency); those under
``if TYPE_CHECKING:`` do not."""

import ast

from tests.conftest import REPO


def imports(path):
    """Absolute module names that ``path`` imports."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def test_no_cycles_in_jaxps():
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts): p
               for p in (REPO / "jaxps").rglob("*.py")}
    graph = {m: {i for i in imports(p) if i in modules and i != m and not i.endswith("__init__")
                 and modules[i].name != "__init__.py"} for m, p in modules.items()}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in graph[m]:
            assert state.get(n) != "open", f"import cycle: {' -> '.join(stack + [m, n])}"
            if n not in state:
                visit(n, stack + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])


def test_layers():
    for path in list((REPO / "train").rglob("*.py")) + list((REPO / "models").rglob("*.py")):
        found = set(imports(path))
        bad = sorted(i for i in found if i.startswith("jaxps._src"))
        assert not bad, f"{path.relative_to(REPO)} imports private {bad}; use jaxps' public names"
        if path.parts[-2] == "models" or "models" in path.relative_to(REPO).parts[:1]:
            assert not any(i == "jaxps" or i.startswith("jaxps.") for i in found), \
                f"{path.relative_to(REPO)}: models are pure JAX functions, no PS inside"


def test_techniques_use_only_the_policy_view():
    """Techniques (and the documented example) touch no private name of another object:
    they are written against jaxps.Technique and PolicyView alone."""
    for name in ("techniques.py", "adaptive.py"):
        tree = ast.parse((REPO / "jaxps" / "_src" / name).read_text())
        bad = [f"{name}:{n.lineno} {ast.unparse(n)}" for n in ast.walk(tree)
               if isinstance(n, ast.Attribute) and n.attr.startswith("_")
               and not n.attr.startswith("__")
               and not (isinstance(n.value, ast.Name) and n.value.id == "self")]
        assert not bad, f"private access from a technique: {bad}"
