"""TeaCache: the official rule, exactness at threshold 0 and after removal, per-role state under SRD."""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers import FirstBlockCacheConfig
from teacache_reference import reference_decisions

import srd_plugin as srd
from srd_plugin import TeaCacheConfig
from srd_plugin.hooks.teacache import (
    KNOWN_MODELS,
    apply_teacache,
    has_teacache,
    recognise,
    remove_teacache,
    srd_teacache_stats,
    teacache_stats,
)
from srd_plugin.testing import (
    tiny_call_kwargs,
    tiny_cogvideox_call_kwargs,
    tiny_cogvideox_pipeline,
    tiny_wan_transformer,
)

IDENTITY = (1.0, 0.0)
STEPS = 10


def generate(pipe, steps=STEPS):
    return pipe(**tiny_call_kwargs(steps)).frames


def count_block_runs(model):
    """Independent count of blocks that really ran: pre-hooks on each block's first attention."""
    counter = {"runs": 0}

    def count(*_):
        counter["runs"] += 1

    for block in model.blocks:
        block.attn1.register_forward_pre_hook(count)
    return counter


def capture_modulation(model, index=0):
    """Record the modulated input the official TeaCache looks at, per cache context."""
    seen = []

    def hook(_module, _args, output):
        seen.append(output[index].detach().float().clone())

    handle = model.condition_embedder.register_forward_hook(hook)
    return seen, handle


def is_clean(model):
    """No trace of hooks left on the model's blocks and embedder."""
    modules = [model.condition_embedder, *model.blocks]
    return all(not hasattr(m, "_diffusers_hook") and "forward" not in m.__dict__ for m in modules)


# -- standalone, Wan -------------------------------------------------------------------------
def test_threshold_zero_is_bit_identical_and_removal_restores_the_model(pipe):
    plain = generate(pipe)
    apply_teacache(pipe.transformer, TeaCacheConfig(threshold=0.0, coefficients=IDENTITY))
    assert torch.equal(generate(pipe), plain)
    stats = teacache_stats(pipe.transformer)
    assert stats.computed_calls == 2 * STEPS and stats.skipped_calls == 0
    with pytest.raises(ValueError, match="already has a cache: TeaCache"):
        apply_teacache(pipe.transformer, TeaCacheConfig(threshold=1.0, coefficients=IDENTITY))
    remove_teacache(pipe.transformer)
    assert is_clean(pipe.transformer) and teacache_stats(pipe.transformer) is None
    apply_teacache(pipe.transformer, TeaCacheConfig(threshold=2.0, coefficients=IDENTITY))
    assert not torch.equal(generate(pipe), plain)  # it did skip...
    remove_teacache(pipe.transformer)
    assert torch.equal(generate(pipe), plain)  # ...and is gone without a trace


def test_decisions_follow_the_official_rule_per_context(pipe):
    threshold = 1.2
    seen, handle = capture_modulation(pipe.transformer)
    apply_teacache(pipe.transformer, TeaCacheConfig(threshold=threshold, coefficients=IDENTITY))
    generate(pipe)
    handle.remove()
    decisions = teacache_stats(pipe.transformer).decisions
    assert [name for name, *_ in decisions] == ["cond", "uncond"] * STEPS
    for context, offset in (("cond", 0), ("uncond", 1)):
        ours = [computed for name, _, computed in decisions if name == context]
        expected = reference_decisions(seen[offset::2], IDENTITY, threshold, steps=STEPS)
        assert ours == expected
    assert not all(computed for *_, computed in decisions)  # the rule did skip here


