"""The Wan family beyond Wan2.1 text-to-video, and CogVideoX video-to-video, against the host itself.

The oracle for "sketch k steps, then render" is the plain pipeline whose callback swaps the
renderer in after step k-1 (`swap_oracle`); SRD with `switch="step"` must equal it bit for bit.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import srd_plugin as srd
from srd_plugin.errors import IncompatibleRendererError
from srd_plugin.runtime import ROUTER_HOOK_NAME
from srd_plugin.testing import (
    CogVideoXSize,
    swap_oracle,
    tiny_call_kwargs,
    tiny_cogvideox_transformer,
    tiny_wan_renderer,
)
from srd_plugin.testing.wan_family import (
    tiny_cogvideox_v2v_call_kwargs,
    tiny_cogvideox_v2v_pipeline,
    tiny_wan22_pipeline,
    tiny_wan_v2v_call_kwargs,
    tiny_wan_v2v_pipeline,
)

STEPS = 10
STRENGTH = 0.6  # the loop runs the last 6 of 10 steps


def frames(pipe, call):
    return pipe(**call).frames


# -- video-to-video: the run follows the steps the loop really runs ---------------------------------------
V2V = {
    "wan": (tiny_wan_v2v_pipeline, tiny_wan_v2v_call_kwargs, tiny_wan_renderer),
    "cogvideox": (
        tiny_cogvideox_v2v_pipeline,
        tiny_cogvideox_v2v_call_kwargs,
        # same parametrization and rotary tables as the host, so the host's own swap is the oracle
        lambda: tiny_cogvideox_transformer(CogVideoXSize(1, 2, 16, rotary=True), seed=1),
    ),
}


@pytest.mark.parametrize("family", sorted(V2V))
@pytest.mark.parametrize("k", [0, 2, 4, 6])
def test_v2v_step_switch_equals_the_callback_oracle(family, k):
    build, call, make_renderer = V2V[family]
    pipe, renderer = build(), make_renderer()
    expected = swap_oracle(pipe, renderer, k, call(STEPS, STRENGTH))
    srd.enable(pipe, renderer, switch="step", switch_step=k)
    assert torch.equal(frames(pipe, call(STEPS, STRENGTH)), expected)
    trace = srd.last_trace(pipe)
    ran = int(STEPS * STRENGTH)
    assert trace.num_steps == ran and len(trace.roles) == ran and trace.completed
    assert trace.roles == ["sketch"] * k + ["render"] * (ran - k)
    assert trace.timesteps == [float(t) for t in pipe.scheduler.timesteps[STEPS - ran :]]
    assert any("starts at step 4 of the scheduler's 10-step schedule" in e for e in trace.events)


@pytest.mark.parametrize("family", sorted(V2V))
def test_v2v_switch_step_beyond_the_steps_run_fails_before_denoising(family):
    build, call, make_renderer = V2V[family]
    pipe, renderer = build(), make_renderer()
    steps_taken, original_step = [], pipe.scheduler.step

    @functools.wraps(original_step)  # keeps the step's signature, which the runtime binds
    def counting_step(*args, **kwargs):
        steps_taken.append(1)
        return original_step(*args, **kwargs)

    pipe.scheduler.step = counting_step
    srd.enable(pipe, renderer, switch="step", switch_step=8)  # 8 <= 10 scheduled, but only 6 run
    with pytest.raises(ValueError, match="switch_step=8 is beyond the 6 denoising steps"):
        frames(pipe, call(STEPS, STRENGTH))
    assert steps_taken == [] and not srd.last_trace(pipe).completed
    srd.enable(pipe, renderer, switch="step", switch_step=6)  # all the steps that run: the plain pipeline
    pipe_plain = build()
    assert torch.equal(frames(pipe, call(STEPS, STRENGTH)), frames(pipe_plain, call(STEPS, STRENGTH)))


@pytest.mark.parametrize("family", sorted(V2V))
def test_v2v_adaptive_sizes_max_sketch_steps_by_the_steps_run(family):
    build, call, make_renderer = V2V[family]
    pipe = build()
    # threshold 1e-12: never "settled" here, so max_sketch_steps decides: ceil(0.6 x 6 steps run) = 4, not 6
    srd.enable(pipe, make_renderer(), switch="adaptive", threshold=1e-12, min_sketch_steps=1)
    frames(pipe, call(STEPS, STRENGTH))
    trace = srd.last_trace(pipe)
    assert trace.num_steps == 6 and trace.switch_step == 4
    assert trace.distances[0] is None and all(d is not None for d in trace.distances[1:4])


def test_wan_v2v_adaptive_x0_at_the_schedulers_own_index():
    """x0 = x_t - sigma v with sigma of the step the loop runs (index offset by the skipped head)."""
    pipe = tiny_wan_v2v_pipeline()
    scheduler, recorded = pipe.scheduler, []
    original = scheduler.step

    def spy(model_output, timestep, sample, *args, **kwargs):
        result = original(model_output, timestep, sample, *args, **kwargs)
        sigma = scheduler.sigmas[scheduler.step_index - 1]  # the index the scheduler itself just used
        recorded.append(sample.float() - sigma * model_output.float())
        return result

    scheduler.step = spy
    srd.enable(pipe, tiny_wan_renderer(), switch="adaptive", threshold=1e-12, min_sketch_steps=1, max_sketch_steps=5)
    frames(pipe, tiny_wan_v2v_call_kwargs(STEPS, STRENGTH))
    trace = srd.last_trace(pipe)
    d1 = torch.tanh((recorded[1] - recorded[0]).abs().mean() / recorded[0].abs().mean()).item()
    assert trace.distances[1] == pytest.approx(d1, rel=1e-5)


# -- Wan2.2 A14B: the renderer replaces both experts -----------------------------------------------------
def wan22_boundary_step(pipe, steps=STEPS):
    """The first step of the low-noise expert for this pipeline's schedule."""
    pipe.scheduler.set_timesteps(steps)
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    return next(i for i, t in enumerate(pipe.scheduler.timesteps) if t < boundary)


