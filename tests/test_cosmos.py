"""Cosmos Predict2 (Cosmos2TextToImagePipeline, Cosmos2VideoToWorldPipeline) under SRD, on tiny models.

Runs on this machine's CPU torch without torchvision: the transformer's padding-mask resize
gets torchvision's own NEAREST tensor path (`srd_plugin.testing.torchvision_resize`), and the
safety checker passes everything through; the model and pipeline arithmetic is diffusers' own.
Oracles: the host with its transformer swapped after step k-1, the plain host (renderer with
the sketcher's weights), and an analytic denoiser under the pipelines' EDM preconditioning.
"""

from __future__ import annotations

import copy

import pytest
import torch

import srd_plugin as srd
from srd_plugin.adapters.cosmos import ADAPTER
from srd_plugin.errors import IncompatibleRendererError
from srd_plugin.testing import swap_oracle
from srd_plugin.testing.cosmos import (
    COSMOS_LATENT_CHANNELS,
    COSMOS_STEPS,
    delta_oracle_cosmos,
    tiny_cosmos_call_kwargs,
    tiny_cosmos_pipeline,
    tiny_cosmos_renderer,
)

KINDS = ("t2i", "v2w")


@pytest.fixture(scope="module", params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def pipe(kind):
    return tiny_cosmos_pipeline(kind)


@pytest.fixture(scope="module")
def renderer(kind):
    return tiny_cosmos_renderer(video=kind == "v2w")


@pytest.fixture(autouse=True)
def _disable_after(request):
    yield
    if "pipe" in request.fixturenames:
        srd.disable(request.getfixturevalue("pipe"))


def generate(pipe, kind, callback=None, **overrides):
    return pipe(**tiny_cosmos_call_kwargs(kind, **overrides), callback_on_step_end=callback, return_dict=False)[0]


def swapped_after(pipe, kind, renderer, k):
    return swap_oracle(pipe, renderer, k, {**tiny_cosmos_call_kwargs(kind), "return_dict": False})


@pytest.mark.parametrize("k", [1, 3, 5])
def test_switch_at_k_equals_the_host_with_the_renderer_swapped_in(pipe, kind, renderer, k):
    expected = swapped_after(pipe, kind, renderer, k)
    srd.enable(pipe, renderer, switch="step", switch_step=k)
    actual = generate(pipe, kind)
    trace = srd.last_trace(pipe)
    assert trace.roles == ["sketch"] * k + ["render"] * (COSMOS_STEPS - k)
    assert torch.equal(actual, expected)


def test_the_oracle_sees_a_switch_one_step_off(pipe, kind, renderer):
    assert not torch.equal(swapped_after(pipe, kind, renderer, 2), swapped_after(pipe, kind, renderer, 3))


def test_renderer_with_the_sketchers_weights_gives_the_plain_output(pipe, kind):
    plain = generate(pipe, kind)
    srd.enable(pipe, copy.deepcopy(pipe.transformer), switch="adaptive", min_sketch_steps=2, threshold=0.5)
    actual = generate(pipe, kind)
    assert srd.last_trace(pipe).switch_step is not None
    assert torch.equal(actual, plain)


@pytest.mark.parametrize("kind", KINDS)
def test_adaptive_x0_is_the_edm_denoiser_of_the_analytic_model(kind, monkeypatch):
    target = torch.linspace(-0.8, 0.8, COSMOS_LATENT_CHANNELS).view(-1, 1, 1, 1)
    pipe = tiny_cosmos_pipeline(kind, transformer=delta_oracle_cosmos(target, video=kind == "v2w"))
    seen = []
    original = type(ADAPTER).predict_x0_from_step

    def spy(scheduler, arguments, step_index):
        x0 = original(ADAPTER, scheduler, arguments, step_index)
        seen.append(x0)
        return x0

    monkeypatch.setattr(ADAPTER, "predict_x0_from_step", spy)
    srd.enable(
        pipe, tiny_cosmos_renderer(video=kind == "v2w"), switch="adaptive", min_sketch_steps=3, max_sketch_steps=4
    )
    try:
        generate(pipe, kind)
    finally:
        srd.disable(pipe)
    assert len(seen) >= 3
    for x0 in seen:
        # Video2World: latent frame 0 is the conditioning frame (its x0 is its conditioning latent)
        denoised = x0[:, :, 1:] if kind == "v2w" else x0
        torch.testing.assert_close(denoised, target.float().expand_as(denoised), atol=2e-4, rtol=0)
        if kind == "v2w":
            assert not torch.allclose(x0[:, :, :1], target.float().expand_as(x0[:, :, :1]), atol=1e-2)


def test_incompatible_renderers_are_refused_with_every_mismatch_named():
    from srd_plugin.testing.ltx import tiny_ltx_transformer

    pipe = tiny_cosmos_pipeline("t2i")
    with pytest.raises(IncompatibleRendererError, match="model family: the sketcher is a CosmosTransformer3DModel"):
        srd.enable(pipe, tiny_ltx_transformer())
    # a Video2World renderer (mask channel) with another text width cannot render a Text2Image call
    odd = tiny_cosmos_renderer(video=True, text_embed_dim=16)
    with pytest.raises(IncompatibleRendererError) as caught:
        srd.enable(pipe, odd)
    named = "\n".join(caught.value.mismatches)
    assert "(in_channels)" in named and "(text_embed_dim)" in named and len(caught.value.mismatches) == 2
    assert not srd.is_enabled(pipe)


# -- Cosmos Predict2.5 (Text2World) ----------------------------------------------------------------
def test_predict25_switch_at_k_equals_the_swapped_host_and_x0_is_exact(monkeypatch):
    from srd_plugin.testing.cosmos import (
        COSMOS25_PROMPT_DIM,
        COSMOS_TEXT_DIM,
        tiny_cosmos25_call_kwargs,
        tiny_cosmos25_pipeline,
        tiny_cosmos25_renderer,
    )

    pipe, renderer = tiny_cosmos25_pipeline(), tiny_cosmos25_renderer()
    sketcher = pipe.transformer
    for k in (2, 4):

        def swap(p, i, t, kwargs, k=k):
            if i == k - 1:
                p.transformer = renderer
            return kwargs

        expected = pipe(**tiny_cosmos25_call_kwargs(), callback_on_step_end=swap, return_dict=False)[0]
        pipe.transformer = sketcher
        srd.enable(pipe, renderer, switch="step", switch_step=k)
        try:
            assert torch.equal(pipe(**tiny_cosmos25_call_kwargs(), return_dict=False)[0], expected)
        finally:
            srd.disable(pipe)

    projection = dict(
        use_crossattn_projection=True,
        crossattn_proj_in_channels=COSMOS25_PROMPT_DIM,
        encoder_hidden_states_channels=COSMOS_TEXT_DIM,
    )
    target = torch.linspace(-0.8, 0.8, COSMOS_LATENT_CHANNELS).view(-1, 1, 1, 1)
    oracle = tiny_cosmos25_pipeline(transformer=delta_oracle_cosmos(target, video=True, **projection))
    seen = []
    original = type(ADAPTER).predict_x0_from_step
    monkeypatch.setattr(ADAPTER, "predict_x0_from_step", lambda *a: seen.append(original(ADAPTER, *a)) or seen[-1])
    srd.enable(oracle, renderer, switch="adaptive", min_sketch_steps=3, max_sketch_steps=4)
    try:
        oracle(**tiny_cosmos25_call_kwargs(), return_dict=False)
    finally:
        srd.disable(oracle)
    assert len(seen) >= 3
    for x0 in seen:
        torch.testing.assert_close(x0, target.float().expand_as(x0), atol=2e-4, rtol=0)
