"""Kandinsky 5.0 Video (Kandinsky5T2VPipeline, Kandinsky5I2VPipeline) under SRD, on tiny models.

Calls pass prompt embeddings (the pipeline's own encoders, Qwen2.5-VL and CLIP, cannot be built
offline). Oracles: the host with its transformer swapped after step k-1, the plain host, and an
analytic flow denoiser for the x0 the adaptive policy observes on the stepped channel slice.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput

import srd_plugin as srd
from srd_plugin.adapters.kandinsky5 import ADAPTER
from srd_plugin.errors import IncompatibleRendererError
from srd_plugin.testing import swap_oracle
from srd_plugin.testing.kandinsky5 import (
    K5_LATENT_CHANNELS,
    K5_STEPS,
    delta_oracle_kandinsky5,
    tiny_kandinsky5_call_kwargs,
    tiny_kandinsky5_pipeline,
    tiny_kandinsky5_renderer,
)

KINDS = ("t2v", "i2v")


@pytest.fixture(scope="module", params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def pipe(kind):
    return tiny_kandinsky5_pipeline(kind)


@pytest.fixture(scope="module")
def renderer():
    return tiny_kandinsky5_renderer()


@pytest.fixture(autouse=True)
def _disable_after(request):
    yield
    if "pipe" in request.fixturenames:
        srd.disable(request.getfixturevalue("pipe"))


def generate(pipe, kind, callback=None, **overrides):
    return pipe(**tiny_kandinsky5_call_kwargs(kind, **overrides), callback_on_step_end=callback, return_dict=False)[0]


def swapped_after(pipe, kind, renderer, k):
    return swap_oracle(pipe, renderer, k, {**tiny_kandinsky5_call_kwargs(kind), "return_dict": False})


@pytest.mark.parametrize("k", [1, 3, 5])
def test_switch_at_k_equals_the_host_with_the_renderer_swapped_in(pipe, kind, renderer, k):
    expected = swapped_after(pipe, kind, renderer, k)
    srd.enable(pipe, renderer, switch="step", switch_step=k)
    actual = generate(pipe, kind)
    assert srd.last_trace(pipe).roles == ["sketch"] * k + ["render"] * (K5_STEPS - k)
    assert torch.equal(actual, expected)


def test_the_oracle_sees_a_switch_one_step_off(pipe, kind, renderer):
    assert not torch.equal(swapped_after(pipe, kind, renderer, 2), swapped_after(pipe, kind, renderer, 3))


def test_renderer_with_the_sketchers_weights_gives_the_plain_output(pipe, kind):
    plain = generate(pipe, kind)
    srd.enable(pipe, copy.deepcopy(pipe.transformer), switch="adaptive", min_sketch_steps=2, threshold=0.5)
    actual = generate(pipe, kind)
    assert srd.last_trace(pipe).switch_step is not None
    assert torch.equal(actual, plain)


def test_the_renderers_output_stays_a_model_output(pipe, kind, renderer):
    """The pipeline reads `.sample` of the call's result: the render call must return that object."""
    seen = []
    srd.enable(pipe, renderer, switch="step", switch_step=0)
    handle = pipe.transformer.register_forward_hook(lambda module, args, output: seen.append(output))
    try:
        generate(pipe, kind)
    finally:
        handle.remove()
    assert srd.last_trace(pipe).roles == ["render"] * K5_STEPS
    # what the host receives from its transformer call (served by the renderer) is the object it reads .sample of
    assert seen and all(isinstance(out, Transformer2DModelOutput) for out in seen)
    calls = []
    handle = renderer.register_forward_hook(lambda module, args, output: calls.append(output))
    try:
        generate(pipe, kind)
    finally:
        handle.remove()
    assert calls and all(isinstance(out, Transformer2DModelOutput) for out in calls)


@pytest.mark.parametrize("kind", KINDS)
def test_adaptive_x0_is_exact_for_the_analytic_denoiser(kind, monkeypatch):
    target = torch.linspace(-1.0, 1.0, K5_LATENT_CHANNELS)
    pipe = tiny_kandinsky5_pipeline(kind, transformer=delta_oracle_kandinsky5(target))
    seen = []
    original = type(ADAPTER).predict_x0_from_step

    def spy(scheduler, arguments, step_index):
        x0 = original(ADAPTER, scheduler, arguments, step_index)
        seen.append(x0)
        return x0

    monkeypatch.setattr(ADAPTER, "predict_x0_from_step", spy)
    srd.enable(pipe, tiny_kandinsky5_renderer(), switch="adaptive", min_sketch_steps=3, max_sketch_steps=4)
    try:
        generate(pipe, kind)
    finally:
        srd.disable(pipe)
    assert len(seen) >= 3
    for x0 in seen:
        assert x0.shape[-1] == K5_LATENT_CHANNELS  # the stepped channel slice, not the conditioning channels
        torch.testing.assert_close(x0, target.float().expand_as(x0), atol=2e-4, rtol=0)


def test_incompatible_renderers_are_refused_with_every_mismatch_named():
    from srd_plugin.testing.ltx import tiny_ltx_transformer

    pipe = tiny_kandinsky5_pipeline("t2v")
    with pytest.raises(IncompatibleRendererError, match="model family: the sketcher is a Kandinsky5Transformer3DModel"):
        srd.enable(pipe, tiny_ltx_transformer())
    odd = tiny_kandinsky5_renderer(in_visual_dim=8, out_visual_dim=8, in_text_dim=16, visual_cond=False)
    with pytest.raises(IncompatibleRendererError) as caught:
        srd.enable(pipe, odd)
    named = "\n".join(caught.value.mismatches)
    for key in ("in_visual_dim", "out_visual_dim", "in_text_dim", "visual_cond"):
        assert f"({key})" in named
    assert len(caught.value.mismatches) == 4
    with pytest.raises(
        IncompatibleRendererError,
        match=r"attention type .*\(attention_type\): sketcher has .regular., renderer has .nabla.",
    ):
        srd.enable(pipe, tiny_kandinsky5_renderer(attention_type="nabla", attention_P=0.9))
    assert not srd.is_enabled(pipe)