def test_wan22_boundary_falls_inside_the_tiny_run():
    assert 0 < wan22_boundary_step(tiny_wan22_pipeline()) < STEPS - 2


@pytest.mark.parametrize("where", ["before", "at", "after", "end"])
def test_wan22_step_switch_equals_the_two_expert_oracle(where):
    pipe, renderer = tiny_wan22_pipeline(), tiny_wan_renderer()
    boundary = wan22_boundary_step(pipe)
    k = {"before": boundary - 1, "at": boundary, "after": boundary + 2, "end": STEPS}[where]
    expected = swap_oracle(pipe, renderer, k, tiny_call_kwargs(STEPS), ("transformer", "transformer_2"))
    srd.enable(pipe, renderer, switch="step", switch_step=k)
    assert torch.equal(frames(pipe, tiny_call_kwargs(STEPS)), expected)
    assert srd.last_trace(pipe).roles == ["sketch"] * k + ["render"] * (STEPS - k)
    srd.disable(pipe)
    plain = swap_oracle(pipe, renderer, STEPS, tiny_call_kwargs(STEPS))
    assert torch.equal(frames(pipe, tiny_call_kwargs(STEPS)), plain)
    for expert in (pipe.transformer, pipe.transformer_2):  # both routers removed (the host's cache_context
        assert "forward" not in expert.__dict__  # made the registries before enable, so they stay)
        assert expert._diffusers_hook.get_hook(ROUTER_HOOK_NAME) is None


def test_wan22_renderer_carrying_the_experts_weights_gives_the_plain_output():
    """Render from step 0 with a module that is the low-noise expert: equals the plain two-expert run only
    if no step renders in place of the high-noise expert; so use the boundary policy for the first part."""
    pipe = tiny_wan22_pipeline()
    plain = frames(pipe, tiny_call_kwargs(STEPS))
    boundary = wan22_boundary_step(pipe)
    twin = tiny_wan22_pipeline().transformer_2  # same seed: the low-noise expert's weights
    srd.enable(pipe, twin, switch="step", switch_step=boundary)
    assert torch.equal(frames(pipe, tiny_call_kwargs(STEPS)), plain)


def test_wan22_adaptive_observes_only_the_low_noise_expert():
    pipe = tiny_wan22_pipeline()
    boundary = wan22_boundary_step(pipe)
    srd.enable(pipe, tiny_wan_renderer(), switch="adaptive", threshold=1.0, min_sketch_steps=1, max_sketch_steps=9)
    frames(pipe, tiny_call_kwargs(STEPS))
    trace = srd.last_trace(pipe)
    # nothing is measured before the boundary; the first low-noise step has no previous x0 to compare
    assert trace.distances[: boundary + 1] == [None] * (boundary + 1)
    assert trace.distances[boundary + 1] is not None
    # threshold 1.0 switches at the first positive s_i: two low-noise distances are needed
    assert trace.switch_step is not None and trace.switch_step >= boundary + 3
    assert trace.roles[: trace.switch_step] == ["sketch"] * trace.switch_step


def test_wan22_adaptive_never_switches_before_the_boundary_even_past_max_sketch_steps():
    pipe = tiny_wan22_pipeline()
    boundary = wan22_boundary_step(pipe)
    srd.enable(pipe, tiny_wan_renderer(), switch="adaptive", threshold=1e-12, min_sketch_steps=1, max_sketch_steps=1)
    frames(pipe, tiny_call_kwargs(STEPS))
    assert srd.last_trace(pipe).switch_step == boundary + 1  # after the first low-noise step


def test_wan22_incompatible_renderer_refused_with_every_mismatch():
    pipe = tiny_wan22_pipeline()
    wrong = tiny_wan_renderer()
    wrong.register_to_config(text_dim=64, in_channels=8)
    with pytest.raises(IncompatibleRendererError) as error:
        srd.enable(pipe, wrong)
    assert "text_dim" in str(error.value) and "in_channels" in str(error.value)