def test_a_skipped_call_adds_the_residual_of_the_last_computed_call():
    """Oracle: the same model without TeaCache, its block stack replaced by input + recorded residual."""
    model = tiny_wan_transformer()
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 3, 8, 8)
    text = torch.randn(1, 6, 32)
    first_t, second_t = torch.tensor([500.0]), torch.tensor([499.0])

    stack = {}
    first_block, last_block = model.blocks[0], model.blocks[-1]
    record_in = first_block.register_forward_pre_hook(lambda _m, args: stack.__setitem__("in", args[0]))
    record_out = last_block.register_forward_hook(lambda _m, _a, out: stack.__setitem__("out", out))
    model(latents, first_t, text, return_dict=False)
    residual = stack["out"] - stack["in"]
    record_out.remove()
    replace = last_block.register_forward_hook(lambda _m, _a, _out: stack["in"] + residual)
    expected = model(latents, second_t, text, return_dict=False)[0]
    record_in.remove()
    replace.remove()

    apply_teacache(model, TeaCacheConfig(threshold=10.0, coefficients=IDENTITY))
    model(latents, first_t, text, return_dict=False)
    skipped = model(latents, second_t, text, return_dict=False)[0]
    assert [computed for *_, computed in teacache_stats(model).decisions] == [True, False]
    assert torch.equal(skipped, expected)


def test_computed_blocks_fall_as_the_threshold_rises(pipe):
    runs = count_block_runs(pipe.transformer)
    computed = []
    for threshold in (0.0, 0.9, 1.5, 3.0):
        apply_teacache(pipe.transformer, TeaCacheConfig(threshold=threshold, coefficients=IDENTITY))
        runs["runs"] = 0
        frames = generate(pipe)
        stats = teacache_stats(pipe.transformer)
        assert stats.computed_blocks == runs["runs"]  # our count matches the blocks that really ran
        assert torch.isfinite(frames).all()
        computed.append(stats.computed_blocks)
        remove_teacache(pipe.transformer)
    assert computed[0] == 2 * STEPS * len(pipe.transformer.blocks)
    assert all(a >= b for a, b in zip(computed, computed[1:])) and computed[-1] < computed[0] / 2


def test_retention_steps_variant_watches_the_projected_embedding(pipe):
    threshold = 1.0
    seen, handle = capture_modulation(pipe.transformer, index=1)
    settings = apply_teacache(
        pipe.transformer, TeaCacheConfig(threshold=threshold, coefficients=IDENTITY, use_ret_steps=True)
    )
    assert settings.modulation == "timestep_proj" and settings.retained_steps == 5 and not settings.compute_last_step
    generate(pipe)
    handle.remove()
    ours = [computed for name, _, computed in teacache_stats(pipe.transformer).decisions if name == "cond"]
    assert ours == reference_decisions(seen[0::2], IDENTITY, threshold, retained=5)
    assert ours[:5] == [True] * 5


# -- configuration and recognition ---------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(threshold=-0.1), "threshold"),
        (dict(threshold=float("nan")), "threshold"),
        (dict(threshold="0.2"), "threshold"),
        (dict(threshold=True), "threshold"),
        (dict(coefficients=()), "coefficients"),
        (dict(coefficients=(1.0, "x")), "coefficients"),
        (dict(coefficients=(float("inf"),)), "coefficients"),
        (dict(coefficients="1,0"), "coefficients"),
        (dict(use_ret_steps="yes"), "use_ret_steps"),
    ],
)
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TeaCacheConfig(**kwargs)


def test_srdconfig_takes_only_teacache_configs():
    with pytest.raises(ValueError, match="teacache"):
        srd.SRDConfig(teacache={"threshold": 0.1})
    with pytest.raises(ValueError, match="teacache_renderer=True is invalid"):
        srd.SRDConfig(teacache_renderer=True)
    assert srd.SRDConfig(teacache=TeaCacheConfig(threshold=0.1)).to_dict()["teacache"]["threshold"] == 0.1


def _meta(cls, **config):
    with torch.device("meta"):
        return cls(**config)


