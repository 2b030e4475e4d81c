"""Conditioned Wan and CogVideoX pipelines: VACE editing, image-to-video; each against the host's own swap."""

from __future__ import annotations

import copy

import pytest
import torch

import srd_plugin as srd
from srd_plugin.adapters.wan import vace_scale_for
from srd_plugin.errors import IncompatibleRendererError
from srd_plugin.testing import RENDERER_SIZE, swap_oracle, tiny_cogvideox_renderer, tiny_wan_renderer
from srd_plugin.testing.wan_family import (
    tiny_cogvideox_i2v_call_kwargs,
    tiny_cogvideox_i2v_pipeline,
    tiny_cogvideox_i2v_transformer,
    tiny_i2v_call_kwargs,
    tiny_vace_call_kwargs,
    tiny_vace_pipeline,
    tiny_vace_renderer,
    tiny_vace_transformer,
    tiny_wan_i2v_pipeline,
    tiny_wan_i2v_transformer,
)

STEPS = 8


def frames(pipe, call):
    return pipe(**call).frames


# -- VACE -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 3, 6])
def test_vace_step_switch_equals_the_callback_oracle(k):
    """A renderer with as many VACE layers as the sketcher: the host's own scale fits it unchanged."""
    pipe, renderer = tiny_vace_pipeline(), tiny_vace_renderer(vace_layers=(0, 1))
    call = tiny_vace_call_kwargs(STEPS, conditioning_scale=[0.7, 1.3])
    expected = swap_oracle(pipe, renderer, k, call)
    srd.enable(pipe, renderer, switch="step", switch_step=k)
    assert torch.equal(frames(pipe, tiny_vace_call_kwargs(STEPS, conditioning_scale=[0.7, 1.3])), expected)
    assert srd.last_trace(pipe).roles == ["sketch"] * k + ["render"] * (STEPS - k)


def test_vace_control_reaches_the_renderer():
    """The control video changes the rendered steps: a renderer-only run differs between two control videos."""
    pipe = tiny_vace_pipeline()
    srd.enable(pipe, tiny_vace_renderer(), switch="step", switch_step=0)
    first = frames(pipe, tiny_vace_call_kwargs(STEPS))
    other = frames(pipe, tiny_vace_call_kwargs(STEPS, video=tiny_vace_call_kwargs(seed=5)["video"]))
    assert not torch.equal(first, other)


def test_vace_renderer_with_fewer_vace_layers_gets_a_scale_that_fits():
    """Oracle: the renderer's own default scale (ones for each of its VACE layers) = a uniform host scale of 1."""
    pipe, renderer = tiny_vace_pipeline(), tiny_vace_renderer(vace_layers=(0,))  # 1 VACE layer, sketcher 2
    original_forward = renderer.forward

    def own_default_scale(*args, control_hidden_states_scale=None, **kwargs):
        return original_forward(*args, **kwargs)

    renderer.forward = own_default_scale
    expected = swap_oracle(pipe, renderer, 3, tiny_vace_call_kwargs(STEPS))
    del renderer.forward
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    assert torch.equal(frames(pipe, tiny_vace_call_kwargs(STEPS)), expected)


def test_vace_scale_maps_by_relative_depth():
    sketcher = tiny_vace_transformer(vace_layers=(0, 1, 2, 3))  # 4 layers: depths 0, 0.25, 0.5, 0.75
    scale = torch.tensor([0.25, 0.5, 2.0, 4.0])
    same_count = tiny_vace_transformer(vace_layers=(0, 1, 2, 3), seed=3)
    assert torch.equal(vace_scale_for(sketcher, same_count, scale), scale)  # same count: unchanged
    half = tiny_vace_renderer(vace_layers=(0, 1))  # 2 layers: depths 0, 0.5 -> sketcher layers 0 and 2
    assert torch.equal(vace_scale_for(sketcher, half, scale), torch.tensor([0.25, 2.0]))
    assert torch.equal(vace_scale_for(sketcher, tiny_vace_renderer(vace_layers=(0,)), scale), torch.tensor([0.25]))


def test_vace_renderer_carrying_the_sketchers_weights_gives_the_plain_output():
    pipe = tiny_vace_pipeline()
    plain = frames(pipe, tiny_vace_call_kwargs(STEPS))
    srd.enable(pipe, copy.deepcopy(pipe.transformer), switch="step", switch_step=2)
    assert torch.equal(frames(pipe, tiny_vace_call_kwargs(STEPS)), plain)


def test_vace_adaptive_runs():
    pipe = tiny_vace_pipeline()
    srd.enable(pipe, tiny_vace_renderer(), switch="adaptive", min_sketch_steps=2, max_sketch_steps=5)
    frames(pipe, tiny_vace_call_kwargs(STEPS))
    trace = srd.last_trace(pipe)
    assert trace.completed and 2 <= trace.switch_step <= 5 and trace.distances[1] is not None


def test_vace_refuses_incompatible_renderers_naming_every_mismatch():
    pipe = tiny_vace_pipeline()
    with pytest.raises(IncompatibleRendererError, match="WanVACETransformer3DModel"):
        srd.enable(pipe, tiny_wan_renderer())  # a plain Wan model cannot take the control video
    wrong = tiny_vace_renderer(vace_in_channels=16, text_dim=64)
    with pytest.raises(IncompatibleRendererError) as error:
        srd.enable(pipe, wrong)
    assert "vace_in_channels" in str(error.value) and "text_dim" in str(error.value)


