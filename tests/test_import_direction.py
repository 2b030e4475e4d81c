"""The core sits below the plugins: its modules never import an accelerator, a parallelism plugin
or a concrete adapter, and the adapter contract never imports the runtime.

The imports are read from the source with `ast`, every one of them: module level, inside
functions (a lazy import is still a dependency) and under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "srd_plugin"

#: the core: what every generation runs through, whichever plugins are installed
CORE = (
    "srd_plugin.config",
    "srd_plugin.accelerator_configs",
    "srd_plugin.runtime",
    "srd_plugin.switching",
    "srd_plugin.trace",
    "srd_plugin.errors",
    "srd_plugin.adapters.base",
    "srd_plugin.attachments",
    "srd_plugin.parametrization",
    "srd_plugin.sharing",
    "srd_plugin.guidance",
    "srd_plugin.speed",
)
#: packages the core must not import (plugins); and no adapter module but the contract (model-family knowledge)
FORBIDDEN = ("srd_plugin.hooks", "srd_plugin.parallel")
ADAPTER_CONTRACT = "srd_plugin.adapters.base"


def source_file(module: str) -> Path:
    return PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")


def imported_modules(module: str) -> set[str]:
    """Every module `module` imports, as absolute dotted names (`from . import x` gives `pkg.x` too)."""
    package = module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source_file(module).read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def forbidden(name: str) -> bool:
    if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN):
        return True
    concrete_adapter = name.startswith("srd_plugin.adapters.") and not name.startswith(ADAPTER_CONTRACT)
    return concrete_adapter


def test_the_reader_resolves_relative_imports_and_sees_lazy_and_type_checking_ones(tmp_path, monkeypatch):
    """The reader itself: a check that read nothing would pass on any code."""
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "base.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..runtime import Session\n"
        "def f():\n    from ..hooks.teacache import TeaCacheConfig\n"
        "from . import wan\n"
    )
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path)
    names = imported_modules("srd_plugin.adapters.base")
    assert {"srd_plugin.runtime", "srd_plugin.hooks.teacache", "srd_plugin.adapters.wan"} <= names
    assert forbidden("srd_plugin.hooks.teacache") and forbidden("srd_plugin.adapters.wan")
    assert not forbidden("srd_plugin.hookspecs") and not forbidden("srd_plugin.adapters.base")


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_plugin_and_no_concrete_adapter(module):
    assert source_file(module).is_file(), f"{module} moved: update CORE in this test"
    bad = sorted(name for name in imported_modules(module) if forbidden(name))
    assert not bad, f"{module} imports {bad}: the core must not depend on a plugin or a concrete adapter"


def test_the_adapter_contract_does_not_import_the_runtime():
    """adapters/base.py is what the runtime programs against; it must not need the runtime, even for types."""
    names = imported_modules("srd_plugin.adapters.base")
    assert not {name for name in names if name == "srd_plugin.runtime" or name.startswith("srd_plugin.runtime.")}
