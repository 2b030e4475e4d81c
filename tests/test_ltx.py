"""LTX-Video (LTXPipeline, LTXImageToVideoPipeline, LTXConditionPipeline) under SRD, on tiny models.

Oracles: the plain pipeline whose callback swaps `pipe.transformer` for the renderer after
step k-1 (SRD with switch_step=k must equal it bit for bit), the plain pipeline itself (a
renderer carrying the sketcher's weights), and an analytic flow denoiser (the exact velocity
for data equal to one latent) for the x0 the adaptive policy observes, per-token timesteps
and the tail schedule of `denoise_strength` included.
"""

from __future__ import annotations

import copy

import pytest
import torch

import srd_plugin as srd
from srd_plugin.adapters.ltx import ADAPTER
from srd_plugin.errors import IncompatibleRendererError
from srd_plugin.manager import supported_pipelines
from srd_plugin.testing import swap_oracle
from srd_plugin.testing.ltx import (
    LTX_LATENT_CHANNELS,
    LTX_STEPS,
    delta_oracle_ltx,
    tiny_ltx_call_kwargs,
    tiny_ltx_pipeline,
    tiny_ltx_renderer,
    tiny_ltx_transformer,
)

KINDS = ("t2v", "i2v", "condition")


@pytest.fixture(scope="module", params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def pipe(kind):
    return tiny_ltx_pipeline(kind)


@pytest.fixture(scope="module")
def renderer():
    return tiny_ltx_renderer()


@pytest.fixture(autouse=True)
def _disable_after(request):
    yield
    if "pipe" in request.fixturenames:
        srd.disable(request.getfixturevalue("pipe"))


def swapped_after(pipe, renderer, k, **call):
    """The oracle: the plain pipeline with pipe.transformer replaced by the renderer after step k-1."""
    return swap_oracle(pipe, renderer, k, call)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_switch_at_k_equals_the_host_with_the_renderer_swapped_in(pipe, kind, renderer, k):
    expected = swapped_after(pipe, renderer, k, **tiny_ltx_call_kwargs(kind))
    srd.enable(pipe, renderer, switch="step", switch_step=k)
    actual = pipe(**tiny_ltx_call_kwargs(kind)).frames
    trace = srd.last_trace(pipe)
    assert trace.switch_step == k and trace.roles == ["sketch"] * k + ["render"] * (LTX_STEPS - k)
    assert torch.equal(actual, expected)


def test_the_oracle_sees_a_switch_one_step_off(renderer):
    """Without this, the exactness test could not tell a switch at k from one at k + 1."""
    pipe = tiny_ltx_pipeline("t2v")
    assert not torch.equal(
        swapped_after(pipe, renderer, 3, **tiny_ltx_call_kwargs()),
        swapped_after(pipe, renderer, 4, **tiny_ltx_call_kwargs()),
    )


def test_renderer_with_the_sketchers_weights_gives_the_plain_output(pipe, kind):
    plain = pipe(**tiny_ltx_call_kwargs(kind)).frames
    twin = copy.deepcopy(pipe.transformer)
    srd.enable(pipe, twin, switch="adaptive", min_sketch_steps=2, threshold=0.5)
    actual = pipe(**tiny_ltx_call_kwargs(kind)).frames
    assert srd.last_trace(pipe).switch_step is not None
    assert torch.equal(actual, plain)


def test_condition_pipeline_with_denoise_strength_runs_the_tail(renderer):
    """denoise_strength < 1 runs only the tail of the schedule; SRD switches after k steps of the loop."""
    pipe = tiny_ltx_pipeline("condition")
    call = tiny_ltx_call_kwargs("condition", num_inference_steps=8, denoise_strength=0.5)
    expected = swapped_after(pipe, renderer, 2, **call)
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    try:
        actual = pipe(**tiny_ltx_call_kwargs("condition", num_inference_steps=8, denoise_strength=0.5)).frames
    finally:
        srd.disable(pipe)
    assert torch.equal(actual, expected)
    trace = srd.last_trace(pipe)  # the run counts the 4 steps the loop ran, not the 8 of the schedule
    assert trace.completed and trace.num_steps == 4 and trace.roles == ["sketch"] * 2 + ["render"] * 2
    assert trace.timesteps == [float(t) for t in pipe.scheduler.timesteps[4:]]


@pytest.mark.parametrize(
    ("kind", "denoise_strength"), [("t2v", 1.0), ("i2v", 1.0), ("condition", 1.0), ("condition", 0.6)]
)
def test_adaptive_x0_is_exact_for_the_analytic_denoiser(kind, denoise_strength, monkeypatch):
    target = torch.linspace(-1.0, 1.0, LTX_LATENT_CHANNELS)
    pipe = tiny_ltx_pipeline(kind, transformer=delta_oracle_ltx(target))
    seen = []
    original = type(ADAPTER).predict_x0_from_step

    def spy(scheduler, arguments, step_index):
        x0 = original(ADAPTER, scheduler, arguments, step_index)
        seen.append((x0, arguments))
        return x0

    monkeypatch.setattr(ADAPTER, "predict_x0_from_step", spy)
    call = tiny_ltx_call_kwargs(kind, num_inference_steps=8)
    if kind == "condition":
        call["denoise_strength"] = denoise_strength
    srd.enable(pipe, tiny_ltx_renderer(), switch="adaptive", min_sketch_steps=3, max_sketch_steps=4)
    try:
        pipe(**call)
    finally:
        srd.disable(pipe)
    assert len(seen) >= 3
    for x0, arguments in seen:
        sample = arguments["sample"].float()
        if kind == "i2v":  # unpacked [B, C, F-1, H, W]: frame 0 is kept out of the step
            expected = target.view(1, -1, 1, 1, 1).expand_as(sample)
            denoised = torch.ones_like(sample, dtype=torch.bool)
        else:  # packed [B, seq, C]
            expected = target.expand_as(sample)
            per_token = arguments.get("per_token_timesteps")
            denoised = (
                (per_token > 0)[..., None].expand_as(sample)
                if per_token is not None
                else torch.ones_like(sample, dtype=torch.bool)
            )
        assert denoised.any()
        torch.testing.assert_close(x0[denoised], expected[denoised].float(), atol=2e-4, rtol=0)
        # tokens kept out of the denoising (conditioning, sigma 0) predict their own latent
        torch.testing.assert_close(x0[~denoised], sample[~denoised], atol=0, rtol=0)
    if kind == "condition":
        assert any((a["per_token_timesteps"] == 0).any() for _, a in seen), "the conditioning tokens were exercised"


def test_incompatible_renderers_are_refused_with_every_mismatch_named():
    from srd_plugin.testing import tiny_wan_transformer

    pipe = tiny_ltx_pipeline("t2v")
    with pytest.raises(IncompatibleRendererError, match="model family: the sketcher is a LTXVideoTransformer3DModel"):
        srd.enable(pipe, tiny_wan_transformer())
    odd = tiny_ltx_renderer(in_channels=4, out_channels=4, caption_channels=16, patch_size=2)
    with pytest.raises(IncompatibleRendererError) as caught:
        srd.enable(pipe, odd)
    named = "\n".join(caught.value.mismatches)
    for key in ("in_channels", "out_channels", "caption_channels", "patch_size"):
        assert f"({key})" in named
    assert len(caught.value.mismatches) == 4
    assert not srd.is_enabled(pipe)


def test_a_renderer_folder_with_another_vae_is_refused(tmp_path):
    pipe = tiny_ltx_pipeline("t2v")
    same = tiny_ltx_pipeline("t2v", transformer=tiny_ltx_renderer())
    same.save_pretrained(tmp_path / "same")
    srd.enable(pipe, str(tmp_path / "same"), switch="step", switch_step=2)
    srd.disable(pipe)
    other = tiny_ltx_pipeline("t2v", transformer=tiny_ltx_renderer())
    other.register_modules(vae=type(other.vae).from_config(other.vae.config, scaling_factor=0.5))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=r"VAE: .*scaling_factor: renderer 0.5, host 1.0"):
        srd.enable(pipe, str(tmp_path / "other"), switch="step", switch_step=2)
    assert not srd.is_enabled(pipe)


def test_alignment_fields_are_refused_for_ltx():
    pipe = tiny_ltx_pipeline("t2v")
    with pytest.raises(ValueError, match="renderer_scaling_factor=1.1 applies to pairs with different latent"):
        srd.enable(pipe, tiny_ltx_renderer(), renderer_scaling_factor=1.1)


def test_the_sketcher_keeps_its_own_transformer_class_for_paths():
    pipe = tiny_ltx_pipeline("t2v", transformer=tiny_ltx_transformer())
    assert ADAPTER.transformer_class(pipe).__name__ == "LTXVideoTransformer3DModel"
    assert set(ADAPTER.pipeline_classes) <= set(supported_pipelines())