# -- Wan image-to-video -------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 3, 6])
def test_wan_i2v_step_switch_equals_the_callback_oracle(k):
    pipe, renderer = tiny_wan_i2v_pipeline(), tiny_wan_i2v_transformer(RENDERER_SIZE, seed=1)
    expected = swap_oracle(pipe, renderer, k, tiny_i2v_call_kwargs(STEPS))
    srd.enable(pipe, renderer, switch="step", switch_step=k)
    assert torch.equal(frames(pipe, tiny_i2v_call_kwargs(STEPS)), expected)


def test_wan_i2v_renderer_carrying_the_sketchers_weights_and_adaptive():
    pipe = tiny_wan_i2v_pipeline()
    plain = frames(pipe, tiny_i2v_call_kwargs(STEPS))
    srd.enable(pipe, copy.deepcopy(pipe.transformer), switch="step", switch_step=3)
    assert torch.equal(frames(pipe, tiny_i2v_call_kwargs(STEPS)), plain)
    renderer = tiny_wan_i2v_transformer(RENDERER_SIZE, seed=1)
    srd.enable(pipe, renderer, switch="adaptive", min_sketch_steps=2, max_sketch_steps=5)
    frames(pipe, tiny_i2v_call_kwargs(STEPS))
    assert srd.last_trace(pipe).completed and srd.last_trace(pipe).switch_step <= 5


def test_wan_i2v_refuses_incompatible_renderers_naming_every_mismatch():
    pipe = tiny_wan_i2v_pipeline(transformer=tiny_wan_i2v_transformer(image_dim=24, added_kv_proj_dim=64))
    with pytest.raises(IncompatibleRendererError) as error:
        srd.enable(pipe, tiny_wan_renderer())  # a text-to-video renderer
    message = str(error.value)
    assert "in_channels" in message and "image_dim" in message and "added_kv_proj_dim" in message


# -- CogVideoX image-to-video ---------------------------------------------------------------------------------
def test_cogvideox_i2v_refuses_the_2b_with_the_reason():
    pipe = tiny_cogvideox_i2v_pipeline()
    with pytest.raises(IncompatibleRendererError, match="No CogVideoX-2B image-to-video model is published"):
        srd.enable(pipe, tiny_cogvideox_renderer())


def test_cogvideox_i2v_refuses_alignment():
    pipe = tiny_cogvideox_i2v_pipeline()
    renderer = tiny_cogvideox_i2v_transformer(seed=1, num_layers=1)
    with pytest.raises(ValueError, match="alignment is not implemented for image-to-video"):
        srd.enable(pipe, renderer, renderer_scaling_factor=1.15258426)


@pytest.mark.parametrize("k", [0, 3, 6])
def test_cogvideox_i2v_compatible_renderer_equals_the_callback_oracle(k):
    pipe = tiny_cogvideox_i2v_pipeline()
    renderer = tiny_cogvideox_i2v_transformer(seed=1, num_layers=1, num_attention_heads=2)
    expected = swap_oracle(pipe, renderer, k, tiny_cogvideox_i2v_call_kwargs(STEPS))
    srd.enable(pipe, renderer, switch="step", switch_step=k)
    assert torch.equal(frames(pipe, tiny_cogvideox_i2v_call_kwargs(STEPS)), expected)
    srd.enable(pipe, renderer, switch="adaptive", min_sketch_steps=2, max_sketch_steps=4)
    frames(pipe, tiny_cogvideox_i2v_call_kwargs(STEPS))
    assert srd.last_trace(pipe).completed


def test_cogvideox_i2v_renderer_carrying_the_sketchers_weights_gives_the_plain_output():
    pipe = tiny_cogvideox_i2v_pipeline()
    plain = frames(pipe, tiny_cogvideox_i2v_call_kwargs(STEPS))
    srd.enable(pipe, copy.deepcopy(pipe.transformer), switch="step", switch_step=3)
    assert torch.equal(frames(pipe, tiny_cogvideox_i2v_call_kwargs(STEPS)), plain)


def test_cogvideox_v2v_with_the_2b_like_renderer_is_aligned_over_the_steps_run():
    """The real pair's case: 2B-like renderer (no rotary, VAE scaling and noise schedule of the 2B)."""
    from srd_plugin.testing import cogvideox_2b_alignment
    from srd_plugin.testing.wan_family import tiny_cogvideox_v2v_call_kwargs, tiny_cogvideox_v2v_pipeline

    pipe = tiny_cogvideox_v2v_pipeline()
    srd.enable(pipe, tiny_cogvideox_renderer(), switch="step", switch_step=2, **cogvideox_2b_alignment())
    output = frames(pipe, tiny_cogvideox_v2v_call_kwargs(10, 0.6))
    trace = srd.last_trace(pipe)
    assert trace.completed and trace.roles == ["sketch"] * 2 + ["render"] * 4
    assert any("cogvideox alignment" in event for event in trace.events)
    assert bool(torch.isfinite(output).all())


@pytest.mark.parametrize("k", [0, 4])
def test_wan21_i2v_with_a_clip_image_embedding_equals_the_callback_oracle(k):
    from srd_plugin.testing.wan_family import tiny_wan_i2v_clip_transformer

    pipe, renderer = tiny_wan_i2v_pipeline(clip=True), tiny_wan_i2v_clip_transformer(RENDERER_SIZE, seed=1)
    expected = swap_oracle(pipe, renderer, k, tiny_i2v_call_kwargs(STEPS))
    srd.enable(pipe, renderer, switch="step", switch_step=k)
    assert torch.equal(frames(pipe, tiny_i2v_call_kwargs(STEPS)), expected)
