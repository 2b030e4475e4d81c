"""offload_sketcher / prefetch_renderer on the CPU: every weight movement in order, outputs unchanged.

The plugins only move weights when the pipeline computes somewhere other than the CPU. The
`accelerator` fixture makes them see `torch.device("cpu", 0)` as the execution device (see
`srd_plugin.hooks.placement`): every move then really happens through `module.to(...)` and is
recorded, while the tensors stay on the CPU. What this proves: which module is moved where, and
when, in every case below, and that the outputs are bit for bit those without the option. What it
cannot prove (the GPU benchmark does): that memory is actually freed, and that the prefetch overlaps.
"""

from __future__ import annotations

import pytest
import torch
from movements import MovementRecorder, register, unregister

import srd_plugin as srd
from srd_plugin.hooks import memory, placement
from srd_plugin.testing import tiny_call_kwargs

ACCELERATOR = torch.device("cpu", 0)
RATIO = dict(switch="ratio", switch_ratio=0.4)  # 5 steps: 2 sketch, 3 render; 1 step: renders from step 0

SKETCH_5 = [("step", 0, "sketch"), ("step", 1, "sketch")]
RENDER_5 = [("step", 2, "render"), ("step", 3, "render"), ("step", 4, "render")]


def generate(pipe, steps=5):
    return pipe(**tiny_call_kwargs(steps)).frames


@pytest.fixture
def accelerator(monkeypatch):
    monkeypatch.setattr(placement, "execution_device", lambda session: ACCELERATOR)


@pytest.fixture
def moves(monkeypatch, pipe, renderer):
    recorder = MovementRecorder(monkeypatch)
    recorder.watch("sketcher", pipe.transformer)
    recorder.watch("renderer", renderer)
    register(recorder)
    yield recorder
    unregister()


def reference(pipe, renderer, steps, **config):
    """The same calls with SRD enabled without any memory option."""
    srd.enable(pipe, renderer, **config)
    outputs = [generate(pipe, n) for n in steps]
    srd.disable(pipe)
    return outputs


def assert_equal(outputs, expected):
    assert len(outputs) == len(expected)
    for output, want in zip(outputs, expected):
        assert torch.equal(output, want)


def test_sketcher_leaves_at_the_switch_and_returns_only_for_a_call_that_sketches(pipe, renderer, accelerator, moves):
    expected = reference(pipe, renderer, (5, 1, 5), **RATIO)
    moves.take()
    srd.enable(pipe, renderer, **RATIO, offload_sketcher="after_switch")
    assert_equal([generate(pipe, n) for n in (5, 1, 5)], expected)
    srd.disable(pipe)
    assert moves.take() == [
        ("enable",),
        # call 1: the sketcher goes to the CPU at the switch, before the first render step
        ("call",), *SKETCH_5, ("switch", 2), ("sketcher", "cpu"), *RENDER_5, ("end",),
        # call 2 renders from step 0: the sketcher stays away; the renderer is kept on the accelerator
        ("call",), ("renderer", "cpu:0"), ("switch", 0), ("step", 0, "render"), ("end",),
        # call 3 sketches: the sketcher comes back at its start
        ("call",), ("renderer", "cpu:0"), ("sketcher", "cpu:0"), *SKETCH_5,
        ("switch", 2), ("sketcher", "cpu"), *RENDER_5, ("end",),
        # disable leaves the pipeline as it was: the sketcher back on the accelerator
        ("sketcher", "cpu:0"),
    ]  # fmt: skip


def test_prefetch_keeps_the_renderer_on_the_cpu_between_calls(pipe, renderer, accelerator, moves):
    expected = reference(pipe, renderer, (5, 1), **RATIO)
    moves.take()
    srd.enable(pipe, renderer, **RATIO, prefetch_renderer=True)
    assert_equal([generate(pipe, n) for n in (5, 1)], expected)
    assert moves.take() == [
        ("enable",),
        # copied in at the call's start (on CUDA: asynchronously, overlapping the sketch steps), home at its end
        ("call",), ("renderer", "cpu:0"), *SKETCH_5, ("switch", 2), *RENDER_5, ("end",), ("renderer", "cpu"),
        ("call",), ("renderer", "cpu:0"), ("switch", 0), ("step", 0, "render"), ("end",), ("renderer", "cpu"),
    ]  # fmt: skip


