"""CogVideoX under SRD with the accelerators: TeaCache, SageAttention and a diffusers cache on both roles.

The pair is the tiny 5B-like sketcher (rotary, VAE scaling 0.7, snr_shift_scale 1.0) and the
2B-like renderer (no rotary, fewer layers and heads, scaling 1.15258426, snr_shift_scale 3.0),
with the alignment on: the renderer sees a rescaled latent and a non-integer timestep.
Oracles: SRD without the accelerator (threshold 0, an SDPA stand-in kernel), the official
TeaCache rule written out on the recorded timestep embeddings, a never-enabled pipeline after
`disable`, and a plain pipeline around the renderer for the diffusers cache.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel, FirstBlockCacheConfig
from teacache_reference import reference_decisions

import srd_plugin as srd
from srd_plugin import TeaCacheConfig
from srd_plugin.hooks import sageattention as sage
from srd_plugin.hooks.sageattention import AttentionKernel, sage_attention_stats
from srd_plugin.hooks.teacache import (
    KNOWN_MODELS,
    MODULATION_HOOK,
    srd_teacache_stats,
)
from srd_plugin.testing import (
    COGVIDEOX_2B_LIKE,
    cogvideox_2b_alignment,
    tiny_cogvideox_call_kwargs,
    tiny_cogvideox_pipeline,
    tiny_cogvideox_renderer,
    tiny_cogvideox_transformer,
)

STEPS = 8
SWITCH = 3
IDENTITY = (1.0, 0.0)
ALIGNED = dict(switch="step", switch_step=SWITCH, **cogvideox_2b_alignment())


class Stop(Exception):
    pass


def generate(pipe, stop_at=None, seed=0):
    def callback(_pipe, step, _t, kwargs):
        if step == stop_at:
            raise Stop
        return kwargs

    return pipe(**tiny_cogvideox_call_kwargs(STEPS, seed=seed), callback_on_step_end=callback).frames


@pytest.fixture(scope="module")
def cog_pipe():
    """5B-like pipeline, shared by the module; every test disables SRD at the end."""
    return tiny_cogvideox_pipeline()


@pytest.fixture
def two_block_renderer():
    """2B-like with two layers: diffusers' FirstBlockCache needs a first and a last block."""
    return tiny_cogvideox_transformer(COGVIDEOX_2B_LIKE, seed=1, num_layers=2)


@pytest.fixture
def renderer_2b():
    """A fresh 2B-like renderer per test (cheap), so a cache a test puts on it does not leak."""
    return tiny_cogvideox_renderer()


@pytest.fixture(autouse=True)
def _disable_after(request):
    yield
    if "cog_pipe" in request.fixturenames:
        srd.disable(request.getfixturevalue("cog_pipe"))


def teacache_hook(model):
    return model.time_embedding._diffusers_hook.get_hook(MODULATION_HOOK)


def is_clean(model):
    """No hook left on the modules TeaCache and the router touch, and every processor the model's own.

    The root may keep an empty hook registry: CogVideoXPipeline's own `cache_context` creates one.
    """
    modules = [model.time_embedding, *model.transformer_blocks]
    no_hooks = all(not hasattr(m, "_diffusers_hook") and "forward" not in m.__dict__ for m in modules)
    root_registry = getattr(model, "_diffusers_hook", None)
    no_hooks = no_hooks and "forward" not in model.__dict__ and (root_registry is None or not root_registry.hooks)
    return no_hooks and not sage.has_sage_attention(model)


def record_embeddings(model):
    """The timestep embedding TeaCache watches, and the timestep the model was called with, per call."""
    seen = {"emb": [], "timestep": []}
    handles = [
        model.time_embedding.register_forward_hook(lambda _m, _a, out: seen["emb"].append(out.detach().clone())),
        model.register_forward_pre_hook(
            lambda _m, _args, kwargs: seen["timestep"].append(kwargs["timestep"]),  # both are called by keyword
            with_kwargs=True,
        ),
    ]
    return seen, handles


def computed(stats):
    return [flag for *_, flag in stats.decisions]


