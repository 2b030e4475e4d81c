"""The GPU memory benchmark's code path, with tiny models on the CPU (`python benchmarks/gpu_memory.py --tiny`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_memory.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_memory", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_tiny_run_measures_every_mode(bench, capsys):
    assert bench.main(["--tiny"]) == 0
    text = capsys.readouterr().out
    for mode in bench.MODES:
        assert f"| {mode} |" in text
    assert "bars: not evaluated (no GPU)" in text


def test_real_shapes_are_the_wan21_configs(bench):
    """The GPU run builds these; the parameter counts are those of the published checkpoints."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    counts = []
    for size in (bench.WAN_14B, bench.WAN_1_3B):
        with init_empty_weights():
            model = WanTransformer3DModel(**bench.WAN_COMMON, **size)
        counts.append(sum(p.numel() for p in model.parameters()))
    assert 14.0e9 < counts[0] < 14.4e9 and 1.3e9 < counts[1] < 1.5e9


def test_verdicts_apply_the_issue_bars(bench):
    trace = bench.srd.RunTrace(
        roles=["sketch"] * 2 + ["render"] * 3,
        switch_step=2,
        step_seconds=[5.0, 5.0, 0.55, 0.5, 0.5],
        memory_allocated=[30, 30, 10, 10, 10],
        memory_reserved=[32, 32, 12, 12, 12],
    )
    results = [bench.ModeResult(mode, [trace]) for mode in bench.MODES]
    assert results[0].memory_ratio == pytest.approx(1 / 3) and results[0].switch_ratio == pytest.approx(1.1)
    assert bench.verdicts(results) == [
        "bar 1: render / sketch peak allocated with after_switch = 33.3% (meets <= 35%)",
        "bar 2: switch step / median render step with prefetch = 1.10 (meets <= 1.10)",
    ]
