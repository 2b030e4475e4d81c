"""docs/reliability.md and tests/test_reliability.py name each other completely."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_reliability_test_is_documented_and_every_cited_test_exists():
    module = ast.parse((ROOT / "tests" / "test_reliability.py").read_text())
    defined = {node.name for node in module.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
    cited = set(re.findall(r"`(test_\w+)`", (ROOT / "docs" / "reliability.md").read_text()))
    assert defined, "no tests found"
    assert sorted(defined - cited) == [], "tests missing from docs/reliability.md"
    assert sorted(cited - defined) == [], "docs/reliability.md cites tests that do not exist"