# -- TeaCache ----------------------------------------------------------------------------------
def test_teacache_threshold_zero_equals_srd_alone(cog_pipe, renderer_2b):
    srd.enable(cog_pipe, renderer_2b, **ALIGNED)
    plain_srd = generate(cog_pipe)
    assert any("cogvideox alignment" in event for event in srd.last_trace(cog_pipe).events)
    srd.enable(cog_pipe, renderer_2b, teacache=TeaCacheConfig(threshold=0.0, coefficients=IDENTITY), **ALIGNED)
    assert torch.equal(generate(cog_pipe), plain_srd)
    stats = srd_teacache_stats(cog_pipe)
    assert [len(stats["sketch"].decisions), len(stats["render"].decisions)] == [SWITCH, STEPS - SWITCH]
    assert all(computed(stats["sketch"])) and all(computed(stats["render"]))


def test_teacache_decides_per_role_on_the_aligned_float_timestep(cog_pipe, renderer_2b):
    """Each role follows the official rule on its own embeddings, with its own threshold and polynomial;
    the renderer's embeddings come from the non-integer timesteps of matched SNR."""
    sketch_config = TeaCacheConfig(threshold=1.0, coefficients=IDENTITY)
    render_config = TeaCacheConfig(threshold=1.5, coefficients=(2.0, 0.0))
    srd.enable(cog_pipe, renderer_2b, **ALIGNED)
    plain_srd = generate(cog_pipe)
    srd.enable(cog_pipe, renderer_2b, teacache=sketch_config, teacache_renderer=render_config, **ALIGNED)
    sketch_seen, sketch_handles = record_embeddings(cog_pipe.transformer)
    render_seen, render_handles = record_embeddings(renderer_2b)
    cached = generate(cog_pipe)
    for handle in (*sketch_handles, *render_handles):
        handle.remove()
    stats = srd_teacache_stats(cog_pipe)
    sketch, render = stats["sketch"], stats["render"]

    timesteps = torch.cat(render_seen["timestep"])
    assert timesteps.is_floating_point() and not torch.equal(timesteps, timesteps.round())
    assert {name for name, *_ in sketch.decisions + render.decisions} == {"cond_uncond"}
    assert computed(sketch) == reference_decisions(sketch_seen["emb"], IDENTITY, 1.0)
    assert computed(render) == reference_decisions(render_seen["emb"], (2.0, 0.0), 1.5)
    assert computed(render)[0]  # fresh at the switch
    assert sketch.skipped_calls > 0 and render.skipped_calls > 0  # the thresholds do skip here
    assert (sketch.num_blocks, render.num_blocks) == (2, 1)

    sketch_hook, render_hook = teacache_hook(cog_pipe.transformer), teacache_hook(renderer_2b)
    assert sketch_hook.state_manager is not render_hook.state_manager
    assert (sketch_hook.settings.threshold, sketch_hook.settings.coefficients) == (1.0, IDENTITY)
    assert (render_hook.settings.threshold, render_hook.settings.coefficients) == (1.5, (2.0, 0.0))
    assert not torch.equal(cached, plain_srd) and torch.isfinite(cached).all()


def test_teacache_starts_fresh_every_call_and_at_the_switch(cog_pipe, renderer_2b):
    config = TeaCacheConfig(threshold=100.0, coefficients=IDENTITY)  # skips everything it may skip
    srd.enable(cog_pipe, renderer_2b, teacache=config, **ALIGNED)
    first, first_stats = generate(cog_pipe), srd_teacache_stats(cog_pipe)
    assert computed(first_stats["sketch"]) == [True] + [False] * (SWITCH - 1)
    assert computed(first_stats["render"]) == [True] + [False] * (STEPS - SWITCH - 1)
    with pytest.raises(Stop):
        generate(cog_pipe, stop_at=SWITCH + 1)  # interrupted in the render phase, caches full
    assert torch.equal(generate(cog_pipe), first)
    assert srd_teacache_stats(cog_pipe) == first_stats


def test_unknown_tiny_architectures_get_the_identity_with_one_warning_per_model(cog_pipe, renderer_2b):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        srd.enable(cog_pipe, renderer_2b, teacache=TeaCacheConfig(threshold=0.3), **ALIGNED)
        generate(cog_pipe)
        generate(cog_pipe)
    messages = [str(w.message) for w in caught if "identity polynomial" in str(w.message)]
    assert len(messages) == 2
    assert any("2 layers, 4 heads x 16" in m for m in messages) and any("1 layers, 2 heads x 16" in m for m in messages)
    for model in (cog_pipe.transformer, renderer_2b):
        settings = teacache_hook(model).settings
        assert (settings.model, settings.coefficients, settings.threshold) == (None, IDENTITY, 0.3)


