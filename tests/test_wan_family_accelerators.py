"""The accelerators on the new Wan-family pipelines: what runs, what is refused with the reason.

Checked here (CPU, tiny models): TeaCache, the SageAttention processors (SDPA fallback without
the package), diffusers' FirstBlockCache, offloading the sketcher after the switch. Not checked:
torch.compile, context parallelism (diffusers has a `_cp_plan` for WanTransformer3DModel only).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import srd_plugin as srd
from srd_plugin.hooks.teacache import TeaCacheConfig
from srd_plugin.testing import RENDERER_SIZE, tiny_call_kwargs, tiny_wan_renderer
from srd_plugin.testing.wan_family import (
    tiny_i2v_call_kwargs,
    tiny_skyreels_pipeline,
    tiny_skyreels_transformer,
    tiny_vace_call_kwargs,
    tiny_vace_pipeline,
    tiny_vace_renderer,
    tiny_wan22_pipeline,
    tiny_wan_i2v_pipeline,
    tiny_wan_i2v_transformer,
)

HOSTS = {
    "wan22": (tiny_wan22_pipeline, tiny_wan_renderer, lambda: tiny_call_kwargs(6)),
    "vace": (tiny_vace_pipeline, tiny_vace_renderer, lambda: tiny_vace_call_kwargs(6)),
    "wan_i2v": (
        tiny_wan_i2v_pipeline,
        lambda: tiny_wan_i2v_transformer(RENDERER_SIZE, seed=1),
        lambda: tiny_i2v_call_kwargs(6),
    ),
    "skyreels": (
        tiny_skyreels_pipeline,
        lambda: tiny_skyreels_transformer(RENDERER_SIZE, seed=1),
        lambda: tiny_call_kwargs(6),
    ),
}


def run(host, **config):
    build, renderer, call = HOSTS[host]
    pipe = build()
    srd.enable(pipe, renderer(), switch="step", switch_step=3, **config)
    return pipe(**call()).frames, srd.last_trace(pipe)


@pytest.mark.parametrize("host", ["wan22", "wan_i2v"])
def test_teacache_runs_with_the_identity_polynomial_warning(host):
    with pytest.warns(UserWarning, match="TeaCache: this WanTransformer3DModel"):
        _, trace = run(host, teacache=TeaCacheConfig(threshold=0.1))
    assert trace.completed and trace.roles == ["sketch"] * 3 + ["render"] * 3


@pytest.mark.parametrize("host", ["vace", "skyreels"])
def test_teacache_refused_with_the_reason_before_any_work(host):
    with pytest.raises(ValueError, match="TeaCache supports WanTransformer3DModel, CogVideoXTransformer3DModel and"):
        run(host, teacache=TeaCacheConfig(threshold=0.1))


@pytest.mark.parametrize("host", ["wan22", "vace", "wan_i2v"])
def test_sage_processors_fall_back_to_sdpa_bit_for_bit(host):
    plain, _ = run(host)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "SageAttention is not used ...: sageattention is not installed"
        routed, _ = run(host, sage_attention=True)
    assert torch.equal(routed, plain)


def test_sage_refused_on_skyreels_with_the_reason():
    with pytest.raises(ValueError, match="no attention processor of the sketcher .SkyReelsV2Transformer3DModel"):
        run("skyreels", sage_attention=True)


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_offloading_the_sketcher_after_the_switch_changes_nothing(host):
    plain, _ = run(host)
    offloaded, trace = run(host, offload_sketcher="after_switch")
    assert torch.equal(offloaded, plain) and trace.completed


@pytest.mark.parametrize("host", ["wan22", "vace", "wan_i2v"])
def test_diffusers_first_block_cache_on_the_sketcher_runs(host):
    from diffusers import FirstBlockCacheConfig

    build, renderer, call = HOSTS[host]
    pipe = build()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    srd.enable(pipe, renderer(), switch="step", switch_step=3)
    pipe(**call())
    assert srd.last_trace(pipe).completed