@pytest.mark.parametrize("family", sorted(V2V))
def test_v2v_renderer_carrying_the_sketchers_weights_gives_the_plain_output(family):
    build, call, _ = V2V[family]
    pipe = build()
    plain = frames(pipe, call(STEPS, STRENGTH))
    srd.enable(pipe, copy.deepcopy(pipe.transformer), switch="step", switch_step=2)
    assert torch.equal(frames(pipe, call(STEPS, STRENGTH)), plain)


# -- discovery: srd doctor, srd-run ------------------------------------------------------------------------
NEW_PIPELINES = {
    "srd_plugin.adapters.wan": ("WanVideoToVideoPipeline", "WanVACEPipeline", "WanImageToVideoPipeline"),
    "srd_plugin.adapters.cogvideox": ("CogVideoXVideoToVideoPipeline", "CogVideoXImageToVideoPipeline"),
    "srd_plugin.adapters.skyreels": ("SkyReelsV2Pipeline", "SkyReelsV2ImageToVideoPipeline"),
}


def test_doctor_names_every_new_pipeline(capsys):
    from srd_plugin.cli import main

    main(["doctor"])
    lines = capsys.readouterr().out.splitlines()
    for plugin, names in NEW_PIPELINES.items():
        [line] = [line for line in lines if line.strip().startswith(plugin + " ")]
        assert all(name in line for name in names), line


def test_srd_run_watches_every_new_pipeline_and_the_refused_diffusion_forcing_ones():
    import diffusers

    from srd_plugin.launcher import watched_classes

    watched = {cls.__name__ for cls in watched_classes()}
    assert {name for names in NEW_PIPELINES.values() for name in names} <= watched
    assert "SkyReelsV2DiffusionForcingPipeline" in watched  # watched so that srd-run says why it is refused
    assert all(isinstance(getattr(diffusers, name), type) for name in watched if name[0].isupper())


def test_srd_run_enables_a_video_to_video_pipeline_it_sees_built():
    from srd_plugin.config import SRDConfig
    from srd_plugin.launcher import watching
    from srd_plugin.settings import Settings

    factory = "srd_plugin.testing:tiny_wan_renderer"
    settings = Settings(True, SRDConfig(switch="step", switch_step=2), factory, renderer_is_factory=True)
    with watching(settings, log=lambda line: None):
        pipe = tiny_wan_v2v_pipeline()
        assert srd.is_enabled(pipe)
        frames(pipe, tiny_wan_v2v_call_kwargs(STEPS, STRENGTH))
    assert srd.last_trace(pipe).roles == ["sketch"] * 2 + ["render"] * 4  # 6 of 10 steps run (strength 0.6)
    srd.disable(pipe)


def test_v2v_with_a_compiled_sketcher_is_sized_at_the_first_scheduler_step():
    """`transformer.compile()`: the router leaves the anchoring to the first scheduler step (no graph break)."""
    pipe, renderer = tiny_wan_v2v_pipeline(), tiny_wan_renderer()
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    eager = frames(pipe, tiny_wan_v2v_call_kwargs(STEPS, STRENGTH))
    torch._dynamo.reset()
    try:
        pipe.transformer.compile(backend="eager")
        assert torch.equal(frames(pipe, tiny_wan_v2v_call_kwargs(STEPS, STRENGTH)), eager)
        assert srd.last_trace(pipe).roles == ["sketch"] * 2 + ["render"] * 4
        srd.enable(pipe, renderer, switch="step", switch_step=8)
        with pytest.raises(ValueError, match="switch_step=8 is beyond the 6 denoising steps"):
            frames(pipe, tiny_wan_v2v_call_kwargs(STEPS, STRENGTH))
    finally:
        torch._dynamo.reset()


def test_wan22_low_noise_expert_as_the_renderer_moves_the_boundary_earlier():
    """The renderer may be `transformer_2` itself (a routed module): called past its router, no recursion;
    switching at the boundary is then exactly the plain two-expert run, and earlier moves the boundary."""
    pipe = tiny_wan22_pipeline()
    plain = frames(pipe, tiny_call_kwargs(STEPS))
    boundary = wan22_boundary_step(pipe)
    expert = pipe.transformer_2
    srd.enable(pipe, expert, switch="step", switch_step=boundary)
    assert torch.equal(frames(pipe, tiny_call_kwargs(STEPS)), plain)
    srd.enable(pipe, expert, switch="step", switch_step=boundary - 2)
    expected = swap_oracle(
        tiny_wan22_pipeline(),
        tiny_wan22_pipeline().transformer_2,
        boundary - 2,
        tiny_call_kwargs(STEPS),
        ("transformer",),
    )
    assert torch.equal(frames(pipe, tiny_call_kwargs(STEPS)), expected)