def test_prefetch_and_offload_together(pipe, renderer, accelerator, moves):
    expected = reference(pipe, renderer, (5, 5), **RATIO)
    moves.take()
    srd.enable(pipe, renderer, **RATIO, prefetch_renderer=True, offload_sketcher="after_switch")
    assert_equal([generate(pipe, n) for n in (5, 5)], expected)
    call = [*SKETCH_5, ("switch", 2), ("sketcher", "cpu"), *RENDER_5, ("end",), ("renderer", "cpu")]
    assert moves.take() == [
        ("enable",),
        ("call",), ("renderer", "cpu:0"), *call,
        ("call",), ("renderer", "cpu:0"), ("sketcher", "cpu:0"), *call,
    ]  # fmt: skip


def test_renderer_that_cannot_be_moved_in_leaves_the_call_to_the_sketcher(pipe, renderer, accelerator, moves):
    plain = generate(pipe)
    moves.take()
    srd.enable(pipe, renderer, **RATIO, prefetch_renderer=True, offload_sketcher="after_switch")
    moves.fail("renderer", "cpu:0")
    with pytest.warns(UserWarning, match="moving the renderer.*out of memory.*sketcher takes over from step 0"):
        output = generate(pipe)
    assert torch.equal(output, plain)
    trace = srd.last_trace(pipe)
    assert trace.roles == ["sketch"] * 5 and trace.switch_step is None and trace.fallback_step == 0
    assert moves.take() == [
        ("enable",),
        # the failed copy is undone (renderer whole, on the CPU); the sketcher never leaves
        ("call",), ("renderer", "cpu:0", "failed"), ("renderer", "cpu"), ("fallback", 0),
        *SKETCH_5, *[("step", i, "sketch") for i in (2, 3, 4)], ("end",),
    ]  # fmt: skip


def test_sketcher_that_cannot_be_offloaded_finishes_the_call(pipe, renderer, accelerator, moves):
    plain = generate(pipe)
    moves.take()
    srd.enable(pipe, renderer, **RATIO, offload_sketcher="after_switch")
    moves.fail("sketcher", "cpu")
    with pytest.warns(UserWarning, match="switching to the renderer failed.*sketcher takes over from step 2"):
        output = generate(pipe)
    assert torch.equal(output, plain)
    trace = srd.last_trace(pipe)
    assert trace.roles == ["sketch"] * 5 and trace.switch_step is None and trace.fallback_step == 2
    assert moves.take() == [
        ("enable",),
        ("call",), *SKETCH_5, ("switch", 2), ("sketcher", "cpu", "failed"),
        ("fallback", 2), ("sketcher", "cpu:0"), *[("step", i, "sketch") for i in (2, 3, 4)], ("end",),
    ]  # fmt: skip


def test_renderer_nan_brings_the_offloaded_sketcher_back(pipe, renderer, accelerator, moves):
    plain = generate(pipe)
    moves.take()
    renderer.register_forward_hook(lambda m, a, k, out: (torch.full_like(out[0], float("nan")),), with_kwargs=True)
    srd.enable(pipe, renderer, **RATIO, offload_sketcher="after_switch", prefetch_renderer=True)
    with pytest.warns(UserWarning, match="NaN or Inf at step 2"):
        output = generate(pipe)
    assert torch.equal(output, plain)
    assert moves.take() == [
        ("enable",),
        ("call",), ("renderer", "cpu:0"), *SKETCH_5, ("switch", 2), ("sketcher", "cpu"),
        # the renderer is released before the sketcher comes back
        ("fallback", 2), ("renderer", "cpu"), ("sketcher", "cpu:0"),
        *[("step", i, "sketch") for i in (2, 3, 4)], ("end",),
    ]  # fmt: skip


