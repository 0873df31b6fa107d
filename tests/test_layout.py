"""The layout is the architecture (docs/ARCHITECTURE.md, "Layers"): checked from the imports.

- An area (cases/<area>/) imports the kernel interface (lib.kernel) and lib.check, never the
  runner (lib.runner) and never another area.
- The kernel interface never imports the runner or an area; lib.check imports neither.
- No import circle between modules of lib/ (function-level imports count too).
- The README's layout section names every module that exists in lib/ and every support module
  of an area (test_*.py and conftest.py aside).
The checks read the source with ast (nothing is imported), and each has a negative control.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, name: str) -> set[str]:
    """Every module a source imports (absolute and relative, at any depth of the file)."""
    pkg = name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def project_modules() -> dict[str, Path]:
    mods = {}
    for top in ("lib", "cases"):
        for p in (ROOT / top).rglob("*.py"):
            if "__pycache__" not in p.parts:
                mods[module_name(p)] = p
    return mods


def layer_of(mod: str) -> str:
    if mod.startswith("lib.runner"):
        return "runner"
    if mod.startswith("lib.kernel"):
        return "kernel"
    if mod == "lib.check":
        return "check"
    if mod.startswith("cases."):
        return "area:" + mod.split(".")[1]
    return "other"


def violations(mods: dict[str, str]) -> list[str]:
    """Layering violations of ``mods`` (module name -> source)."""
    bad = []
    for name, src in mods.items():
        me = layer_of(name)
        for imp in imports_of(src, name):
            them = layer_of(imp)
            if them == "other" or them == me:
                continue
            upwards = them == "runner" or them.startswith("area:")  # an area: another area, here
            below_runner = me.startswith("area:") or me in ("kernel", "check")
            if (below_runner and upwards) or (me == "check" and them == "kernel"):
                bad.append(f"{name} imports {imp}")
    return sorted(bad)


def cycles(mods: dict[str, str]) -> list[list[str]]:
    """Import circles among ``mods`` (module name -> source), each as a path."""
    graph = {}
    for name, src in mods.items():
        deps = set()
        for imp in imports_of(src, name):
            while imp and imp not in mods:
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                deps.add(imp)
        graph[name] = deps
    found, state = [], {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                found.append([*path[path.index(d):], d] if d in path else [n, d])
            elif d not in state:
                visit(d, [*path, d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return found


def readme_layout() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Layout\n(.*?)^## ", text, re.S | re.M)
    assert m, "README has no Layout section"
    return m.group(1)


def unlisted(layout: str, mods: dict[str, Path]) -> list[str]:
    """Modules of lib/ and area support modules the layout text does not name."""
    missing = []
    for name in sorted(mods):
        parts = name.split(".")
        leaf = parts[-1]
        if parts[0] == "cases" and (len(parts) < 3 or leaf.startswith("test_") or leaf == "conftest"):
            continue
        if parts[0] == "lib" and len(parts) > 3 and parts[-1] == "__init__":
            continue
        if not re.search(rf"(?<![\w]){re.escape(leaf)}(?![\w])", layout):
            missing.append(name)
    return missing


def _sources() -> dict[str, str]:
    return {n: p.read_text() for n, p in project_modules().items()}


def test_layers_import_downwards_only() -> None:
    assert violations(_sources()) == []


def test_no_import_circle_in_lib() -> None:
    lib = {n: s for n, s in _sources().items() if n.startswith("lib.")}
    assert cycles(lib) == []


def test_readme_layout_names_every_module() -> None:
    assert unlisted(readme_layout(), project_modules()) == []


# -- negative controls ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "src", "what"), [
    ("cases.cow.x", "from lib.runner import report\n", "area imports the runner"),
    ("cases.cow.x", "from cases.missing import support\n", "area imports another area"),
    ("lib.kernel.x", "def f():\n    from lib.runner.isolation import run_isolated\n", "kernel imports the runner"),
    ("lib.kernel.x", "import cases.remove.common\n", "kernel imports an area"),
])
def test_layer_violation_is_caught(name: str, src: str, what: str) -> None:
    assert violations({name: src}), what


def test_import_circle_is_caught() -> None:
    mods = {"lib.kernel.a": "from lib.kernel import b\n", "lib.kernel.b": "def f():\n    from lib.kernel import a\n"}
    assert cycles(mods)


def test_unlisted_module_is_caught() -> None:
    mods = {"lib.kernel.brand_new": ROOT / "x.py", "cases.cow.helpers": ROOT / "y.py",
            "cases.cow.test_z": ROOT / "z.py"}
    assert unlisted("lib/kernel/  abi, libc", mods) == ["cases.cow.helpers", "lib.kernel.brand_new"]
