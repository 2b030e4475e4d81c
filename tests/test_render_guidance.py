"""Guidance-free rendering (`render_guidance="off"`) against the plain pipeline, on every supported host.

Oracle: the plain pipeline whose `callback_on_step_end` swaps in the renderer (for every denoiser
the host calls: Wan2.2's two experts) and sets the guidance scale the host reads to 1 after step
k-1 (`_guidance_scale`; Wan2.2 also `_guidance_scale_2`); for k = 0 the host with the renderer
at guidance scale 1. SRD with `switch="step", switch_step=k, render_guidance="off"` must equal it
bit for bit. Every host here reads its guidance switch per step from the pipeline
(`do_classifier_free_guidance` / `guidance_scale > 1`), so the reference's render steps make one
conditional call, as SRD's renderer does, except where noted:

* CogVideoX (T2V, V2V, I2V: one call on [uncond, cond]) keeps its doubled batch after the
  callback (`do_classifier_free_guidance` is a local there), and a batch of two rounds differently
  from a batch of one in the last bit. So its reference also puts the conditional prompt in both
  halves and evaluates the renderer per half (`PerHalf`): `uncond + 1 * (cond - uncond)` is then
  `cond` exactly, computed at the batch SRD's renderer computes it.
* LTX (T2V, I2V, condition: one call on [uncond, cond]) leaves CFG when its scale drops to 1, but
  some doubled inputs are locals the callback cannot reach (the prompt attention mask, I2V's
  doubled conditioning mask inside the per-token timestep, the condition pipeline's
  `video_coords`); the reference's renderer takes those at their conditional half
  (`CondHalfOfStale`), which is what a host that never doubled them would pass. Exact for
  `guidance_rescale=0` (the default): with a rescale, `r * x + (1 - r) * x` need not round to x.
* Cosmos and Kandinsky 5 run no cache contexts: SRD recognises the negative call as the second
  call of its step (`CFGLayout.by_order`).

A new pipeline joins by one entry in CASES.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import srd_plugin as srd
from srd_plugin import SRDConfig
from srd_plugin.adapters import wan
from srd_plugin.adapters.base import CFGLayout
from srd_plugin.guidance import GuidanceFreeRender
from srd_plugin.testing import (
    RENDERER_SIZE,
    CogVideoXSize,
    tiny_call_kwargs,
    tiny_cogvideox_call_kwargs,
    tiny_cogvideox_pipeline,
    tiny_cogvideox_transformer,
    tiny_wan_pipeline,
    tiny_wan_renderer,
    tiny_wan_transformer,
)
from srd_plugin.testing import cosmos as cosmos_t
from srd_plugin.testing import kandinsky5 as k5
from srd_plugin.testing import ltx as ltx_t
from srd_plugin.testing import wan_family as wf

STEPS = 6


class _Wrapper(torch.nn.Module):
    """A renderer seen through a reference adaptor: the host reads `config`, `dtype`, `cache_context`."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def cache_context(self, name: str, **kwargs: Any) -> Any:
        return contextlib.nullcontext()


class PerHalf(_Wrapper):
    """The renderer called once per half of a CFG batch (the reference for CogVideoX)."""

    def forward(self, hidden_states, encoder_hidden_states, timestep, **kwargs):
        half = hidden_states.shape[0] // 2
        outputs = [
            self.model(
                hidden_states=hidden_states[i * half : (i + 1) * half],
                encoder_hidden_states=encoder_hidden_states[i * half : (i + 1) * half],
                timestep=timestep[i * half : (i + 1) * half],
                **kwargs,
            )[0]
            for i in (0, 1)
        ]
        return (torch.cat(outputs),)


class CondHalfOfStale(_Wrapper):
    """The renderer in an LTX host that left CFG mid-call: an input still doubled ([uncond, cond],
    twice the latents' batch) is given at its conditional half, as a host that never doubled it would."""

    def forward(self, hidden_states, **kwargs):
        batch = hidden_states.shape[0]
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == 2 * batch:
                kwargs[name] = value[batch:]
        return self.model(hidden_states=hidden_states, **kwargs)


PER_HALF, STALE = "per_half", "stale"


@dataclass(frozen=True)
class Case:
    """One host: a fresh pipeline (same weights each time), its renderer, its call, and what the reference sets."""

    name: str
    pipeline: Callable[[], Any]
    renderer: Callable[[], torch.nn.Module]
    call: Callable[..., dict[str, Any]]  # (steps, **overrides) -> call kwargs
    models: tuple[str, ...] = ("transformer",)
    guidance: tuple[str, ...] = ("_guidance_scale",)
    batched: str | None = None  # None: two calls; PER_HALF / STALE: how the reference meets the doubled batch