def test_real_5b_and_2b_configs_each_get_their_published_settings():
    """Meta-device models with the real configs: SRD applies the 5B's and the 2B's own coefficients."""
    with torch.device("meta"):
        channels = dict(in_channels=16, out_channels=16)
        sketcher = CogVideoXTransformer3DModel(num_layers=42, num_attention_heads=48, **channels)
        renderer = CogVideoXTransformer3DModel(
            num_layers=30, num_attention_heads=30, use_rotary_positional_embeddings=False, **channels
        )
    pipe = tiny_cogvideox_pipeline(transformer=sketcher)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recognised: no identity warning
        srd.enable(pipe, renderer, teacache=TeaCacheConfig(), **cogvideox_2b_alignment())
    try:
        for model, name in ((sketcher, "CogVideoX-5B"), (renderer, "CogVideoX-2B")):
            settings = teacache_hook(model).settings
            known = KNOWN_MODELS[name]
            assert (settings.model, settings.coefficients, settings.threshold) == (name, known.coefficients, 0.1)
    finally:
        srd.disable(pipe)
    assert is_clean(sketcher) and is_clean(renderer)


# -- SageAttention ---------------------------------------------------------------------------
def sdpa_stand_in(device_types=("cpu",)):
    """Computes exactly SDPA; records the number of heads of each call (sketcher 4, renderer 2)."""
    heads = []

    def attend(query, key, value):
        heads.append(query.shape[1])
        return F.scaled_dot_product_attention(query, key, value)

    kernel = AttentionKernel("stand-in", attend, head_dims=(16,), device_types=device_types, dtypes=(torch.float32,))
    return kernel, heads


def processors(model):
    return {name: module.processor for name, module in model.named_modules() if hasattr(module, "processor")}


def test_sage_route_on_both_roles_equals_sdpa_and_comes_off(cog_pipe, renderer_2b, monkeypatch):
    kernel, heads = sdpa_stand_in()
    monkeypatch.setattr(sage, "sageattention_kernel", lambda: kernel)
    srd.enable(cog_pipe, renderer_2b, **ALIGNED)
    plain_srd = generate(cog_pipe)
    originals = (processors(cog_pipe.transformer), processors(renderer_2b))
    srd.enable(cog_pipe, renderer_2b, sage_attention=True, **ALIGNED)
    assert torch.equal(generate(cog_pipe), plain_srd)
    assert sage_attention_stats(cog_pipe.transformer) == {"sage": 2 * SWITCH}  # 2 layers, one batched CFG call
    assert sage_attention_stats(renderer_2b) == {"sage": 1 * (STEPS - SWITCH)}  # 1 layer, no rotary
    assert heads == [4] * (2 * SWITCH) + [2] * (STEPS - SWITCH)
    srd.disable(cog_pipe)
    for model, before in zip((cog_pipe.transformer, renderer_2b), originals):
        assert processors(model).keys() == before.keys()
        assert all(processors(model)[name] is processor for name, processor in before.items())
    assert is_clean(cog_pipe.transformer) and is_clean(renderer_2b)


def test_sage_falls_back_on_cpu_tensors_with_one_warning_per_model(cog_pipe, renderer_2b, monkeypatch):
    kernel, heads = sdpa_stand_in(device_types=("cuda",))
    monkeypatch.setattr(sage, "sageattention_kernel", lambda: kernel)
    srd.enable(cog_pipe, renderer_2b, **ALIGNED)
    plain_srd = generate(cog_pipe)
    srd.enable(cog_pipe, renderer_2b, sage_attention=True, **ALIGNED)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.equal(generate(cog_pipe), plain_srd)
    assert heads == []
    messages = [str(w.message) for w in caught if "SageAttention is not used" in str(w.message)]
    assert len(messages) == 2 and all("on cpu" in m for m in messages)
    assert sage_attention_stats(renderer_2b) == {"fallback": STEPS - SWITCH}