def test_nothing_moves_when_the_pipeline_computes_on_the_cpu(pipe, renderer, moves):
    expected = reference(pipe, renderer, (5,), **RATIO)
    moves.take()
    srd.enable(pipe, renderer, **RATIO, offload_sketcher="after_switch", prefetch_renderer=True)
    assert_equal([generate(pipe)], expected)
    srd.disable(pipe)
    assert moves.take() == [("enable",), ("call",), *SKETCH_5, ("switch", 2), *RENDER_5, ("end",)]


# -- settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, words",
    [("offload_sketcher", "always", "choose one of never, after_switch"), ("prefetch_renderer", 1, "True or False")],
)
def test_bad_memory_settings(field, value, words):
    with pytest.raises(ValueError, match=f"SRDConfig.{field}=.*{words}"):
        srd.SRDConfig(**{field: value})


def test_prefetch_with_move_renderer_false_is_refused(pipe, renderer):
    with pytest.raises(ValueError, match="prefetch_renderer=True moves the renderer.*move_renderer=False forbids"):
        srd.enable(pipe, renderer, prefetch_renderer=True, move_renderer=False)
    assert not srd.is_enabled(pipe)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(offload_sketcher="after_switch"), "the renderer is the sketcher itself"),
        (dict(prefetch_renderer=True), "nothing to prefetch"),
    ],
)
def test_memory_options_need_a_separate_renderer(pipe, overrides, words):
    with pytest.warns(UserWarning, match="renderer is the sketcher itself"):
        with pytest.raises(ValueError, match=words):
            srd.enable(pipe, pipe.transformer, **overrides)
    assert not srd.is_enabled(pipe)


# -- peak memory in the trace -------------------------------------------------------------------
def test_peak_memory_is_recorded_per_step_and_summarised_per_phase(pipe, renderer, monkeypatch):
    """A stand-in for the CUDA allocator statistics: each model's forward raises the peak to its own figure."""
    gib = 1024**3
    peak = {"bytes": 0}
    monkeypatch.setattr(placement, "execution_device", lambda session: torch.device("cuda", 0))
    monkeypatch.setattr(memory, "read_peak", lambda device: (peak["bytes"], peak["bytes"] + gib))
    monkeypatch.setattr(memory, "reset_peak", lambda device: peak.update(bytes=0))

    def raise_peak(figure):
        return lambda module, args: peak.update(bytes=max(peak["bytes"], figure))

    pipe.transformer.proj_out.register_forward_pre_hook(raise_peak(30 * gib))
    renderer.proj_out.register_forward_pre_hook(raise_peak(3 * gib))
    srd.enable(pipe, renderer, **RATIO)
    generate(pipe)
    trace = srd.last_trace(pipe)
    assert trace.memory_allocated == [30 * gib] * 2 + [3 * gib] * 3
    assert trace.memory_reserved == [31 * gib] * 2 + [4 * gib] * 3
    assert trace.peak_memory_of("sketch") == (30 * gib, 31 * gib)
    assert "peak memory GiB (allocated / reserved): sketch 30.00 / 31.00, render 3.00 / 4.00" in trace.summary()
    assert srd.RunTrace.from_json(trace.to_json()) == trace


def test_no_memory_figures_without_cuda_and_old_traces_still_load(pipe, renderer):
    srd.enable(pipe, renderer, **RATIO)
    generate(pipe)
    trace = srd.last_trace(pipe)
    assert trace.memory_allocated == [] and trace.memory_reserved == []
    assert "peak memory" not in trace.summary()
    old = trace.to_dict()
    del old["memory_allocated"], old["memory_reserved"]
    assert srd.RunTrace.from_dict(old).memory_allocated == []