def _wan_pipeline():
    pipe = tiny_wan_pipeline(transformer=tiny_wan_transformer(seed=0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _wan_renderer(size=RENDERER_SIZE, **overrides):
    return lambda: tiny_wan_transformer(size, seed=1, **overrides)


#: a rotary renderer with the sketcher's head dim and sample size: the pipeline's rotary tables
#: (made from the sketcher's config before the loop) are then the renderer's own
COG_ROTARY_RENDERER = CogVideoXSize(num_layers=1, num_attention_heads=2, attention_head_dim=16, rotary=True)


def _v2v(make, steps, overrides):
    """Video-to-video at strength 0.6 over twice the steps: the loop runs 7 of 12 (every k tested here fits)."""
    return make(2 * steps, **overrides)


def _ltx(kind):
    return Case(
        f"ltx_{kind}",
        lambda: ltx_t.tiny_ltx_pipeline(kind),
        ltx_t.tiny_ltx_renderer,
        lambda steps, **o: ltx_t.tiny_ltx_call_kwargs(kind, steps, **o),
        batched=STALE,
    )


def _live(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A Kandinsky 5 transformer whose modulations are random: diffusers zero-initialises them, and then
    no block contributes, the output ignores the prompt and guidance could not change anything."""
    from diffusers.models.transformers.transformer_kandinsky import Kandinsky5Modulation

    generator = torch.Generator().manual_seed(seed + 500)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Kandinsky5Modulation):
                weight = module.out_layer.weight
                weight.copy_(0.2 * torch.randn(weight.shape, generator=generator))
    return model


def _kandinsky5(kind):
    return Case(
        f"kandinsky5_{kind}",
        lambda: k5.tiny_kandinsky5_pipeline(kind, transformer=_live(k5.tiny_kandinsky5_transformer(seed=0), 0)),
        lambda: _live(k5.tiny_kandinsky5_renderer(), 1),
        lambda steps, **o: k5.tiny_kandinsky5_call_kwargs(kind, steps, **o),
    )


CASES = [
    Case("wan", _wan_pipeline, tiny_wan_renderer, tiny_call_kwargs),
    Case(
        "wan22",
        wf.tiny_wan22_pipeline,
        tiny_wan_renderer,
        lambda steps, **o: tiny_call_kwargs(steps, **{"guidance_scale_2": 4.0, **o}),
        models=("transformer", "transformer_2"),
        guidance=("_guidance_scale", "_guidance_scale_2"),
    ),
    Case(
        "wan_v2v",
        wf.tiny_wan_v2v_pipeline,
        tiny_wan_renderer,
        lambda steps, **o: _v2v(wf.tiny_wan_v2v_call_kwargs, steps, o),
    ),
    # a renderer with as many VACE layers as the sketcher: the host sizes `conditioning_scale` for the sketcher
    Case("wan_vace", wf.tiny_vace_pipeline, lambda: wf.tiny_vace_renderer((0, 1)), wf.tiny_vace_call_kwargs),
    Case("wan_i2v", wf.tiny_wan_i2v_pipeline, _wan_renderer(in_channels=wf.I2V_IN_CHANNELS), wf.tiny_i2v_call_kwargs),
    Case(
        "skyreels",
        wf.tiny_skyreels_pipeline,
        lambda: wf.tiny_skyreels_transformer(RENDERER_SIZE, seed=1),
        tiny_call_kwargs,
    ),
    Case(
        "skyreels_i2v",
        wf.tiny_skyreels_i2v_pipeline,
        lambda: wf.tiny_skyreels_i2v_transformer(RENDERER_SIZE, seed=1),
        wf.tiny_i2v_call_kwargs,
    ),
    Case(
        "cogvideox",
        lambda: tiny_cogvideox_pipeline(transformer=tiny_cogvideox_transformer(seed=0)),
        lambda: tiny_cogvideox_transformer(COG_ROTARY_RENDERER, seed=1),
        tiny_cogvideox_call_kwargs,
        batched=PER_HALF,
    ),
    Case(
        "cogvideox_v2v",
        wf.tiny_cogvideox_v2v_pipeline,
        lambda: tiny_cogvideox_transformer(COG_ROTARY_RENDERER, seed=1),
        lambda steps, **o: _v2v(wf.tiny_cogvideox_v2v_call_kwargs, steps, o),
        batched=PER_HALF,
    ),
    Case(
        "cogvideox_i2v",
        wf.tiny_cogvideox_i2v_pipeline,
        lambda: tiny_cogvideox_transformer(COG_ROTARY_RENDERER, seed=1, in_channels=2 * wf.LATENT_CHANNELS),
        wf.tiny_cogvideox_i2v_call_kwargs,
        batched=PER_HALF,
    ),
    _ltx("t2v"),
    _ltx("i2v"),
    _ltx("condition"),
    Case(
        "cosmos_t2i",
        lambda: cosmos_t.tiny_cosmos_pipeline("t2i"),
        cosmos_t.tiny_cosmos_renderer,
        lambda steps, **o: cosmos_t.tiny_cosmos_call_kwargs("t2i", steps, **o),
    ),
    Case(
        "cosmos_v2w",
        lambda: cosmos_t.tiny_cosmos_pipeline("v2w"),
        lambda: cosmos_t.tiny_cosmos_renderer(video=True),
        lambda steps, **o: cosmos_t.tiny_cosmos_call_kwargs("v2w", steps, **o),
    ),
    Case(
        "cosmos25",
        cosmos_t.tiny_cosmos25_pipeline,
        cosmos_t.tiny_cosmos25_renderer,
        cosmos_t.tiny_cosmos25_call_kwargs,
    ),
    _kandinsky5("t2v"),
    _kandinsky5("i2v"),
]
CASE = {case.name: case for case in CASES}


def _output(result: Any) -> torch.Tensor:
    """The latents a pipeline returned: `frames` (video pipelines) or `images` (Cosmos text-to-image)."""
    return result.frames if hasattr(result, "frames") else result.images


def reference(case: Case, renderer: torch.nn.Module, k: int) -> torch.Tensor:
    """The plain pipeline: sketcher with guidance for k steps, then the renderer at guidance scale 1."""
    pipe = case.pipeline()
    model = renderer if case.batched is None else (PerHalf if case.batched == PER_HALF else CondHalfOfStale)(renderer)
    if k == 0:
        for name in case.models:
            setattr(pipe, name, renderer)
        return _output(pipe(**case.call(STEPS, guidance_scale=1.0)))

    def swap(target, i, t, tensors):
        if i != k - 1:
            return {}
        for name in case.models:
            setattr(target, name, model)
        for name in case.guidance:
            setattr(target, name, 1.0)
        if case.batched is None:
            return {}
        _, cond = tensors["prompt_embeds"].chunk(2)
        return {"prompt_embeds": torch.cat([cond, cond]) if case.batched == PER_HALF else cond}

    inputs = ["latents", "prompt_embeds"] if case.batched else ["latents"]
    return _output(pipe(**case.call(STEPS), callback_on_step_end=swap, callback_on_step_end_tensor_inputs=inputs))


@pytest.mark.parametrize("k", [0, 2, 4, STEPS])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_guidance_free_rendering_equals_the_host_at_guidance_scale_one(case, k):
    renderer = case.renderer()
    expected = reference(case, renderer, k)
    pipe = case.pipeline()
    srd.enable(pipe, renderer, switch="step", switch_step=k, render_guidance="off")
    got = _output(pipe(**case.call(STEPS)))
    trace = srd.last_trace(pipe)
    assert torch.equal(got, expected)
    steps = trace.num_steps  # video-to-video: the steps its loop runs
    assert trace.roles == ["sketch"] * k + ["render"] * (steps - k)
    assert trace.guidance_calls_saved == steps - k  # one uncond call (or one batch half) per render step


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_host_guidance_is_different_and_the_sketch_phase_untouched(case):
    """render_guidance="host" keeps the guided renderer (so "off" really changes the render steps)."""
    renderer = case.renderer()
    pipe = case.pipeline()
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    host = _output(pipe(**case.call(STEPS)))
    assert srd.last_trace(pipe).guidance_calls_saved == 0
    srd.enable(pipe, renderer, switch="step", switch_step=2, render_guidance="off")
    assert not torch.equal(_output(pipe(**case.call(STEPS))), host)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_nothing_changes_when_the_host_runs_without_guidance(case):
    renderer = case.renderer()
    pipe = case.pipeline()
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    host = _output(pipe(**case.call(STEPS, guidance_scale=1.0)))
    srd.enable(pipe, renderer, switch="step", switch_step=2, render_guidance="off")
    assert torch.equal(_output(pipe(**case.call(STEPS, guidance_scale=1.0))), host)
    assert srd.last_trace(pipe).guidance_calls_saved == 0


@pytest.mark.parametrize("name", ["wan", "wan_v2v", "cosmos_v2w", "kandinsky5_t2v"])
def test_the_renderer_runs_once_per_render_step_on_a_two_call_host(name):
    """Wan names its calls by cache context; Wan video-to-video, Cosmos and Kandinsky 5 run none (by order)."""
    case = CASE[name]
    renderer = case.renderer()
    prompts = []
    renderer.register_forward_pre_hook(
        lambda module, args, kwargs: prompts.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    pipe = case.pipeline()
    calls = []
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    srd.enable(pipe, renderer, switch="step", switch_step=2, render_guidance="off")
    pipe(**case.call(STEPS))
    steps = srd.last_trace(pipe).num_steps
    assert len(prompts) == steps - 2
    assert len(calls) == 2 * steps  # the host still makes both calls of every step (its pre-hooks see them)
    positive, negative = calls[0], calls[1]
    assert not torch.equal(positive, negative)
    assert all(torch.equal(p, positive) for p in prompts)  # the conditional call, never the negative one


@pytest.mark.parametrize("name", ["cogvideox", "ltx_i2v", "ltx_condition"])
def test_the_renderer_sees_the_conditional_half_on_a_batched_host(name):
    """Every doubled argument arrives halved: LTX's prompt mask, per-token timesteps and video_coords too."""
    case = CASE[name]
    renderer = case.renderer()
    seen = []
    renderer.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    pipe = case.pipeline()
    srd.enable(pipe, renderer, switch="step", switch_step=2, render_guidance="off")
    pipe(**case.call(STEPS))
    assert len(seen) == STEPS - 2
    for kwargs in seen:
        batched = [v for v in kwargs.values() if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] > 1]
        assert kwargs["hidden_states"].shape[0] == 1 and batched == []
    if name == "ltx_condition":
        assert all(kwargs["video_coords"] is not None for kwargs in seen)


def test_calls_without_a_cache_context_are_counted_per_step():
    """By order: the second call of each step is the negative one, and every step counts afresh."""
    layout = CFGLayout(calls="two_calls", cond_context=None, uncond_context=None)
    guidance = GuidanceFreeRender(layout, True, torch.nn.Linear(1, 1))
    planned = [guidance.renderer_call((), {}, None, step) for step in (0, 0, 1, 1, 3)]
    assert [p is None for p in planned] == [False, True, False, True, False]
    named = GuidanceFreeRender(CFGLayout(calls="two_calls"), True, torch.nn.Linear(1, 1))
    uncond = type("Context", (), {"name": "uncond"})()
    assert named.renderer_call((), {}, uncond, 0) is None  # a named call: by its context, not its order
    assert named.renderer_call((), {}, None, 0) is not None  # no context: the first call of its step


def test_an_adapter_without_a_cfg_layout_is_refused_before_any_change(monkeypatch):
    pipe = _wan_pipeline()
    monkeypatch.setattr(wan.ADAPTER, "cfg_layout", None)
    with pytest.raises(ValueError, match="cfg_layout"):
        srd.enable(pipe, tiny_wan_renderer(), render_guidance="off")
    assert not srd.is_enabled(pipe)


def test_a_layout_whose_order_does_not_match_the_host_says_so(monkeypatch):
    pipe = _wan_pipeline()
    swapped = CFGLayout(calls="two_calls", cond_context="uncond", uncond_context="cond")
    monkeypatch.setattr(wan.ADAPTER, "cfg_layout", swapped)
    srd.enable(pipe, tiny_wan_renderer(), switch="step", switch_step=2, render_guidance="off")
    with pytest.raises(RuntimeError, match="came before its 'uncond' call"):
        pipe(**tiny_call_kwargs(STEPS))


@pytest.mark.parametrize("value", ["none", "", None, True])
def test_render_guidance_values_are_validated(value):
    with pytest.raises(ValueError, match="render_guidance"):
        SRDConfig(render_guidance=value)


def test_layout_declarations_are_validated():
    with pytest.raises(ValueError, match="calls"):
        CFGLayout(calls="three_calls")
    with pytest.raises(ValueError, match="batch_arguments"):
        CFGLayout(calls="batched")
    with pytest.raises(ValueError, match="both cache contexts"):
        CFGLayout(calls="two_calls", cond_context="cond", uncond_context=None)