def test_published_architectures_are_recognised_from_their_configs():
    from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel

    wan = dict(patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096)
    assert recognise(
        _meta(WanTransformer3DModel, num_layers=40, num_attention_heads=40, ffn_dim=13824, **wan)
    ).name == ("Wan2.1-T2V-14B")
    small = _meta(WanTransformer3DModel, num_layers=30, num_attention_heads=12, ffn_dim=8960, **wan)
    assert recognise(small) is KNOWN_MODELS["Wan2.1-T2V-1.3B"]
    i2v = dict(wan, in_channels=36, image_dim=1280, added_kv_proj_dim=5120)
    assert recognise(_meta(WanTransformer3DModel, num_layers=40, num_attention_heads=40, ffn_dim=13824, **i2v)) is None
    cog = dict(attention_head_dim=64, text_embed_dim=4096, in_channels=16, out_channels=16)
    assert (
        recognise(_meta(CogVideoXTransformer3DModel, num_layers=42, num_attention_heads=48, **cog)).name
        == "CogVideoX-5B"
    )
    assert (
        recognise(_meta(CogVideoXTransformer3DModel, num_layers=30, num_attention_heads=30, **cog)).name
        == "CogVideoX-2B"
    )
    v15 = _meta(CogVideoXTransformer3DModel, num_layers=42, num_attention_heads=48, patch_size_t=2, **cog)
    assert recognise(v15) is None


def test_unknown_architecture_needs_a_threshold_and_warns_once_about_the_identity(pipe):
    with pytest.raises(ValueError, match="set TeaCacheConfig\\(threshold=...\\)"):
        apply_teacache(pipe.transformer, TeaCacheConfig())
    assert not hasattr(pipe.transformer.blocks[0], "_diffusers_hook")  # refused before any change
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        settings = apply_teacache(pipe.transformer, TeaCacheConfig(threshold=0.5))
        generate(pipe, steps=4)
    assert settings.coefficients == IDENTITY and settings.model is None
    assert len([w for w in caught if "identity polynomial" in str(w.message)]) == 1


def test_unsupported_models_and_existing_caches_are_refused(pipe):
    with pytest.raises(ValueError, match="supports WanTransformer3DModel"):
        apply_teacache(torch.nn.Linear(2, 2), TeaCacheConfig(threshold=0.1))
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    with pytest.raises(ValueError, match="FirstBlockCacheConfig.*disable_cache"):
        apply_teacache(pipe.transformer, TeaCacheConfig(threshold=0.1, coefficients=IDENTITY))


# -- standalone, CogVideoX ------------------------------------------------------------------
def test_cogvideox_pipeline_standalone():
    pipe = tiny_cogvideox_pipeline()
    model = pipe.transformer
    plain = pipe(**tiny_cogvideox_call_kwargs(STEPS)).frames
    settings = apply_teacache(model, TeaCacheConfig(threshold=0.0, coefficients=IDENTITY))
    assert settings.modulation == "emb" and settings.family == "cogvideox"
    assert torch.equal(pipe(**tiny_cogvideox_call_kwargs(STEPS)).frames, plain)
    remove_teacache(model)

    apply_teacache(model, TeaCacheConfig(threshold=0.5, coefficients=IDENTITY))
    cached = pipe(**tiny_cogvideox_call_kwargs(STEPS)).frames
    decisions = teacache_stats(model).decisions
    assert {name for name, *_ in decisions} == {"cond_uncond"} and len(decisions) == STEPS
    assert 0 < teacache_stats(model).skipped_calls < STEPS and not torch.equal(cached, plain)
    assert torch.equal(pipe(**tiny_cogvideox_call_kwargs(STEPS)).frames, cached)  # the pipeline resets it per call
    remove_teacache(model)
    assert torch.equal(pipe(**tiny_cogvideox_call_kwargs(STEPS)).frames, plain)


# -- under SRD -----------------------------------------------------------------------------
def teacache_srd(pipe, renderer, switch_step=4, **overrides):
    settings = dict(
        switch="step",
        switch_step=switch_step,
        teacache=TeaCacheConfig(threshold=1.5, coefficients=IDENTITY),
        teacache_renderer=TeaCacheConfig(threshold=4.0, coefficients=(2.0, 0.0)),
    )
    settings.update(overrides)
    return srd.enable(pipe, renderer, **settings)


