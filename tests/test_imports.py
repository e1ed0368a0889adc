"""The package's structure: no module reaches another's underscore names, the
loop and the exporter know no method, and the core imports without the extras."""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).parent.parent / "randjax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p))
            for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def foreign_private_uses(me: str, module: ast.Module) -> list[str]:
    """``from m import _x`` and ``m._x`` where ``m`` is another randjax module."""
    aliases, uses = {}, []
    for node in ast.walk(module):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "randjax":
                    aliases[a.asname or "randjax"] = a.name if a.asname else "randjax"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("randjax"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in MODULES:
                    aliases[a.asname or a.name] = full
                elif _private(a.name) and node.module != me:
                    uses.append(f"{me}:{node.lineno}: from {node.module} import {a.name}")

    def dotted(node):
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    for node in ast.walk(module):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = dotted(node.value)
            if owner in MODULES and owner != me:
                uses.append(f"{me}:{node.lineno}: {owner}.{node.attr}")
    return uses


def imported_modules(module: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(module):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_walk_sees_the_whole_package():
    assert {"randjax.tree", "randjax.reparam", "randjax.methods.laperm",
            "randjax.models.common"} <= set(MODULES)


def test_the_walk_finds_a_private_use():
    planted = ast.parse("from randjax import masks\nfrom randjax.tree import _x\n"
                        "y = masks._order\n")
    assert len(foreign_private_uses("randjax.export", planted)) == 2
    own = ast.parse("from randjax import masks\ny = masks._order\n")
    assert foreign_private_uses("randjax.masks", own) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_uses_another_modules_underscore_names(name):
    assert foreign_private_uses(name, MODULES[name]) == []


@pytest.mark.parametrize("name", ["randjax.train", "randjax.export", "randjax.reparam",
                                  "randjax.tree"])
def test_infrastructure_imports_no_method(name):
    methods = {m for m in imported_modules(MODULES[name]) if m.startswith("randjax.methods")}
    assert methods == set()


def test_every_method_module_is_named_after_its_method():
    import randjax
    for name in ("edge_popup", "supermask", "slot_machine", "laperm", "lookahead", "tom"):
        assert f"randjax.methods.{name}" in MODULES
        assert getattr(randjax, name).__module__ == f"randjax.methods.{name}"


def test_the_core_imports_without_the_extras():
    # (absl comes with orbax, a core dependency.)
    blocked = ["ml_collections", "matplotlib", "tensorflow_datasets", "chex"]
    code = (f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n"
            "import jax.numpy as jnp, optax, randjax\n"
            "d = randjax.data.load('digits')\n"
            "r = randjax.fit(randjax.models.get('lenet300_100', width=0.1), d, optax.sgd(0.1),"
            " epochs=1, batch_size=256, progress=False)\n"
            "print(r.summary['steps'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "6"


def test_heavy_dependencies_are_imported_only_where_used():
    # Startup time: the experiment CLI's imports leave out what a run may not
    # need (orbax is imported by the first fit with a workdir).
    heavy = ["orbax.checkpoint", "matplotlib", "tensorflow_datasets", "sklearn",
             "tensorboardX", "equinox"]
    code = ("import sys, randjax, experiments.train, experiments.benchmark\n"
            f"print([m for m in {heavy!r} if m in sys.modules])\n"
            "randjax.data.load('digits')\n"
            "print('sklearn' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=False, cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[:2] == ["[]", "True"]
