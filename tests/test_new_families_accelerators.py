"""Accelerators with the LTX-Video, Cosmos Predict2 and Kandinsky 5 pipelines.

TeaCache serves LTX-Video (the official modulated input of the first block; the TeaCache4LTX-Video
coefficients for the 2B architecture, the identity polynomial with a warning otherwise). Cosmos and
Kandinsky call cond and uncond without cache contexts, so TeaCache refuses them. SageAttention
reproduces attention processors of Wan and CogVideoX only: refused for all three. diffusers' own
caches are stateful hooks keyed by the cache context and work on any CacheMixin model: on a renderer
they give what a plain pipeline around that cached renderer gives.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FirstBlockCacheConfig
from teacache_reference import reference_decisions

import srd_plugin as srd
from srd_plugin import TeaCacheConfig
from srd_plugin.hooks.teacache import (
    IDENTITY,
    apply_teacache,
    recognise,
    remove_teacache,
    resolve_teacache,
    srd_teacache_stats,
    teacache_stats,
)
from srd_plugin.testing.cosmos import tiny_cosmos_call_kwargs, tiny_cosmos_pipeline, tiny_cosmos_renderer
from srd_plugin.testing.kandinsky5 import (
    tiny_kandinsky5_call_kwargs,
    tiny_kandinsky5_pipeline,
    tiny_kandinsky5_renderer,
)
from srd_plugin.testing.ltx import ltx_transformer_config, tiny_ltx_call_kwargs, tiny_ltx_pipeline, tiny_ltx_renderer

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


@pytest.mark.parametrize("family", ["cosmos", "kandinsky5"])
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


# -- TeaCache on LTX-Video -----------------------------------------------------------------------
def test_the_ltx_2b_architecture_gets_the_published_coefficients_and_no_default_threshold():
    from diffusers import LTXVideoTransformer3DModel

    with torch.device("meta"):
        real_2b = LTXVideoTransformer3DModel(
            **ltx_transformer_config(num_layers=28, heads=32, head_dim=64, in_channels=128, out_channels=128)
        )
        real_13b = LTXVideoTransformer3DModel(
            **ltx_transformer_config(num_layers=48, heads=32, head_dim=128, in_channels=128, out_channels=128)
        )
    assert recognise(real_2b).name == "LTX-Video-2B"
    assert recognise(real_2b).coefficients[0] == pytest.approx(21.4700694)
    assert recognise(real_13b) is None
    with pytest.raises(ValueError, match="they give none for LTX-Video-2B"):
        resolve_teacache(real_2b)
    assert resolve_teacache(real_2b, TeaCacheConfig(threshold=0.05)).coefficients == recognise(real_2b).coefficients


def _first_block_inputs(model):
    """The first block's (hidden_states, temb) of every call: the oracle computes the modulated input from them."""
    seen = []
    handle = model.transformer_blocks[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["hidden_states"].clone(), kwargs["temb"].clone())),
        with_kwargs=True,
    )
    return seen, handle


def _modulated(block, hidden, temb):
    """diffusers' LTXVideoTransformerBlock.forward up to its self-attention input, written out."""
    batch = hidden.size(0)
    ada = block.scale_shift_table[None, None] + temb.reshape(batch, temb.size(1), 6, -1)
    shift_msa, scale_msa, *_ = ada.unbind(dim=2)
    return block.norm1(hidden) * (1 + scale_msa) + shift_msa


def test_ltx_teacache_decides_on_the_first_blocks_modulated_input_and_threshold_zero_is_exact():
    pipe = tiny_ltx_pipeline("t2v")
    plain = pipe(**tiny_ltx_call_kwargs(), return_dict=False)[0]
    with pytest.warns(UserWarning, match="identity polynomial"):
        apply_teacache(pipe.transformer, TeaCacheConfig(threshold=0.0))
    assert torch.equal(pipe(**tiny_ltx_call_kwargs(), return_dict=False)[0], plain)
    remove_teacache(pipe.transformer)
    threshold = 0.3
    seen, handle = _first_block_inputs(pipe.transformer)
    with pytest.warns(UserWarning, match="identity polynomial"):
        apply_teacache(pipe.transformer, TeaCacheConfig(threshold=threshold))
    cached = pipe(**tiny_ltx_call_kwargs(), return_dict=False)[0]
    handle.remove()
    decisions = [computed for _, _, computed in teacache_stats(pipe.transformer).decisions]
    block = pipe.transformer.transformer_blocks[0]
    with torch.no_grad():
        modulated = [_modulated(block, hidden, temb) for hidden, temb in seen]
    # the first block sees inputs only on computed calls; a skipped call's input is the stack input, recorded too
    assert len(modulated) == len(decisions) == 6
    assert decisions == reference_decisions(modulated, IDENTITY, threshold)
    assert not all(decisions) and not torch.equal(cached, plain)
    remove_teacache(pipe.transformer)
    assert torch.equal(pipe(**tiny_ltx_call_kwargs(), return_dict=False)[0], plain)


def test_srd_with_teacache_on_both_ltx_models():
    pipe, renderer = tiny_ltx_pipeline("t2v"), tiny_ltx_renderer()
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    alone = pipe(**tiny_ltx_call_kwargs(), return_dict=False)[0]
    with pytest.warns(UserWarning, match="identity polynomial"):
        srd.enable(pipe, renderer, switch="step", switch_step=3, teacache=TeaCacheConfig(threshold=0.0))
    assert torch.equal(pipe(**tiny_ltx_call_kwargs(), return_dict=False)[0], alone)
    with pytest.warns(UserWarning, match="identity polynomial"):
        srd.enable(pipe, renderer, switch="step", switch_step=3, teacache=TeaCacheConfig(threshold=0.5))
    pipe(**tiny_ltx_call_kwargs(), return_dict=False)
    stats = srd_teacache_stats(pipe)
    assert stats["sketch"].computed_calls + stats["sketch"].skipped_calls == 3
    assert stats["render"].computed_calls + stats["render"].skipped_calls == 3
    assert stats["sketch"].skipped_calls + stats["render"].skipped_calls > 0
    srd.disable(pipe)


# -- context parallelism: checked before any change (the split itself needs several processes) -------
@pytest.mark.parametrize("family", FAMILIES)
def test_context_parallelism_is_refused_where_diffusers_has_no_plan(family):
    from diffusers import ContextParallelConfig

    build, renderer, _, model = FAMILIES[family]
    pipe = build()
    with pytest.raises(ValueError) as caught:
        srd.enable(
            pipe, renderer(), switch="step", switch_step=2, parallel_config=ContextParallelConfig(ulysses_degree=2)
        )
    message = str(caught.value)
    no_plan = f"the sketcher ({model}) has no context-parallel plan (`_cp_plan`)"
    # LTX has a plan: only the missing process group stops this single-process call. (With two gloo
    # ranks, diffusers 0.42's own LTX pipeline fails under Ulysses: its attention-mask path does not
    # follow the head split, "size of tensor a (2) must match ... (4)"; with SRD it fails the same way.)
    if family == "ltx":
        assert no_plan not in message and "context parallelism" in message
    else:
        assert no_plan in message and f"the renderer ({model}) has no context-parallel plan" in message
    assert not srd.is_enabled(pipe)
