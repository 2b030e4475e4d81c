"""The pair benchmark runner (benchmarks/gpu_pairs.py) on tiny configs, and its FLOP arithmetic."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks.{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_run_times_every_discovered_pair(tmp_path):
    runner = load("gpu_pairs")
    out = tmp_path / "pairs.md"
    assert runner.main(["--tiny", "--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    names = {spec.name for spec in runner.discover()}
    assert {row["pair"] for row in rows} == names
    assert any(name.startswith("LTX") for name in names) and any(name.startswith("Cosmos") for name in names)
    for row in rows:
        assert row["sketcher_step_s"] > 0 and row["renderer_step_s"] > 0
        assert row["time_ratio"] == pytest.approx(row["sketcher_step_s"] / row["renderer_step_s"])
        assert row["sketcher_params_b"] > row["renderer_params_b"]
        # the tiny sketchers are bigger than their renderers, so their calls cost more FLOPs
        assert row["flop_ratio"] > 1
        n, ratio = row["steps"], row["flop_ratio"]
        assert row["S(10) flops"] == pytest.approx(n * ratio / (10 * ratio + n - 10))
    text = out.read_text()
    assert "| pair |" in text and all(name in text for name in names)


def test_flop_count_of_the_wan_14b_call_matches_the_hand_count():
    """FACTS.md counts 1.66 PFLOP for one Wan2.1-14B call at 832x480, 81 frames (video tokens only);
    the meta-device count adds the 512 text tokens' cross-attention keys/values and the modulation."""
    from benchmarks.shapes import WAN_14B_SIZE, WAN_COMMON

    pair_spec = load("pair_spec")

    def inputs(config, tiny, device, dtype):
        return dict(
            hidden_states=torch.randn((1, 16, 21, 60, 104), device=device, dtype=dtype),
            timestep=torch.tensor([500.0], device=device),
            encoder_hidden_states=torch.randn((1, 512, 4096), device=device, dtype=dtype),
            return_dict=False,
        )

    config = dict(WAN_COMMON, **WAN_14B_SIZE)
    spec = pair_spec.PairSpec(
        name="Wan",
        model_class="WanTransformer3DModel",
        sketcher=config,
        renderer=config,
        tiny_sketcher={},
        tiny_renderer={},
        make_inputs=inputs,
        calls_per_step=2,
        steps=50,
        source="FACTS.md",
    )
    flops = pair_spec.flops_per_call(spec, config)
    assert flops == pytest.approx(1.66e15, rel=0.02)
    assert pair_spec.flops_per_step(spec, config) == 2 * flops


def test_projected_speedup_and_break_even_arithmetic():
    pair_spec = load("pair_spec")
    assert pair_spec.projected_speedup(5.0, 1.0, 0, 50) == pytest.approx(5.0)
    assert pair_spec.projected_speedup(5.0, 1.0, 50, 50) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="0..50"):
        pair_spec.projected_speedup(5.0, 1.0, 51, 50)
    # k Ts + (N - k) Tr = budget Tr: with Ts = 5, Tr = 1, N = 50 and a budget of 70 small steps, k = 5
    assert pair_spec.break_even_switch(5.0, 1.0, 50, 70) == pytest.approx(5.0)
    # a 16-step distilled small model is cheaper than 50 rendered steps: no switch step breaks even
    assert pair_spec.break_even_switch(5.0, 1.0, 50, 16) < 0


def test_discover_refuses_a_module_without_pair_specs(tmp_path):
    runner = load("gpu_pairs")
    (tmp_path / "pairs_bad.py").write_text("PAIRS = [{'name': 'not a PairSpec'}]\n")
    with pytest.raises(TypeError, match="pairs_bad.py must define PAIRS"):
        runner.discover(tmp_path)


def test_only_names_the_pairs_when_nothing_matches():
    runner = load("gpu_pairs")
    with pytest.raises(SystemExit, match="matches no pair; the pairs are: .*LTX"):
        runner.select(runner.discover(), "no-such-family")


def test_torchvision_resize_stand_in_is_nearest_neighbour_in_the_input_dtype():
    from srd_plugin.testing.torchvision_resize import resize

    mask = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]], dtype=torch.bfloat16)
    out = resize(mask, [4, 4])
    assert out.dtype == torch.bfloat16 and out.shape == (1, 1, 4, 4)
    assert torch.equal(
        out[0, 0].float(), torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]]).float()
    )
    with pytest.raises(NotImplementedError, match="bilinear"):
        resize(mask, [4, 4], interpolation="bilinear")