def test_sage_and_teacache_together_then_disable_restores_the_pipeline(cog_pipe, renderer_2b, monkeypatch):
    monkeypatch.setattr(sage, "sageattention_kernel", lambda: sdpa_stand_in()[0])
    never_enabled = generate(cog_pipe)
    teacache = TeaCacheConfig(threshold=1.0, coefficients=IDENTITY)
    srd.enable(cog_pipe, renderer_2b, teacache=teacache, **ALIGNED)
    teacache_only = generate(cog_pipe)
    srd.enable(cog_pipe, renderer_2b, teacache=teacache, sage_attention=True, **ALIGNED)
    assert torch.equal(generate(cog_pipe), teacache_only)  # the stand-in is SDPA: stacking changes nothing else
    sketch, render = srd_teacache_stats(cog_pipe)["sketch"], srd_teacache_stats(cog_pipe)["render"]
    assert render.skipped_calls > 0
    sage_calls = sage_attention_stats(cog_pipe.transformer)["sage"], sage_attention_stats(renderer_2b)["sage"]
    assert sage_calls == (2 * sketch.computed_calls, render.computed_calls)  # skipped calls run no attention
    assert [e for e in srd.last_trace(cog_pipe).events if not e.startswith("cogvideox")] == [  # the trace says so
        f"sage attention: sketcher {sage_calls[0]} of {sage_calls[0]} attention calls on stand-in; "
        f"renderer {sage_calls[1]} of {sage_calls[1]} attention calls on stand-in",
        f"teacache: sketcher (threshold 1) computed {sketch.computed_calls} of {SWITCH} calls, "
        f"{sketch.skipped_blocks} blocks skipped; renderer (threshold 1) computed {render.computed_calls} of "
        f"{STEPS - SWITCH} calls, {render.skipped_blocks} blocks skipped",
    ]
    srd.disable(cog_pipe)
    assert is_clean(cog_pipe.transformer) and is_clean(renderer_2b)
    assert torch.equal(generate(cog_pipe), never_enabled)


# -- a diffusers cache on the renderer --------------------------------------------------------
def count_block_runs(model):
    counter = {"runs": 0}
    for block in model.transformer_blocks:
        block.attn1.register_forward_pre_hook(lambda *_: counter.__setitem__("runs", counter["runs"] + 1))
    return counter


def test_first_block_cache_on_the_renderer_equals_the_renderer_pipeline(cog_pipe, two_block_renderer):
    """Same parametrization (no alignment needed): SRD that only renders gives what a plain
    pipeline around the cached renderer gives, call after call and after an interrupted call
    of another video (whose residuals a stale cache would reuse)."""
    two_block_renderer.enable_cache(FirstBlockCacheConfig(threshold=5.0))
    alone = CogVideoXPipeline(**{**cog_pipe.components, "transformer": two_block_renderer})
    alone.set_progress_bar_config(disable=True)
    runs = count_block_runs(two_block_renderer)
    expected = generate(alone)
    assert runs["runs"] < 2 * STEPS  # the cache did skip blocks
    srd.enable(cog_pipe, two_block_renderer, switch="step", switch_step=0)
    assert torch.equal(generate(cog_pipe), expected)
    with pytest.raises(Stop):
        generate(cog_pipe, stop_at=4, seed=1)
    assert torch.equal(generate(cog_pipe), expected)


def test_first_block_cache_on_the_aligned_renderer_resets_every_call(cog_pipe):
    """With the alignment on, each call with a cached renderer gives what that call gives on a
    renderer whose cache was never used, whatever ran before (other videos, an interrupted call).
    The renderer is no pipeline component, so diffusers never resets its cache; SRD does."""

    def cached_renderer():
        model = tiny_cogvideox_transformer(COGVIDEOX_2B_LIKE, seed=1, num_layers=2)
        model.enable_cache(FirstBlockCacheConfig(threshold=5.0))
        return model

    def fresh_run(seed):
        srd.enable(cog_pipe, cached_renderer(), **ALIGNED)
        return generate(cog_pipe, seed=seed)

    expected = {seed: fresh_run(seed) for seed in (0, 2)}
    renderer = cached_renderer()
    runs = count_block_runs(renderer)
    srd.enable(cog_pipe, renderer, **ALIGNED)
    assert torch.equal(generate(cog_pipe, seed=0), expected[0])
    assert runs["runs"] < 2 * (STEPS - SWITCH)  # the cache did skip blocks
    with pytest.raises(Stop):
        generate(cog_pipe, stop_at=SWITCH + 2, seed=1)
    assert torch.equal(generate(cog_pipe, seed=2), expected[2])
    assert torch.equal(generate(cog_pipe, seed=0), expected[0])
    srd.enable(cog_pipe, tiny_cogvideox_transformer(COGVIDEOX_2B_LIKE, seed=1, num_layers=2), **ALIGNED)
    assert not torch.equal(generate(cog_pipe), expected[0])  # without the cache: another result
