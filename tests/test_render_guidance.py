"""Guidance-free rendering (`render_guidance="off"`) against the plain pipeline, on every supported host.

Oracle: the plain pipeline whose `callback_on_step_end` swaps in the renderer and sets the
pipeline's guidance scale to 1 after step k-1 (for k = 0: the renderer's pipeline at guidance
scale 1). SRD with `switch="step", switch_step=k, render_guidance="off"` must equal it bit for bit.

Batched hosts (CogVideoX: one call on [uncond, cond]) keep their doubled batch after the callback
(`do_classifier_free_guidance` is a local there), and a batch of two rounds differently from a
batch of one in the last bit. So their reference also puts the conditional prompt in both halves
and evaluates the renderer per half (`PerHalf`): `uncond + 1 * (cond - uncond)` is then `cond`
exactly, computed at the batch SRD's renderer computes it.

A new pipeline joins by one line in CASES.
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
from srd_plugin.testing import (
    CogVideoXSize,
    tiny_call_kwargs,
    tiny_cogvideox_call_kwargs,
    tiny_cogvideox_pipeline,
    tiny_cogvideox_transformer,
    tiny_wan_pipeline,
    tiny_wan_renderer,
    tiny_wan_transformer,
)

STEPS = 6


class PerHalf(torch.nn.Module):
    """The renderer called once per half of a CFG batch (the reference for batched hosts)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def cache_context(self, name: str) -> Any:
        return contextlib.nullcontext()

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


@dataclass(frozen=True)
class Case:
    """One host: how to build it (fresh sketcher each time, same weights), its renderer, its call."""

    name: str
    pipeline: Callable[[Any], Any]  # transformer -> pipeline
    sketcher: Callable[[], torch.nn.Module]
    renderer: Callable[[], torch.nn.Module]
    call: Callable[..., dict[str, Any]]  # (steps, **overrides) -> call kwargs
    batched: bool


def _wan_pipeline(transformer):
    pipe = tiny_wan_pipeline(transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: a rotary renderer with the sketcher's head dim and sample size: the pipeline's rotary tables
#: (made from the sketcher's config before the loop) are then the renderer's own
COG_ROTARY_RENDERER = CogVideoXSize(num_layers=1, num_attention_heads=2, attention_head_dim=16, rotary=True)

CASES = [
    Case("wan", _wan_pipeline, lambda: tiny_wan_transformer(seed=0), tiny_wan_renderer, tiny_call_kwargs, False),
    Case(
        "cogvideox",
        lambda transformer: tiny_cogvideox_pipeline(transformer=transformer),
        lambda: tiny_cogvideox_transformer(seed=0),
        lambda: tiny_cogvideox_transformer(COG_ROTARY_RENDERER, seed=1),
        tiny_cogvideox_call_kwargs,
        True,
    ),
]


def reference(case: Case, renderer: torch.nn.Module, k: int) -> torch.Tensor:
    """The plain pipeline: sketcher with guidance for k steps, then the renderer at guidance scale 1."""
    if k == 0:
        return case.pipeline(renderer)(**case.call(STEPS, guidance_scale=1.0)).frames

    def swap(pipe, i, t, tensors):
        if i != k - 1:
            return {}
        pipe._guidance_scale = 1.0
        if not case.batched:
            pipe.transformer = renderer
            return {}
        pipe.transformer = PerHalf(renderer)
        _, cond = tensors["prompt_embeds"].chunk(2)
        return {"prompt_embeds": torch.cat([cond, cond])}

    pipe = case.pipeline(case.sketcher())
    return pipe(
        **case.call(STEPS),
        callback_on_step_end=swap,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
    ).frames


@pytest.mark.parametrize("k", [0, 2, 4, STEPS])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_guidance_free_rendering_equals_the_host_at_guidance_scale_one(case, k):
    renderer = case.renderer()
    expected = reference(case, renderer, k)
    pipe = case.pipeline(case.sketcher())
    srd.enable(pipe, renderer, switch="step", switch_step=k, render_guidance="off")
    got = pipe(**case.call(STEPS)).frames
    trace = srd.last_trace(pipe)
    assert torch.equal(got, expected)
    assert trace.roles == ["sketch"] * k + ["render"] * (STEPS - k)
    assert trace.guidance_calls_saved == STEPS - k  # one uncond call (or one batch half) per render step


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_host_guidance_is_different_and_the_sketch_phase_untouched(case):
    """render_guidance="host" keeps the guided renderer (so "off" really changes the render steps)."""
    renderer = case.renderer()
    pipe = case.pipeline(case.sketcher())
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    host = pipe(**case.call(STEPS)).frames
    assert srd.last_trace(pipe).guidance_calls_saved == 0
    srd.enable(pipe, renderer, switch="step", switch_step=2, render_guidance="off")
    assert not torch.equal(pipe(**case.call(STEPS)).frames, host)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_nothing_changes_when_the_host_runs_without_guidance(case):
    renderer = case.renderer()
    pipe = case.pipeline(case.sketcher())
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    host = pipe(**case.call(STEPS, guidance_scale=1.0)).frames
    srd.enable(pipe, renderer, switch="step", switch_step=2, render_guidance="off")
    assert torch.equal(pipe(**case.call(STEPS, guidance_scale=1.0)).frames, host)
    assert srd.last_trace(pipe).guidance_calls_saved == 0


def test_the_renderer_runs_once_per_render_step_on_a_two_call_host():
    renderer = tiny_wan_renderer()
    calls = []
    renderer.register_forward_pre_hook(lambda module, args: calls.append(1))
    pipe = _wan_pipeline(tiny_wan_transformer(seed=0))
    srd.enable(pipe, renderer, switch="step", switch_step=2, render_guidance="off")
    pipe(**tiny_call_kwargs(STEPS))
    assert len(calls) == STEPS - 2


def test_the_renderer_sees_the_conditional_half_on_a_batched_host():
    case = CASES[1]
    renderer = case.renderer()
    batches = []
    renderer.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    pipe = case.pipeline(case.sketcher())
    srd.enable(pipe, renderer, switch="step", switch_step=2, render_guidance="off")
    pipe(**case.call(STEPS))
    assert batches == [1] * (STEPS - 2)


def test_an_adapter_without_a_cfg_layout_is_refused_before_any_change(monkeypatch):
    pipe = _wan_pipeline(tiny_wan_transformer(seed=0))
    monkeypatch.setattr(wan.ADAPTER, "cfg_layout", None)
    with pytest.raises(ValueError, match="cfg_layout"):
        srd.enable(pipe, tiny_wan_renderer(), render_guidance="off")
    assert not srd.is_enabled(pipe)


def test_a_layout_whose_order_does_not_match_the_host_says_so(monkeypatch):
    pipe = _wan_pipeline(tiny_wan_transformer(seed=0))
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
