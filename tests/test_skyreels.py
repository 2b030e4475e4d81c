"""SkyReels-V2 (Wan2.1 architecture, its own transformer class) against the host's own swap."""

from __future__ import annotations

import copy

import pytest
import torch

import srd_plugin as srd
from srd_plugin.errors import IncompatibleRendererError, UnsupportedPipelineError
from srd_plugin.manager import supported_pipelines
from srd_plugin.testing import RENDERER_SIZE, swap_oracle, tiny_call_kwargs, tiny_wan_renderer
from srd_plugin.testing.wan_family import (
    tiny_i2v_call_kwargs,
    tiny_skyreels_df_pipeline,
    tiny_skyreels_i2v_pipeline,
    tiny_skyreels_i2v_transformer,
    tiny_skyreels_pipeline,
    tiny_skyreels_transformer,
)

STEPS = 8
HOSTS = {
    "t2v": (tiny_skyreels_pipeline, lambda: tiny_skyreels_transformer(RENDERER_SIZE, seed=1), tiny_call_kwargs),
    "i2v": (
        tiny_skyreels_i2v_pipeline,
        lambda: tiny_skyreels_i2v_transformer(RENDERER_SIZE, seed=1),
        tiny_i2v_call_kwargs,
    ),
}


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize("k", [0, 3, 6])
def test_step_switch_equals_the_callback_oracle(host, k):
    build, make_renderer, call = HOSTS[host]
    pipe, renderer = build(), make_renderer()
    expected = swap_oracle(pipe, renderer, k, call(STEPS))
    srd.enable(pipe, renderer, switch="step", switch_step=k)
    assert torch.equal(pipe(**call(STEPS)).frames, expected)
    assert srd.last_trace(pipe).roles == ["sketch"] * k + ["render"] * (STEPS - k)


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_renderer_carrying_the_sketchers_weights_and_adaptive(host):
    build, make_renderer, call = HOSTS[host]
    pipe = build()
    plain = pipe(**call(STEPS)).frames
    srd.enable(pipe, copy.deepcopy(pipe.transformer), switch="step", switch_step=3)
    assert torch.equal(pipe(**call(STEPS)).frames, plain)
    srd.enable(pipe, make_renderer(), switch="adaptive", min_sketch_steps=2, max_sketch_steps=5)
    pipe(**call(STEPS))
    trace = srd.last_trace(pipe)
    assert trace.completed and 2 <= trace.switch_step <= 5 and trace.distances[1] is not None


def test_incompatible_renderers_refused_naming_every_mismatch():
    with pytest.raises(IncompatibleRendererError, match="SkyReelsV2Transformer3DModel"):
        srd.enable(tiny_skyreels_pipeline(), tiny_wan_renderer())
    with pytest.raises(IncompatibleRendererError) as error:
        srd.enable(tiny_skyreels_i2v_pipeline(), tiny_skyreels_transformer(RENDERER_SIZE, inject_sample_info=True))
    message = str(error.value)
    for name in ("in_channels", "image_dim", "added_kv_proj_dim", "inject_sample_info"):
        assert name in message


def test_diffusion_forcing_refused_with_the_reason():
    pipe = tiny_skyreels_df_pipeline()
    with pytest.raises(UnsupportedPipelineError, match="deep-copies the scheduler per latent frame"):
        srd.enable(pipe, tiny_skyreels_transformer(RENDERER_SIZE, seed=1))
    assert not srd.is_enabled(pipe)


def test_supported_pipelines_name_skyreels_but_not_diffusion_forcing():
    names = supported_pipelines()
    assert {"SkyReelsV2Pipeline", "SkyReelsV2ImageToVideoPipeline"} <= set(names)
    assert not any("DiffusionForcing" in name for name in names)


def test_alignment_fields_refused_as_for_wan():
    with pytest.raises(ValueError, match="renderer_scaling_factor"):
        srd.enable(tiny_skyreels_pipeline(), tiny_skyreels_transformer(RENDERER_SIZE), renderer_scaling_factor=1.0)
