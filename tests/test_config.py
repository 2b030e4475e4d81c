"""SRDConfig validation: every bad value is a ValueError naming the field and the allowed range."""

from __future__ import annotations

import pytest

from srd_plugin import SRDConfig


def test_defaults_are_the_papers():
    config = SRDConfig()
    assert (config.switch, config.threshold, config.min_sketch_steps, config.max_sketch_steps) == (
        "adaptive",
        0.01,
        5,
        None,
    )
    assert config.resolved_max_sketch_steps(50) == 30
    assert config.resolved_max_sketch_steps(6) == 5  # never below min_sketch_steps


@pytest.mark.parametrize(
    "kwargs, field, words",
    [
        (dict(switch="sometimes"), "switch", "adaptive"),
        (dict(threshold=0.0), "threshold", "(0, 1]"),
        (dict(threshold=float("nan")), "threshold", "(0, 1]"),
        (dict(threshold="0.01"), "threshold", "(0, 1]"),
        (dict(min_sketch_steps=0), "min_sketch_steps", ">= 1"),
        (dict(min_sketch_steps=True), "min_sketch_steps", ">= 1"),
        (dict(max_sketch_steps=0), "max_sketch_steps", ">= 1"),
        (dict(min_sketch_steps=8, max_sketch_steps=4), "max_sketch_steps", "min_sketch_steps"),
        (dict(switch="step"), "switch_step", "needs switch_step"),
        (dict(switch="step", switch_step=-1), "switch_step", ">= 0"),
        (dict(switch="step", switch_step=2.5), "switch_step", ">= 0"),
        (dict(switch_step=3), "switch_step", "only used with switch='step'"),
        (dict(switch="ratio"), "switch_ratio", "needs switch_ratio"),
        (dict(switch="ratio", switch_ratio=1.5), "switch_ratio", "[0, 1]"),
        (dict(switch="boundary", boundary_ratio=-0.1), "boundary_ratio", "[0, 1]"),
        (dict(boundary_ratio=0.5), "boundary_ratio", "only used with switch='boundary'"),
        (dict(move_renderer="yes"), "move_renderer", "True or False"),
        (dict(renderer_dtype="fp8"), "renderer_dtype", "bfloat16"),
        (dict(on_renderer_failure="ignore"), "on_renderer_failure", "fallback"),
    ],
)
def test_bad_values_name_field_and_range(kwargs, field, words):
    with pytest.raises(ValueError) as info:
        SRDConfig(**kwargs)
    message = str(info.value)
    assert f"SRDConfig.{field}=" in message
    assert words in message


def test_replace_validates_and_rejects_unknown_fields():
    config = SRDConfig()
    assert config.replace(switch="step", switch_step=3).switch_step == 3
    with pytest.raises(ValueError, match="unknown SRDConfig field.*treshold"):
        config.replace(treshold=0.1)
    with pytest.raises(ValueError, match="switch_step"):
        config.replace(switch="step")


def test_to_dict_is_plain_data():
    import json

    assert json.loads(json.dumps(SRDConfig().to_dict()))["switch"] == "adaptive"
