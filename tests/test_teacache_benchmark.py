"""The TeaCache CPU benchmark's logic, on its --tiny path (the figures live in BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location("bench_teacache_cpu", ROOT / "benchmarks" / "teacache_cpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_block_counts_and_the_bar_verdict(capsys):
    bench = load()
    steps = 12
    rows = bench.run(steps, [1.0, 3.0])
    alone = rows[0]
    k = alone.switch_step
    assert alone.blocks == 2 * (4 * k + 2 * (steps - k))  # cond + uncond, 4-block sketcher, 2-block renderer
    assert all(row.blocks <= alone.blocks and row.error >= 0 for row in rows[1:])
    assert rows[-1].blocks < alone.blocks  # the larger threshold does skip
    text = bench.table(rows, steps)
    assert f"| SRD alone | - | {alone.blocks} | 0.0% |" in text

    within, beyond = bench.Row(1.0, 60, 3, 0.01), bench.Row(3.0, 10, 3, 0.2)
    assert bench.best([alone, within, beyond]) is within
    assert bench.best([alone, beyond]) is None
    assert "bar NOT met" in bench.table([bench.Row(None, 100, 3, 0.0), beyond], steps)
    verdict = bench.table([bench.Row(None, 100, 3, 0.0), bench.Row(1.0, 60, 3, 0.01)], steps)
    assert "40.0% fewer" in verdict and "bar (>= 30% fewer) met" in verdict


def test_main_tiny_prints_the_table(capsys):
    assert load().main(["--tiny", "--steps", "6"]) == 0
    assert "SRD + TeaCache" in capsys.readouterr().out
