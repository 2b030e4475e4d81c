"""The WanPipeline against independent oracles, bit for bit where the arithmetic is the same.

* disabled equals never enabled;
* switch at N equals the plain pipeline, switch at 0 equals the pipeline built around the renderer;
* the boundary policy equals diffusers' own Wan2.2 `transformer_2` / `boundary_ratio` path;
* the adaptive policy switches exactly where a reference computation over the sketcher-only
  x0 sequence says it must.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import WanPipeline

import srd_plugin as srd
from srd_plugin.testing import tiny_call_kwargs, tiny_wan_pipeline

STEPS = 10


def generate(pipe, **overrides):
    return pipe(**tiny_call_kwargs(STEPS, **overrides)).frames


def rebuilt(pipe, **components):
    """Another WanPipeline sharing `pipe`'s components except those given."""
    parts = {k: v for k, v in pipe.components.items() if k not in ("transformer_2",)}
    parts.update(components)
    new = WanPipeline(**parts)
    new.set_progress_bar_config(disable=True)
    return new


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_disabled_equals_never_enabled(scheduler, renderer):
    untouched = tiny_wan_pipeline(scheduler=scheduler)
    toggled = tiny_wan_pipeline(scheduler=scheduler)
    for p in (untouched, toggled):
        p.set_progress_bar_config(disable=True)
    expected = generate(untouched)
    srd.enable(toggled, renderer, switch="step", switch_step=3)
    enabled_output = generate(toggled)
    srd.disable(toggled)
    assert not torch.equal(enabled_output, expected)  # the switch did something
    assert torch.equal(generate(toggled), expected)
    # nothing of ours is left on the instances
    assert "forward" not in toggled.transformer.__dict__
    assert not ({"step", "set_timesteps"} & toggled.scheduler.__dict__.keys())


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_switch_at_n_equals_plain_pipeline(scheduler, renderer):
    pipe = tiny_wan_pipeline(scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    expected = generate(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=STEPS)
    assert torch.equal(generate(pipe), expected)
    assert srd.last_trace(pipe).roles == ["sketch"] * STEPS
    assert srd.last_trace(pipe).switch_step is None


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_switch_at_zero_equals_renderer_pipeline(scheduler, renderer):
    pipe = tiny_wan_pipeline(scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    expected = generate(rebuilt(pipe, transformer=renderer))
    srd.enable(pipe, renderer, switch="step", switch_step=0)
    assert torch.equal(generate(pipe), expected)
    trace = srd.last_trace(pipe)
    assert trace.roles == ["render"] * STEPS and trace.switch_step == 0


@pytest.mark.parametrize("boundary_ratio", [0.9, 0.75, 0.5])
@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_boundary_equals_diffusers_wan22_path(scheduler, boundary_ratio, renderer):
    pipe = tiny_wan_pipeline(scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    wan22 = rebuilt(pipe, transformer_2=renderer, boundary_ratio=boundary_ratio)
    expected = generate(wan22)
    srd.enable(pipe, renderer, switch="boundary", boundary_ratio=boundary_ratio)
    actual = generate(pipe)
    trace = srd.last_trace(pipe)
    assert 0 < trace.switch_step < STEPS  # a real switch inside the run
    boundary = boundary_ratio * 1000
    assert trace.roles == ["sketch" if t >= boundary else "render" for t in trace.timesteps]
    assert torch.equal(actual, expected)


def sketcher_only_x0(pipe, **call):
    """Reference: the guided x0 of every step of the plain pipeline, from a spy on its scheduler."""
    scheduler = pipe.scheduler
    original = scheduler.step
    record = []

    def spy(model_output, timestep, sample, *args, **kwargs):
        sigma = scheduler.sigmas[len(record)].item()
        record.append(sample.double() - sigma * model_output.double())
        return original(model_output, timestep, sample, *args, **kwargs)

    scheduler.step = spy
    try:
        pipe(**call)
    finally:
        del scheduler.step
    return record


def reference_switch(x0s, threshold, min_steps, max_steps):
    """The adaptive rule written out directly in float64 (independent of srd_plugin.switching)."""
    n_total = len(x0s)
    d = [None] + [
        math.tanh((x0s[i] - x0s[i - 1]).abs().mean().item() / max(x0s[i - 1].abs().mean().item(), 1e-8))
        for i in range(1, n_total)
    ]
    for i in range(n_total):
        n = i + 1
        s = d[i - 1] - d[i] if i >= 2 else None
        if n >= n_total:
            break
        if n >= min_steps and s is not None and 0 < s < threshold:
            return n, "settled", d
        if n >= min_steps and n >= max_steps:
            return n, "max", d
    return None, "none", d


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_adaptive_switches_where_the_reference_says(scheduler, renderer):
    steps = 20
    pipe = tiny_wan_pipeline(scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    x0s = sketcher_only_x0(pipe, **tiny_call_kwargs(steps))
    branches = set()
    for threshold in (1e-6, 0.001, 0.01, 0.05, 0.2):
        expected, reason, distances = reference_switch(x0s, threshold, min_steps=5, max_steps=math.ceil(0.6 * steps))
        srd.enable(pipe, renderer, threshold=threshold)
        pipe(**tiny_call_kwargs(steps))
        trace = srd.last_trace(pipe)
        assert trace.switch_step == expected, f"threshold {threshold}"
        for i in range(1, expected):
            assert trace.distances[i] == pytest.approx(distances[i], rel=1e-4, abs=1e-6)
        branches.add(reason)
    assert branches == {"max", "settled"}, "the thresholds must exercise both ways to switch"


def test_adaptive_sketch_prefix_equals_sketcher_only(pipe, renderer):
    """Before the switch the SRD run is the plain run: compare latents step by step."""
    seen = {}

    def record(label):
        def callback(p, i, t, kwargs):
            seen.setdefault(label, []).append(kwargs["latents"].clone())
            return {}

        return callback

    pipe(**tiny_call_kwargs(20), callback_on_step_end=record("plain"))
    srd.enable(pipe, renderer)
    pipe(**tiny_call_kwargs(20), callback_on_step_end=record("srd"))
    k = srd.last_trace(pipe).switch_step
    assert 5 <= k < 20
    for i in range(k):
        assert torch.equal(seen["plain"][i], seen["srd"][i])
    assert not torch.equal(seen["plain"][k], seen["srd"][k])


@pytest.mark.parametrize(
    "call",
    [
        dict(guidance_scale=1.0),  # no CFG: one transformer call per step
        dict(prompt=["a red circle", "a blue square moving up"], negative_prompt=["blurry", "dark"]),
        dict(num_videos_per_prompt=2),
    ],
    ids=["no-cfg", "two-prompts", "two-videos-per-prompt"],
)
def test_call_variants_follow_the_oracles(pipe, renderer, call):
    renderer_only = generate(rebuilt(pipe, transformer=renderer), **call)
    plain = generate(pipe, **call)
    srd.enable(pipe, renderer, switch="step", switch_step=0)
    assert torch.equal(generate(pipe, **call), renderer_only)
    srd.enable(pipe, renderer, switch="step", switch_step=STEPS)
    assert torch.equal(generate(pipe, **call), plain)


@pytest.mark.parametrize("output_type", ["np", "pil"])
def test_decoded_outputs(pipe, renderer, output_type):
    srd.enable(pipe, renderer, switch="step", switch_step=4)
    frames = pipe(**tiny_call_kwargs(6, output_type=output_type)).frames
    assert len(frames) == 1 and len(frames[0]) == 9
    srd.disable(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=6)
    sketch_only = pipe(**tiny_call_kwargs(6, output_type=output_type)).frames
    srd.disable(pipe)
    plain = pipe(**tiny_call_kwargs(6, output_type=output_type)).frames
    if output_type == "np":
        assert (sketch_only == plain).all()
    else:
        assert [f.tobytes() for f in sketch_only[0]] == [f.tobytes() for f in plain[0]]