def test_srd_keeps_separate_state_and_settings_per_role(pipe, renderer):
    teacache_srd(pipe, renderer)
    generate(pipe)
    stats = srd_teacache_stats(pipe)
    sketch, render = stats["sketch"], stats["render"]
    assert [step for _, step, _ in sketch.decisions] == [s for s in range(4) for _ in "cu"]
    assert [step for _, step, _ in render.decisions] == [s for s in range(4, STEPS) for _ in "cu"]
    assert render.decisions[:2] == [("cond", 4, True), ("uncond", 4, True)]  # fresh at the switch
    sketch_hook = pipe.transformer.condition_embedder._diffusers_hook.get_hook("srd_teacache_modulation")
    render_hook = renderer.condition_embedder._diffusers_hook.get_hook("srd_teacache_modulation")
    assert sketch_hook.state_manager is not render_hook.state_manager
    assert (sketch_hook.settings.threshold, sketch_hook.settings.coefficients) == (1.5, IDENTITY)
    assert (render_hook.settings.threshold, render_hook.settings.coefficients) == (4.0, (2.0, 0.0))
    assert sketch.skipped_calls > 0 and render.skipped_calls > 0
    teacache_srd(pipe, renderer, switch_step=5)  # enabling again replaces SRD's own TeaCache
    generate(pipe)
    assert srd_teacache_stats(pipe)["render"].decisions[0] == ("cond", 5, True)


def test_srd_teacache_starts_fresh_every_call_and_comes_off_with_disable(pipe, renderer):
    srd.enable(pipe, renderer, switch="step", switch_step=4)
    plain_srd = generate(pipe)
    teacache_srd(pipe, renderer)
    first, first_stats = generate(pipe), srd_teacache_stats(pipe)
    second, second_stats = generate(pipe), srd_teacache_stats(pipe)
    assert torch.equal(first, second) and first_stats == second_stats
    assert not torch.equal(first, plain_srd)
    srd.disable(pipe)
    assert is_clean(pipe.transformer) and is_clean(renderer)
    srd.enable(pipe, renderer, switch="step", switch_step=4)
    assert torch.equal(generate(pipe), plain_srd)


def test_srd_teacache_threshold_zero_equals_srd_alone(pipe, renderer):
    srd.enable(pipe, renderer, switch="step", switch_step=4)
    plain_srd = generate(pipe)
    teacache_srd(pipe, renderer, teacache=TeaCacheConfig(threshold=0.0, coefficients=IDENTITY), teacache_renderer=None)
    assert torch.equal(generate(pipe), plain_srd)
    assert all(s.skipped_calls == 0 for s in srd_teacache_stats(pipe).values())


def test_srd_resets_the_renderer_at_the_switch_when_it_is_the_sketcher(pipe):
    with pytest.warns(UserWarning, match="renderer is the sketcher"):
        teacache_srd(
            pipe, pipe.transformer, switch_step=3, teacache=TeaCacheConfig(threshold=100.0, coefficients=IDENTITY)
        )
    generate(pipe)
    decisions = srd_teacache_stats(pipe)["sketch"].decisions
    computed_steps = sorted({step for _, step, computed in decisions if computed})
    assert computed_steps == [0, 3, STEPS - 1]  # first call, first render step, last step


def test_srd_refuses_bad_teacache_setups_before_any_change(pipe, renderer):
    with pytest.raises(ValueError, match="teacache on the sketcher.*threshold") as error:
        srd.enable(pipe, renderer, teacache=TeaCacheConfig())
    assert "teacache on the renderer" in str(error.value)
    renderer.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    with pytest.raises(ValueError, match="renderer: it already has a cache, diffusers' FirstBlockCacheConfig"):
        teacache_srd(pipe, renderer, teacache_renderer=None)
    assert not srd.is_enabled(pipe) and is_clean(pipe.transformer)


def test_srd_teacache_on_the_sketcher_only_beside_the_users_cache_on_the_renderer(pipe, renderer):
    renderer.enable_cache(FirstBlockCacheConfig(threshold=0.3))
    teacache_srd(pipe, renderer, teacache_renderer=False)
    first = generate(pipe)
    assert torch.equal(generate(pipe), first)
    assert set(srd_teacache_stats(pipe)) == {"sketch"} and not has_teacache(renderer)
    assert srd_teacache_stats(pipe)["sketch"].skipped_calls > 0
