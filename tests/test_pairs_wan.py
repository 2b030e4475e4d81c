"""The issue-17 benchmark pairs: every model builds and runs one call at its tiny config on the CPU,
and the published configs are the Wan architectures the adapters serve.

Needs `benchmarks/pair_spec.py` (the shared GPU pair-benchmark interface, issue 18); skipped
where that module is not present yet.
"""

from __future__ import annotations

import pytest
import torch

pair_spec = pytest.importorskip("benchmarks.pair_spec")


def test_every_pair_runs_its_tiny_call_on_the_cpu():
    from benchmarks.pairs_wan import PAIRS

    assert {p.model_class for p in PAIRS} == {
        "WanVACETransformer3DModel",
        "SkyReelsV2Transformer3DModel",
        "WanTransformer3DModel",
    }
    for spec in PAIRS:
        for config in (spec.tiny_sketcher, spec.tiny_renderer):
            model = pair_spec.build_model(spec, config, torch.device("cpu"), torch.float32)
            inputs = spec.make_inputs(config, True, torch.device("cpu"), torch.float32)
            with torch.no_grad():
                sample = model(**inputs)[0]
            assert sample.shape == inputs["hidden_states"].shape[:1] + (config["out_channels"],) + sample.shape[2:]


def test_published_configs_share_the_latent_space_and_differ_in_size():
    from benchmarks.pairs_wan import PAIRS

    for spec in PAIRS:
        for key in ("in_channels", "out_channels", "patch_size", "text_dim"):
            assert spec.sketcher[key] == spec.renderer[key], (spec.name, key)
        assert spec.sketcher["num_layers"] * spec.sketcher["num_attention_heads"] > 4 * (
            spec.renderer["num_layers"] * spec.renderer["num_attention_heads"]
        )


def test_flop_ratio_of_the_wan22_pair_matches_the_wan21_arithmetic():
    """Wan2.2 A14B experts have the Wan2.1 14B shape: the FLOP ratio is FACTS.md's ~5.9 at 480p, 81 frames."""
    from benchmarks.pairs_wan import PAIRS

    spec = next(p for p in PAIRS if "Wan2.2" in p.name)
    ratio = pair_spec.flops_per_step(spec, spec.sketcher, sketcher=True) / pair_spec.flops_per_step(spec, spec.renderer)
    assert ratio == pytest.approx(5.9, abs=0.1)
