"""SageAttention routing on the CPU through injected stand-in kernels: route, fallback, key safety, removal."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import srd_plugin as srd
from srd_plugin.hooks import sageattention as sage
from srd_plugin.hooks.sageattention import (
    AttentionKernel,
    apply_sage_attention,
    make_sage_kernel,
    remove_sage_attention,
    sage_attention_stats,
)
from srd_plugin.testing import tiny_call_kwargs, tiny_cogvideox_call_kwargs, tiny_cogvideox_pipeline

STEPS = 4


def spy_kernel(device_types=("cpu",), head_dims=(16,), dtypes=(torch.float32,)):
    """A stand-in that computes exactly what SDPA computes, and records what it was given."""
    calls = []

    def attend(query, key, value):
        calls.append(tuple(query.shape))
        return F.scaled_dot_product_attention(query, key, value)

    kernel = AttentionKernel("stand-in", attend, head_dims=head_dims, device_types=device_types, dtypes=dtypes)
    return kernel, calls


def generate(pipe):
    return pipe(**tiny_call_kwargs(STEPS)).frames


def processors(model):
    return {name: module.processor for name, module in model.named_modules() if hasattr(module, "processor")}


def wan_attention_calls(pipe):
    """Attention calls of one tiny Wan generation: self + cross per block, cond + uncond per step."""
    return 2 * len(pipe.transformer.blocks) * 2 * STEPS


# -- Wan ---------------------------------------------------------------------------------------
def test_wan_route_is_taken_and_removal_restores_the_processors(pipe):
    plain, originals = generate(pipe), processors(pipe.transformer)
    kernel, calls = spy_kernel()
    apply_sage_attention(pipe.transformer, kernel=kernel)
    routed = generate(pipe)
    assert len(calls) == wan_attention_calls(pipe)
    assert sage_attention_stats(pipe.transformer) == {"sage": len(calls)}
    assert torch.equal(routed, plain)  # the stand-in is SDPA: same numbers through the new route
    remove_sage_attention(pipe.transformer)
    assert all(processors(pipe.transformer)[name] is proc for name, proc in originals.items())
    assert torch.equal(generate(pipe), plain)


def test_wan_falls_back_on_cpu_tensors_with_one_warning(pipe):
    plain = generate(pipe)
    kernel, calls = spy_kernel(device_types=("cuda",))
    apply_sage_attention(pipe.transformer, kernel=kernel)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = generate(pipe)
        generate(pipe)
    assert calls == [] and torch.equal(fallback, plain)
    assert sage_attention_stats(pipe.transformer) == {"fallback": 2 * wan_attention_calls(pipe)}
    messages = [str(w.message) for w in caught if "SageAttention" in str(w.message)]
    assert len(messages) == 1 and "on cpu" in messages[0]


@pytest.mark.parametrize(
    "kernel_kwargs, reason",
    [
        (dict(head_dims=(64, 96, 128)), "head dim 16"),
        (dict(dtypes=(torch.float16, torch.bfloat16)), "float32 inputs"),
    ],
)
def test_unsupported_calls_take_the_original_path_and_say_why(pipe, kernel_kwargs, reason):
    plain = generate(pipe)
    kernel, calls = spy_kernel(**kernel_kwargs)
    apply_sage_attention(pipe.transformer, kernel=kernel)
    with pytest.warns(UserWarning, match=reason):
        assert torch.equal(generate(pipe), plain)
    assert calls == []


def test_without_sageattention_installed_everything_falls_back(pipe, monkeypatch):
    monkeypatch.setattr(sage, "sageattention_kernel", lambda: None)
    plain = generate(pipe)
    apply_sage_attention(pipe.transformer)
    with pytest.warns(UserWarning, match="sageattention is not installed"):
        assert torch.equal(generate(pipe), plain)


def test_a_mask_takes_the_original_path():
    route = sage.SageRoute(kernel=spy_kernel()[0], model_name="test")
    query = torch.randn(1, 2, 5, 16)
    mask = torch.ones(5, 5, dtype=torch.bool)
    assert "attention mask" in route.refusal(query, mask, distributed=False)
    assert "context parallelism" in route.refusal(query, None, distributed=True)
    assert route.refusal(query, None, distributed=False) is None


def test_the_sage_wrapper_never_modifies_the_callers_key():
    """Fake sageattn 1.0.6: smooths the key IN PLACE when smooth_k=True, like the real one."""
    seen = {}

    def sageattn_1_0_6(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, smooth_k=True):
        seen.update(layout=tensor_layout, smooth_k=smooth_k)
        if smooth_k:
            k -= k.mean(dim=2, keepdim=True)
        return F.scaled_dot_product_attention(q, k, v)

    torch.manual_seed(0)
    query, key, value = (torch.randn(1, 2, 7, 16) for _ in range(3))
    key_before = key.clone()
    sageattn_1_0_6(query, key.clone(), value)  # the fake is faithful: it would change a key passed to it...
    kernel = make_sage_kernel(sageattn_1_0_6, device_types=("cpu",))
    output = kernel.fn(query, key, value)
    assert torch.equal(key, key_before)  # ...but the wrapper hands it a smoothed copy
    assert seen == {"layout": "HND", "smooth_k": False}
    assert torch.allclose(output, F.scaled_dot_product_attention(query, key, value), atol=1e-6)


def test_refused_setups(pipe):
    with pytest.raises(ValueError, match="no attention processor"):
        apply_sage_attention(torch.nn.Linear(2, 2), kernel=None)
    with pytest.raises(TypeError, match="AttentionKernel"):
        apply_sage_attention(pipe.transformer, kernel="sage")
    assert not sage.has_sage_attention(pipe.transformer)  # refused before any change
    apply_sage_attention(pipe.transformer, kernel=None)
    with pytest.raises(ValueError, match="already applied"):
        apply_sage_attention(pipe.transformer, kernel=None)


# -- CogVideoX -------------------------------------------------------------------------------
def test_cogvideox_route_and_removal():
    pipe = tiny_cogvideox_pipeline()
    plain, originals = pipe(**tiny_cogvideox_call_kwargs(STEPS)).frames, processors(pipe.transformer)
    kernel, calls = spy_kernel()
    apply_sage_attention(pipe.transformer, kernel=kernel)
    routed = pipe(**tiny_cogvideox_call_kwargs(STEPS)).frames
    assert len(calls) == len(pipe.transformer.transformer_blocks) * STEPS  # one batched CFG call per step
    assert torch.equal(routed, plain)
    remove_sage_attention(pipe.transformer)
    assert all(processors(pipe.transformer)[name] is proc for name, proc in originals.items())
    assert torch.equal(pipe(**tiny_cogvideox_call_kwargs(STEPS)).frames, plain)


def test_cogvideox_falls_back_on_cpu_tensors():
    pipe = tiny_cogvideox_pipeline()
    plain = pipe(**tiny_cogvideox_call_kwargs(STEPS)).frames
    apply_sage_attention(pipe.transformer, kernel=spy_kernel(device_types=("cuda",))[0])
    with pytest.warns(UserWarning, match="on cpu"):
        assert torch.equal(pipe(**tiny_cogvideox_call_kwargs(STEPS)).frames, plain)


# -- under SRD ---------------------------------------------------------------------------------
def test_srd_routes_both_roles_and_restores_them(pipe, renderer, monkeypatch):
    kernel, calls = spy_kernel()
    monkeypatch.setattr(sage, "sageattention_kernel", lambda: kernel)
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    plain_srd = generate(pipe)
    originals = (processors(pipe.transformer), processors(renderer))
    srd.enable(pipe, renderer, switch="step", switch_step=2, sage_attention=True)
    assert torch.equal(generate(pipe), plain_srd)
    sketch_calls = sage_attention_stats(pipe.transformer)["sage"]
    render_calls = sage_attention_stats(renderer)["sage"]
    assert sketch_calls == 2 * len(pipe.transformer.blocks) * 2 * 2  # 2 sketch steps
    assert render_calls == 2 * len(renderer.blocks) * 2 * (STEPS - 2)
    assert len(calls) == sketch_calls + render_calls
    srd.enable(pipe, renderer, switch="step", switch_step=3, sage_attention=True)  # replaces SRD's own
    generate(pipe)
    assert sage_attention_stats(renderer)["sage"] == 2 * len(renderer.blocks) * 2 * (STEPS - 3)  # a fresh route
    srd.disable(pipe)
    for model, before in zip((pipe.transformer, renderer), originals):
        assert all(processors(model)[name] is proc for name, proc in before.items())


def test_srd_refuses_sage_on_a_model_that_already_has_it(pipe, renderer):
    apply_sage_attention(renderer, kernel=None)
    with pytest.raises(ValueError, match="renderer already has SageAttention"):
        srd.enable(pipe, renderer, sage_attention=True)
    srd.enable(pipe, renderer, switch="step", switch_step=2)  # without the flag, the user's stays and runs
    with pytest.warns(UserWarning, match="sageattention is not installed"):
        generate(pipe)
    assert sage_attention_stats(renderer)["fallback"] > 0


def test_srd_stacks_sage_attention_and_teacache(pipe, renderer, monkeypatch):
    monkeypatch.setattr(sage, "sageattention_kernel", lambda: spy_kernel()[0])
    teacache = srd.TeaCacheConfig(threshold=1.0, coefficients=(1.0, 0.0))
    srd.enable(pipe, renderer, switch="step", switch_step=2, teacache=teacache)
    teacache_only = generate(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=2, teacache=teacache, sage_attention=True)
    assert torch.equal(generate(pipe), teacache_only)  # the stand-in is SDPA: stacking changes nothing else
    assert sage_attention_stats(pipe.transformer)["sage"] > 0 and sage_attention_stats(renderer)["sage"] > 0


def test_the_kernel_stays_inside_a_compiled_graph():
    """The kernel is a custom op: torch.compile traces the whole routed attention as one graph."""
    from srd_plugin.testing import tiny_wan_transformer

    attention = tiny_wan_transformer().blocks[0].attn1
    kernel, calls = spy_kernel()
    apply_sage_attention(attention, kernel=kernel)
    hidden = torch.randn(1, 6, attention.inner_dim)
    eager = attention(hidden)
    compiled = torch.compile(attention, backend="eager", fullgraph=True)  # fullgraph: a graph break raises
    assert torch.equal(compiled(hidden), eager)
    assert sage_attention_stats(attention)["sage"] >= 2 and calls
