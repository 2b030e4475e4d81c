"""Accelerators with the LTX-Video, Cosmos Predict2 and Kandinsky 5 pipelines.

TeaCache and SageAttention reproduce per-family code (the modulated input, the attention
processor) that exists for Wan and CogVideoX only: for these families `enable` refuses them
before any work, naming the model. diffusers' own caches are stateful hooks keyed by the
cache context and work on any CacheMixin model: on a renderer they give what a plain pipeline
around that cached renderer gives.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FirstBlockCacheConfig

import srd_plugin as srd
from srd_plugin import TeaCacheConfig
from srd_plugin.testing.cosmos import tiny_cosmos_call_kwargs, tiny_cosmos_pipeline, tiny_cosmos_renderer
from srd_plugin.testing.kandinsky5 import (
    tiny_kandinsky5_call_kwargs,
    tiny_kandinsky5_pipeline,
    tiny_kandinsky5_renderer,
)
from srd_plugin.testing.ltx import tiny_ltx_call_kwargs, tiny_ltx_pipeline, tiny_ltx_renderer

FAMILIES = {
    "ltx": (tiny_ltx_pipeline, tiny_ltx_renderer, tiny_ltx_call_kwargs, "LTXVideoTransformer3DModel"),
    "cosmos": (tiny_cosmos_pipeline, tiny_cosmos_renderer, tiny_cosmos_call_kwargs, "CosmosTransformer3DModel"),
    "kandinsky5": (
        tiny_kandinsky5_pipeline,
        tiny_kandinsky5_renderer,
        tiny_kandinsky5_call_kwargs,
        "Kandinsky5Transformer3DModel",
    ),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_teacache_is_refused_naming_the_model(family):
    build, renderer, _, model = FAMILIES[family]
    pipe = build()
    with pytest.raises(ValueError, match=rf"teacache on the sketcher: TeaCache supports .* not {model}"):
        srd.enable(pipe, renderer(), switch="step", switch_step=2, teacache=TeaCacheConfig(threshold=0.1))
    assert not srd.is_enabled(pipe)


@pytest.mark.parametrize("family", FAMILIES)
def test_sage_attention_is_refused_naming_the_model(family):
    build, renderer, _, model = FAMILIES[family]
    pipe = build()
    with pytest.raises(ValueError, match=rf"no attention processor of the sketcher \({model}\) can be routed"):
        srd.enable(pipe, renderer(), switch="step", switch_step=2, sage_attention=True)
    assert not srd.is_enabled(pipe)


def _block_runs(model: torch.nn.Module) -> dict[str, int]:
    counter = {"runs": 0}
    blocks = getattr(model, "transformer_blocks", None) or model.visual_transformer_blocks
    for block in blocks:
        block.register_forward_pre_hook(lambda *_: counter.__setitem__("runs", counter["runs"] + 1))
    return counter


# Kandinsky 5: diffusers 0.42's FirstBlockCache raises in the plain pipeline already (its block registry
# asks for a `hidden_states` parameter the Kandinsky blocks do not have); Cosmos has no CacheMixin.
@pytest.mark.parametrize("family", ["ltx"])
def test_first_block_cache_on_the_renderer_equals_the_plain_pipeline_around_it(family):
    """SRD rendering every step with a FirstBlockCache'd renderer gives what the host gives with that
    renderer as its transformer, also on a second call (SRD resets the renderer's cache per call)."""
    build, renderer, call, _ = FAMILIES[family]
    cached = renderer(**({"num_layers": 2} if family == "ltx" else {"blocks": 2}))
    cached.enable_cache(FirstBlockCacheConfig(threshold=5.0))
    alone = build(transformer=cached)
    runs = _block_runs(cached)
    expected = alone(**call(), return_dict=False)[0]
    assert 0 < runs["runs"] < 2 * 2 * 6  # blocks were skipped (6 steps, two blocks, CFG)
    pipe = build()
    srd.enable(pipe, cached, switch="step", switch_step=0)
    assert torch.equal(pipe(**call(), return_dict=False)[0], expected)
    assert torch.equal(pipe(**call(), return_dict=False)[0], expected)
    srd.disable(pipe)
