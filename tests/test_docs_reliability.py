"""docs/reliability.md names every test of the reliability modules, and every test it cites exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: modules whose every test is a documented guarantee
DOCUMENTED_MODULES = ("test_reliability.py", "test_ownership.py", "test_parametrization.py")


def _tests_in(path: Path) -> set[str]:
    module = ast.parse(path.read_text())
    return {node.name for node in module.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_reliability_test_is_documented_and_every_cited_test_exists():
    documented = set().union(*(_tests_in(ROOT / "tests" / name) for name in DOCUMENTED_MODULES))
    existing = set().union(*(_tests_in(path) for path in (ROOT / "tests").glob("test_*.py")))
    cited = set(re.findall(r"`(test_\w+)`", (ROOT / "docs" / "reliability.md").read_text()))
    assert documented, "no tests found"
    assert sorted(documented - cited) == [], "tests missing from docs/reliability.md"
    assert sorted(cited - existing) == [], "docs/reliability.md cites tests that do not exist"
