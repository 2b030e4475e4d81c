"""Reliability (issue 9): bad input, faults in the middle of a generation, concurrency, reuse.

Every item of docs/reliability.md has its test here. Faults are injected with forward hooks,
monkeypatched methods and throw-away plugins; oracles are the untouched pipeline ("disabled
equals never enabled"), the output of the same setup before the fault ("the next call
works"), plain diffusers runs scripted by hand, and, for the switching policies, their
definitions written out again in the tests (hypothesis drives them over arbitrary input).
"""

from __future__ import annotations

import copy
import json
import math
import threading
from fractions import Fraction
from pathlib import Path

import pluggy
import pytest
import torch
from diffusers import CogVideoXTransformer3DModel, UniPCMultistepScheduler, WanPipeline
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from hypothesis import given, settings
from hypothesis import strategies as st

import srd_plugin as srd
from srd_plugin import IncompatibleRendererError, RendererFailureError, UnsupportedPipelineError, hookspecs
from srd_plugin.adapters.base import Adapter, all_finite
from srd_plugin.config import SRDConfig
from srd_plugin.hookspecs import hookimpl
from srd_plugin.manager import get_plugin_manager
from srd_plugin.runtime import Session, last_trace_of, session_of
from srd_plugin.switching import RENDER, SKETCH, AdaptivePolicy, make_policy
from srd_plugin.testing import tiny_call_kwargs, tiny_wan_pipeline, tiny_wan_renderer, tiny_wan_transformer

STEPS = 6


def generate(pipe, steps=STEPS, **overrides):
    return pipe(**tiny_call_kwargs(steps, **overrides)).frames


def new_pipe(seed=0, **kwargs):
    pipeline = tiny_wan_pipeline(seed=seed, **kwargs)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def assert_untouched(pipe):
    """Nothing of SRD is left on the pipeline's instances (the structural half of 'restored')."""
    assert not srd.is_enabled(pipe)
    assert "forward" not in pipe.transformer.__dict__
    registry = getattr(pipe.transformer, "_diffusers_hook", None)
    assert registry is None or not registry.hooks
    assert not ({"step", "set_timesteps"} & pipe.scheduler.__dict__.keys())


def raise_on_call(error, at=0):
    """A forward pre-hook that raises `error` at the `at`-th call of its module (0-based), once."""
    calls = []

    def hook(module, args):
        calls.append(1)
        if len(calls) == at + 1:
            raise error

    return hook


def replace_output(value, calls_to_break):
    """A forward hook that fills the output with `value` at the given calls of its module (0-based)."""
    calls = []

    def hook(module, args, kwargs, output):
        calls.append(1)
        if len(calls) - 1 in calls_to_break:
            return (torch.full_like(output[0], value),) + tuple(output[1:])
        return output

    return hook


def every_call(n=10_000):
    return set(range(n))


# == bad input: refused by enable, before any work ===================================================
@pytest.mark.parametrize(
    "renderer_arg, error, words",
    [
        (None, ValueError, "renderer is None: pass the small model"),
        ("/no/such/folder/renderer", ValueError, "does not exist; pass an existing folder"),
        ("./relative/missing", ValueError, "does not exist"),
        (42, TypeError, "torch.nn.Module, a path or a hub repo id"),
    ],
)
def test_bad_renderer_arguments(pipe, renderer_arg, error, words):
    with pytest.raises(error, match=words):
        srd.enable(pipe, renderer_arg)
    assert_untouched(pipe)


def test_folder_without_model(pipe, tmp_path):
    with pytest.raises(ValueError, match="neither model_index.json.*nor config.json"):
        srd.enable(pipe, tmp_path)
    assert_untouched(pipe)


def test_unsupported_pipeline_lists_supported():
    with pytest.raises(UnsupportedPipelineError, match="no adapter for object.*Supported pipelines: ") as info:
        srd.enable(object(), tiny_wan_renderer())
    assert isinstance(info.value, TypeError)
    assert {"WanPipeline", "CogVideoXPipeline"} <= set(info.value.supported)


def test_wan22_pipeline_without_its_high_noise_expert_is_refused(pipe, renderer):
    """Wan2.2's two experts are served (tests/test_wan_family.py); one holding only `transformer_2` is not."""
    moe = WanPipeline(**{**pipe.components, "transformer": None, "transformer_2": renderer}, boundary_ratio=0.875)
    with pytest.raises(UnsupportedPipelineError, match="no transformer .only transformer_2.*high-noise expert"):
        srd.enable(moe, tiny_wan_renderer(seed=3))


def test_renderer_of_another_shape_names_every_mismatch(pipe):
    bad = tiny_wan_transformer(in_channels=8, out_channels=8, text_dim=16, patch_size=(1, 4, 4))
    with pytest.raises(IncompatibleRendererError) as info:
        srd.enable(pipe, bad)
    assert isinstance(info.value, ValueError)
    assert [m.split(":")[0] for m in info.value.mismatches] == [
        "latent channels (in_channels)",
        "output channels (out_channels)",
        "patch size (patch_size)",
        "text embedding width (text_dim)",
    ]
    assert "patch size (patch_size): sketcher has (1, 2, 2), renderer has (1, 4, 4)" in str(info.value)
    assert_untouched(pipe)


@pytest.mark.parametrize("family", ["linear", "cogvideox"])
def test_renderer_of_another_family(pipe, family):
    other = (
        torch.nn.Linear(4, 4)
        if family == "linear"
        else CogVideoXTransformer3DModel(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=4,
            num_layers=1,
            text_embed_dim=32,
            time_embed_dim=16,
            sample_width=8,
            sample_height=8,
            sample_frames=9,
        )
    )
    expected = f"model family.*a {type(other).__name__}; pass a WanTransformer3DModel \\(e.g. Wan-AI"
    with pytest.raises(IncompatibleRendererError, match=expected):
        srd.enable(pipe, other)
    assert_untouched(pipe)


def test_renderer_on_another_device_refused_when_moving_is_disallowed(pipe):
    with torch.device("meta"):
        elsewhere = tiny_wan_renderer()
    with pytest.raises(IncompatibleRendererError, match="device: the sketcher is on cpu, the renderer on meta.*"):
        srd.enable(pipe, elsewhere, move_renderer=False)
    assert_untouched(pipe)


def test_dtype_conversion_refused_when_moving_is_disallowed(pipe, renderer):
    with pytest.raises(IncompatibleRendererError, match="dtype: renderer_dtype='bfloat16' asks for a conversion"):
        srd.enable(pipe, renderer, move_renderer=False, renderer_dtype="bfloat16")
    assert renderer.dtype == torch.float32  # not converted
    assert_untouched(pipe)
    # a renderer already in another dtype is fine without moving: inputs and outputs are cast at the border
    renderer.to(torch.bfloat16)
    srd.enable(pipe, renderer, move_renderer=False, switch="step", switch_step=3)
    out = generate(pipe)
    assert renderer.dtype == torch.bfloat16 and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_renderer_is_the_sketcher_warns_and_equals_plain(pipe):
    plain = generate(pipe)
    with pytest.warns(UserWarning, match="renderer is the sketcher itself.*cannot speed anything up"):
        srd.enable(pipe, pipe.transformer, switch="step", switch_step=3)
    assert torch.equal(generate(pipe), plain)
    assert srd.last_trace(pipe).roles == ["sketch"] * 3 + ["render"] * 3


@pytest.mark.parametrize(
    "overrides, error, words",
    [
        (dict(threshold=5), ValueError, "SRDConfig.threshold=5 is invalid: a number in"),
        (dict(min_sketch_steps=8, max_sketch_steps=4), ValueError, "max_sketch_steps=4.*>= min_sketch_steps \\(8\\)"),
        (dict(switch="step"), ValueError, "switch='step' needs switch_step"),
        (dict(treshold=0.1), ValueError, "unknown SRDConfig field.*treshold"),
        (dict(config={"switch": "step"}), TypeError, "config must be an SRDConfig"),
    ],
)
def test_bad_config_refused_and_previous_setup_kept(pipe, renderer, overrides, error, words):
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    session = session_of(pipe)
    with pytest.raises(error, match=words):
        srd.enable(pipe, renderer, **overrides)
    assert session_of(pipe) is session
    generate(pipe, steps=3)
    assert srd.last_trace(pipe).roles == ["sketch", "sketch", "render"]
    srd.disable(pipe)
    with pytest.raises(error, match=words):
        srd.enable(pipe, renderer, **overrides)
    assert_untouched(pipe)


# -- bad input found at call time: before any transformer call ----------------------------------
def count_calls(module):
    calls = []
    module.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls


def test_switch_step_beyond_steps_fails_at_call_start(pipe, renderer):
    sketcher_calls, renderer_calls = count_calls(pipe.transformer), count_calls(renderer)
    srd.enable(pipe, renderer, switch="step", switch_step=STEPS + 1)
    with pytest.raises(ValueError, match="switch_step=7 is beyond the 6 denoising steps of this call; use a value"):
        generate(pipe)
    assert sketcher_calls == [] and renderer_calls == []
    assert srd.is_enabled(pipe) and session_of(pipe).active_run is None
    generate(pipe, steps=STEPS + 1)  # the same setup serves a call that has the steps
    assert srd.last_trace(pipe).roles == ["sketch"] * (STEPS + 1)


def test_adaptive_serves_a_non_flow_scheduler(pipe, renderer):
    """x0 comes from the scheduler's own parametrization (epsilon here), so the adaptive policy serves it."""
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="epsilon")
    srd.enable(pipe, renderer, min_sketch_steps=2)
    generate(pipe)
    trace = srd.last_trace(pipe)
    assert trace.completed and trace.distances[1] is not None


@pytest.mark.parametrize(
    "overrides, expected_sketch_steps",
    [
        (dict(switch="step", switch_step=0), 0),
        (dict(switch="step", switch_step=3), 3),
        (dict(switch="ratio", switch_ratio=0.0), 0),
        (dict(switch="ratio", switch_ratio=1.0), 3),
        (dict(switch="boundary", boundary_ratio=0.0), 3),  # t >= 0 always: sketch only
        (dict(switch="boundary", boundary_ratio=1.0), 0),  # t >= 1000 never: render only
        (dict(min_sketch_steps=5), 3),  # adaptive with fewer steps than its minimum: sketch only
    ],
)
def test_policy_edges_in_a_real_call(pipe, renderer, overrides, expected_sketch_steps):
    srd.enable(pipe, renderer, **overrides)
    generate(pipe, steps=3)
    trace = srd.last_trace(pipe)
    assert trace.completed
    assert trace.roles == ["sketch"] * expected_sketch_steps + ["render"] * (3 - expected_sketch_steps)
    assert trace.switch_step == (expected_sketch_steps if expected_sketch_steps < 3 else None)


# == faults in a generation ==========================================================================
def test_renderer_exception_propagates_with_context_and_next_call_works(pipe, renderer):
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    expected = generate(pipe)
    handle = renderer.register_forward_pre_hook(raise_on_call(RuntimeError("renderer broke")))
    with pytest.raises(RuntimeError, match="renderer broke") as info:
        generate(pipe)
    assert any(
        "raised by the renderer (WanTransformer3DModel) at step 3; the pipeline stays enabled" in note
        for note in info.value.__notes__
    )
    trace = srd.last_trace(pipe)
    assert not trace.completed and trace.events == ["aborted at step 3: RuntimeError: renderer broke"]
    assert trace.roles == ["sketch"] * 3
    assert srd.is_enabled(pipe) and session_of(pipe).active_run is None
    handle.remove()
    assert torch.equal(generate(pipe), expected)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_renderer_nan_or_inf_falls_back_to_the_sketcher(pipe, renderer, value):
    plain = generate(pipe)
    renderer.register_forward_hook(replace_output(value, every_call()), with_kwargs=True)
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    with pytest.warns(UserWarning, match="renderer returned NaN or Inf at step 3; the sketcher takes over from step 3"):
        out = generate(pipe)
    trace = srd.last_trace(pipe)
    assert trace.completed and trace.switch_step == 3 and trace.fallback_step == 3  # switched, then fell back
    assert trace.roles == ["sketch"] * STEPS
    assert trace.events == ["the renderer returned NaN or Inf at step 3: the sketcher took over from step 3"]
    assert torch.equal(out, plain)  # the sketcher did every step


def test_renderer_nan_raises_when_asked(pipe, renderer):
    renderer.register_forward_hook(replace_output(float("nan"), {0}), with_kwargs=True)
    srd.enable(pipe, renderer, switch="step", switch_step=3, on_renderer_failure="raise")
    with pytest.raises(RendererFailureError, match="NaN or Inf at step 3; set on_renderer_failure='fallback'"):
        generate(pipe)
    trace = srd.last_trace(pipe)
    assert not trace.completed and "NaN or Inf at step 3" in trace.events[0]
    assert srd.is_enabled(pipe) and session_of(pipe).active_run is None
    generate(pipe)  # the hook broke only the first renderer call: the next call renders normally
    assert srd.last_trace(pipe).roles == ["sketch"] * 3 + ["render"] * 3


def test_renderer_nan_in_the_uncond_call_is_recorded_as_a_mixed_step(pipe, renderer):
    """Step 3's cond call rendered fine, its uncond call returned NaN.

    The host already holds the cond output, so step 3 cannot be one model any more; the
    oracle is a plain diffusers run scripted to do exactly that: the renderer for the cond
    call of step 3 (the sketcher's 7th call), the sketcher everywhere else.
    """
    sketcher = pipe.transformer

    def renderer_for_call_6(module, args, kwargs, output, calls=[]):  # noqa: B006 - a per-test counter
        calls.append(1)
        return renderer(*args, **kwargs) if len(calls) == 7 else output

    handle = sketcher.register_forward_hook(renderer_for_call_6, with_kwargs=True)
    expected = generate(pipe)
    handle.remove()

    renderer.register_forward_hook(replace_output(float("nan"), {1}), with_kwargs=True)
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    with pytest.warns(UserWarning, match="at step 3; an earlier call of this step used the renderer's output"):
        out = generate(pipe)
    assert torch.equal(out, expected)
    trace = srd.last_trace(pipe)
    assert trace.roles == ["sketch"] * 3 + ["mixed"] + ["sketch"] * 2
    assert trace.switch_step == 3 and trace.fallback_step == 3 and trace.completed
    assert "mixed" in trace.summary()


def test_nan_from_the_sketcher_is_not_blamed_on_the_renderer(pipe, renderer):
    """The sketcher's own output turns NaN at step 1: the adaptive metric is undefined from there
    (None in the trace, which stays strict JSON), max_sketch_steps switches, the renderer gets NaN
    latents, and the fallback message says the fault is upstream."""
    pipe.transformer.register_forward_hook(replace_output(float("nan"), set(range(2, 100))), with_kwargs=True)
    srd.enable(pipe, renderer, min_sketch_steps=2, max_sketch_steps=3)
    with pytest.warns(UserWarning, match="at step 3 from inputs that already held NaN or Inf \\(the fault is upstream"):
        generate(pipe)
    trace = srd.last_trace(pipe)
    assert trace.distances[:3] == [None, None, None] and trace.metrics[:3] == [None, None, None]
    assert trace.fallback_step == 3 and trace.roles == ["sketch"] * STEPS
    json.dumps(trace.to_dict(), allow_nan=False)


OOM = torch.OutOfMemoryError("CUDA out of memory (injected)")


def fail_to_move(*args, **kwargs):
    raise OOM


@pytest.mark.parametrize("mode", ["fallback", "raise"])
def test_renderer_move_failure(pipe, renderer, monkeypatch, mode):
    plain = generate(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=2, on_renderer_failure=mode)
    renderer.to("meta")  # the renderer now lives elsewhere: the next call must move it
    monkeypatch.setattr(renderer, "to", fail_to_move)
    if mode == "raise":
        with pytest.raises(RendererFailureError, match="moving the renderer.*out of memory"):
            generate(pipe)
        assert not srd.last_trace(pipe).completed and session_of(pipe).active_run is None
        return
    with pytest.warns(UserWarning, match="moving the renderer.*out of memory.*sketcher takes over from step 0"):
        out = generate(pipe)
    trace = srd.last_trace(pipe)
    assert trace.roles == ["sketch"] * STEPS and trace.switch_step is None and trace.fallback_step == 0
    assert torch.equal(out, plain)


def test_renderer_move_failing_half_way_is_undone(pipe, renderer, monkeypatch):
    """A move that fails part-way must not leave weights on the target device: it is sent back.

    A CPU-only machine has no second real device to fail half-way on, so the recorder
    fails the first move (as an OOM would, mid-copy) and lets the move back through."""
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    renderer.to("meta")
    real_to = renderer.to
    moves = []

    def to(device, *args, **kwargs):
        moves.append(str(device))
        if len(moves) == 1:
            raise OOM
        return real_to(device, *args, **kwargs)

    monkeypatch.setattr(renderer, "to", to)
    with pytest.warns(UserWarning, match="out of memory"):
        generate(pipe)
    assert moves == ["cpu", "meta"]


def test_exception_in_scheduler_step_leaves_the_pipeline_usable(pipe, renderer, monkeypatch):
    srd.enable(pipe, renderer, min_sketch_steps=2)
    expected = generate(pipe)
    expected_trace = srd.last_trace(pipe)
    real = pipe.scheduler.convert_model_output
    calls = []

    def convert_model_output(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("scheduler broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "convert_model_output", convert_model_output)
    with pytest.raises(RuntimeError, match="scheduler broke"):
        generate(pipe)
    trace = srd.last_trace(pipe)
    assert not trace.completed and trace.events == ["aborted at step 3: RuntimeError: scheduler broke"]
    assert len(trace.roles) == 3 and session_of(pipe).active_run is None
    monkeypatch.undo()
    assert torch.equal(generate(pipe), expected)
    assert srd.last_trace(pipe).roles == expected_trace.roles


# -- KeyboardInterrupt ------------------------------------------------------------------------------
def interrupt_in(pipe, renderer, where):
    """Install a KeyboardInterrupt at step 4 (render phase, switch at 2), in the given place."""
    if where == "renderer":  # the renderer's 5th call: step 4, cond
        return renderer.register_forward_pre_hook(raise_on_call(KeyboardInterrupt, at=4))
    if where == "sketcher":  # inside the sketcher's forward at step 1 (its 3rd call)
        return pipe.transformer.blocks[0].register_forward_pre_hook(raise_on_call(KeyboardInterrupt, at=2))
    return None


INTERRUPT_PLACES = ["renderer", "sketcher", "callback"]
INTERRUPT_EVENTS = {
    "renderer": "aborted at step 4: KeyboardInterrupt: ",
    "sketcher": "aborted at step 1: KeyboardInterrupt: ",
    # raised outside SRD's code: the run is closed when the next call starts (or at disable)
    "callback": "a new call started before this one finished",
}


def interrupting_call(pipe, where):
    def callback(p, i, t, kwargs):
        if i == 4:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        generate(pipe, callback_on_step_end=callback if where == "callback" else None)


@pytest.mark.parametrize("where", INTERRUPT_PLACES)
def test_interrupt_then_disable_restores_exactly(pipe, renderer, where):
    plain = generate(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    interrupt_in(pipe, renderer, where)
    interrupting_call(pipe, where)
    assert not srd.last_trace(pipe).completed
    srd.disable(pipe)
    assert_untouched(pipe)
    assert torch.equal(generate(pipe), plain)


@pytest.mark.parametrize("where", INTERRUPT_PLACES)
def test_interrupt_then_the_next_call_works_while_enabled(pipe, renderer, where):
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    expected = generate(pipe)
    interrupt_in(pipe, renderer, where)
    interrupting_call(pipe, where)
    interrupted = srd.last_trace(pipe)
    assert not interrupted.completed
    assert torch.equal(generate(pipe), expected)
    trace = srd.last_trace(pipe)
    assert trace is not interrupted and trace.completed and trace.roles == ["sketch"] * 2 + ["render"] * 4
    assert interrupted.events == [INTERRUPT_EVENTS[where]]


def test_the_pipelines_own_interrupt_flag(pipe, renderer):
    """diffusers' `pipe._interrupt` skips the remaining steps: the trace says the call stopped early."""
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    expected = generate(pipe)

    def stop(p, i, t, kwargs):
        p._interrupt = i == 3
        return {}

    generate(pipe, callback_on_step_end=stop)
    stopped = srd.last_trace(pipe)
    assert not stopped.completed and len(stopped.roles) == 4
    assert torch.equal(generate(pipe), expected)
    assert "a new call started before this one finished" in stopped.events[0]


# -- faulty plugins ---------------------------------------------------------------------------------
def faulty_plugin(hook_name, when=lambda **kwargs: True):
    """A plugin whose `hook_name` implementation raises (when `when(**hook kwargs)` is true)."""

    def broken(**kwargs):
        if when(**kwargs):
            raise RuntimeError(f"{hook_name} broke")

    signatures = {
        "srd_run_start": lambda session, run: broken(session=session, run=run),
        "srd_step_end": lambda session, run, step_index: broken(session=session, step_index=step_index),
        "srd_switch": lambda session, run, step_index: broken(session=session, step_index=step_index),
        "srd_run_end": lambda session, run: broken(session=session, run=run),
        "srd_prepare_model": lambda session, role, model: broken(session=session, role=role),
        "srd_restore_model": lambda session, role, model: broken(session=session, role=role),
    }
    return type("FaultyPlugin", (), {hook_name: staticmethod(hookimpl(signatures[hook_name]))})()


@pytest.fixture
def register():
    manager = get_plugin_manager()
    names = []

    def add(plugin):
        names.append(f"test-faulty-{len(names)}")
        manager.register(plugin, name=names[-1])

    yield add
    for name in names:
        if manager.get_plugin(name) is not None:
            manager.unregister(name=name)


@pytest.mark.parametrize("hook_name", ["srd_run_start", "srd_step_end", "srd_run_end"])
def test_a_plugin_raising_during_a_call_leaves_the_pipeline_usable(pipe, renderer, register, hook_name):
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    expected = generate(pipe)
    register(faulty_plugin(hook_name))
    with pytest.raises(RuntimeError, match=f"{hook_name} broke"):
        generate(pipe)
    assert srd.is_enabled(pipe) and session_of(pipe).active_run is None
    get_plugin_manager().unregister(name="test-faulty-0")
    assert torch.equal(generate(pipe), expected)


def test_a_plugin_failing_at_the_switch_hands_the_call_back_to_the_sketcher(pipe, renderer, register):
    """A RuntimeError in `srd_switch` (out of memory while a plugin moves the renderer in) is a
    renderer failure: the sketcher finishes the call; with on_renderer_failure="raise" it raises."""
    sketcher_only = generate(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    expected = generate(pipe)
    register(faulty_plugin("srd_switch"))
    with pytest.warns(UserWarning, match="switching to the renderer failed.*srd_switch broke"):
        assert torch.equal(generate(pipe), sketcher_only)
    trace = srd.last_trace(pipe)
    assert trace.completed and trace.switch_step is None and trace.fallback_step == 2
    srd.enable(pipe, renderer, switch="step", switch_step=2, on_renderer_failure="raise")
    with pytest.raises(RendererFailureError, match="srd_switch broke"):
        generate(pipe)
    assert srd.is_enabled(pipe) and session_of(pipe).active_run is None
    get_plugin_manager().unregister(name="test-faulty-0")
    assert torch.equal(generate(pipe), expected)


def test_a_plugin_failing_to_prepare_leaves_the_previous_setup(pipe, renderer, register):
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    previous = session_of(pipe)
    register(faulty_plugin("srd_prepare_model", when=lambda session, role: session.config.switch_step == 4))
    with pytest.raises(RuntimeError, match="srd_prepare_model broke"):
        srd.enable(pipe, renderer, switch="step", switch_step=4)
    assert session_of(pipe) is previous
    assert list(pipe.transformer._diffusers_hook.hooks) == ["srd_router"]
    generate(pipe, steps=3)
    assert srd.last_trace(pipe).roles == ["sketch", "sketch", "render"]
    srd.disable(pipe)
    with pytest.raises(RuntimeError, match="srd_prepare_model broke"):
        srd.enable(pipe, renderer, switch="step", switch_step=4)
    assert_untouched(pipe)


def test_a_plugin_failing_to_restore_cannot_block_disable(pipe, renderer, register):
    plain = generate(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    register(faulty_plugin("srd_restore_model"))
    with pytest.raises(RuntimeError, match="srd_restore_model broke"):
        srd.disable(pipe)
    assert_untouched(pipe)
    assert torch.equal(generate(pipe), plain)


# == concurrency and reuse ===========================================================================
def test_enable_twice_and_disable_twice(pipe, renderer):
    plain = generate(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    once = generate(pipe)
    assert srd.enable(pipe, renderer, switch="step", switch_step=2) is pipe
    assert list(pipe.transformer._diffusers_hook.hooks) == ["srd_router"]
    assert torch.equal(generate(pipe), once)
    srd.enable(pipe, renderer, switch="step", switch_step=4)  # enabling again replaces the setup
    generate(pipe)
    assert srd.last_trace(pipe).switch_step == 4
    assert srd.disable(pipe) is pipe
    assert srd.disable(pipe) is pipe  # idempotent
    assert_untouched(pipe)
    assert torch.equal(generate(pipe), plain)
    assert srd.disable(new_pipe()) is not None  # never enabled: nothing to do


def run_in_threads(*jobs):
    """Run the jobs at the same time (released together by a barrier); return their results."""
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def worker(index, job):
        try:
            barrier.wait()
            results[index] = job()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    return results


def step_log(log, name):
    """A step-end callback that records which pipeline stepped, to prove the threads interleaved."""

    def callback(p, i, t, kwargs):
        log.append(name)
        return {}

    return callback


def interleaved(log):
    return sum(a != b for a, b in zip(log, log[1:])) >= 2


def trace_facts(trace):
    return trace.roles, trace.switch_step, trace.metrics, trace.distances, trace.completed


def two_pipeline_check(pipes, renderers, configs):
    """Sequential runs are the oracle; the same calls in two threads must give the same bits and traces."""
    for p, r, c in zip(pipes, renderers, configs):
        srd.enable(p, r, **c)
    expected = []
    for p in pipes:
        out = generate(p)
        expected.append((out, trace_facts(srd.last_trace(p))))
    log = []

    def job(p, name):
        def run():
            results = []
            for _ in range(2):
                out = generate(p, callback_on_step_end=step_log(log, name))
                results.append((out, trace_facts(srd.last_trace(p))))
            return results

        return run

    results = run_in_threads(job(pipes[0], "a"), job(pipes[1], "b"))
    assert interleaved(log), "the two calls did not run at the same time"
    for (out, facts), runs in zip(expected, results):
        for threaded_out, threaded_facts in runs:
            assert torch.equal(threaded_out, out)
            assert threaded_facts == facts


def test_two_pipelines_in_two_threads_never_mix_state():
    pipes = [new_pipe(seed=0), new_pipe(seed=5)]
    renderers = [tiny_wan_renderer(seed=1), tiny_wan_renderer(seed=6)]
    configs = [dict(switch="step", switch_step=2), dict(min_sketch_steps=3, threshold=0.5)]
    two_pipeline_check(pipes, renderers, configs)
    assert srd.last_trace(pipes[0]).switch_step == 2
    assert srd.last_trace(pipes[1]).policy == "adaptive" and srd.last_trace(pipes[1]).metrics[2] is not None


def test_one_renderer_shared_by_two_pipelines():
    renderer = tiny_wan_renderer(seed=1)
    pipes = [new_pipe(seed=0), new_pipe(seed=5)]
    configs = [dict(switch="step", switch_step=2), dict(switch="step", switch_step=4)]
    # oracle: each pipeline with its own copy of the renderer
    own = []
    for p, c in zip(pipes, configs):
        srd.enable(p, copy.deepcopy(renderer), **c)
        own.append(generate(p))
        srd.disable(p)
    two_pipeline_check(pipes, [renderer, renderer], configs)  # shared, sequentially then in threads
    for p, out in zip(pipes, own):
        assert torch.equal(generate(p), out)
    assert session_of(pipes[0]).renderer is session_of(pipes[1]).renderer is renderer


def refill(module, source):
    """Give a module that was sent to meta its tensors back (parameters and non-persistent buffers)."""
    module.to_empty(device="cpu")
    with torch.no_grad():
        for mine, theirs in zip([*module.parameters(), *module.buffers()], [*source.parameters(), *source.buffers()]):
            mine.copy_(theirs)


def test_a_shared_renderer_is_never_moved_or_converted_under_another_pipeline(renderer):
    user = new_pipe(seed=0)
    srd.enable(user, renderer, switch="step", switch_step=2)
    expected = generate(user)
    other = new_pipe(seed=5)
    with pytest.raises(ValueError, match="renderer: it is shared with another SRD-enabled WanPipeline.*convert"):
        srd.enable(other, renderer, renderer_dtype="bfloat16")
    assert renderer.dtype == torch.float32 and not srd.is_enabled(other)
    # a call that would have to move it: `far`'s sketcher "lives" on meta (it is never called here)
    with torch.device("meta"):
        far_sketcher = tiny_wan_transformer()
    far = new_pipe(seed=7, transformer=far_sketcher)
    srd.enable(far, renderer, switch="step", switch_step=2)  # the sketcher is on meta: nothing is moved
    renderer.to("meta")
    with pytest.warns(UserWarning, match="the renderer is shared with another SRD-enabled WanPipeline on meta"):
        generate(user)  # moving it back to cpu would pull it away from `far`
    assert {p.device.type for p in renderer.parameters()} == {"meta"}
    assert srd.last_trace(user).fallback_step == 0
    srd.disable(far)
    refill(renderer, tiny_wan_renderer())
    assert torch.equal(generate(user), expected)


def test_a_scheduler_serves_one_sketcher_and_no_model_is_both_roles(pipe, renderer):
    srd.enable(pipe, renderer)
    other = WanPipeline(**{**pipe.components, "transformer": tiny_wan_transformer(seed=4)})  # shares the scheduler
    with pytest.raises(ValueError, match="scheduler: pipe.scheduler is also the scheduler of another SRD-enabled"):
        srd.enable(other, tiny_wan_renderer(seed=3))
    own_scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    small = WanPipeline(**{**pipe.components, "transformer": renderer, "scheduler": own_scheduler})
    with pytest.raises(ValueError, match="sketcher: pipe.transformer is the renderer of another"):
        srd.enable(small, tiny_wan_renderer(seed=3))
    with pytest.raises(ValueError, match="renderer: it is the sketcher of another SRD-enabled WanPipeline"):
        srd.enable(new_pipe(seed=2), pipe.transformer)
    assert srd.is_enabled(pipe) and not srd.is_enabled(small) and not srd.is_enabled(other)


def enable_job(pipe, outcomes):
    """A thread's job: try to enable `pipe`; record "enabled" or whether the refusal named the scheduler."""

    def job():
        try:
            srd.enable(pipe, tiny_wan_renderer(), switch="step", switch_step=1)
            outcomes.append("enabled")
        except ValueError as error:
            outcomes.append("scheduler: pipe.scheduler is also the scheduler" in str(error))

    return job


def test_concurrent_enables_cannot_both_take_a_shared_scheduler(pipe):
    """Two threads enable two pipelines that share one scheduler: exactly one may win, every time."""
    for _ in range(10):
        twins = [pipe, WanPipeline(**{**pipe.components, "transformer": tiny_wan_transformer(seed=4)})]
        outcomes = []
        run_in_threads(enable_job(twins[0], outcomes), enable_job(twins[1], outcomes))
        assert sorted(outcomes, key=str) == [True, "enabled"]
        for p in twins:
            srd.disable(p)
        assert_untouched(pipe)


def test_save_pretrained_of_an_enabled_pipeline_writes_only_the_original_components(pipe, renderer, tmp_path):
    pipe.save_pretrained(tmp_path / "before")
    plain = generate(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    enabled_output = generate(pipe)
    pipe.save_pretrained(tmp_path / "enabled")
    before = json.loads((tmp_path / "before" / "model_index.json").read_text())
    enabled = json.loads((tmp_path / "enabled" / "model_index.json").read_text())
    assert before == enabled
    listing = sorted(str(p.relative_to(tmp_path / "before")) for p in (tmp_path / "before").rglob("*"))
    assert listing == sorted(str(p.relative_to(tmp_path / "enabled")) for p in (tmp_path / "enabled").rglob("*"))
    reloaded = WanPipeline.from_pretrained(tmp_path / "enabled")
    reloaded.set_progress_bar_config(disable=True)
    assert_untouched(reloaded)
    torch.testing.assert_close(generate(reloaded), plain, rtol=1e-5, atol=1e-5)
    assert srd.is_enabled(pipe) and torch.equal(generate(pipe), enabled_output)  # saving changed nothing


# == the NaN check ===================================================================================
def test_all_finite_semantics():
    finite = torch.ones(2, 3)
    assert all_finite(finite) and all_finite((finite, [finite], {"x": finite}))
    assert all_finite(torch.tensor([1, 2]))  # integer tensors cannot hold NaN
    assert all_finite(torch.empty(0)) and all_finite(None) and all_finite("text")
    for bad in (float("nan"), float("inf"), -float("inf")):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            broken = torch.ones(4, dtype=dtype)
            broken[2] = bad
            assert not all_finite(broken)
            assert not all_finite((finite, broken))  # what return_dict=False gives
            assert not all_finite(Transformer2DModelOutput(sample=broken))  # what return_dict=True gives


def test_nan_check_benchmark_runs():
    """benchmarks/nan_check.py measures all_finite at real output sizes (docs/reliability.md)."""
    import runpy

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "nan_check.py"))
    lines = script["main"](["--tiny"])
    assert len(lines) == 3 and all(line.endswith("ms per call") for line in lines[1:])


# == switching policies, property-based ==============================================================
class ScriptedAdapter(Adapter):
    """The guided x0 of step i is `x0s[i]`: lets the real runtime run on arbitrary metric sequences."""

    name = "scripted"

    def __init__(self, x0s):
        self.x0s = x0s

    def predict_x0(self, scheduler, model_output, timestep, sample, step_index):
        return self.x0s[step_index]

    def scheduler_problem(self, scheduler):
        return None  # the toy scheduler has no parametrization: the x0s are scripted


class ToyScheduler:
    def __init__(self, timesteps, num_train_timesteps=1000):
        self.config = {"num_train_timesteps": num_train_timesteps}
        self.all_timesteps = timesteps

    def set_timesteps(self, num_inference_steps):
        self.timesteps = torch.tensor(self.all_timesteps[:num_inference_steps], dtype=torch.float64)

    def step(self, model_output, timestep, sample):
        return sample + model_output


class Constant(torch.nn.Module):
    """A 'model' whose output says who computed it."""

    def __init__(self, value):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(float(value)))

    def forward(self, x):
        return x * 0 + self.value


class ToyPipe:
    pass


def bare_manager():
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


def run_runtime(config, timesteps, x0s=None):
    """One call of the real runtime (router + scheduler wrapper) on toy parts; returns (served, trace)."""
    sketcher, renderer = Constant(1), Constant(2)
    pipe = ToyPipe()
    pipe.transformer = sketcher  # the adapter protocol's default sketcher (and routed module)
    pipe.scheduler = ToyScheduler(timesteps)
    pipe.transformer = sketcher  # traces belong to the sketcher (docs/architecture.md, "State")
    session = Session(pipe, ScriptedAdapter(x0s), sketcher, renderer, config, bare_manager())
    session.install()
    try:
        pipe.scheduler.set_timesteps(len(timesteps))
        sample, served = torch.zeros(1), []
        for t in pipe.scheduler.timesteps:
            output = sketcher(sample)
            served.append(SKETCH if output.item() == 1 else RENDER)
            sample = pipe.scheduler.step(output, t, sample)
        return served, last_trace_of(pipe)
    finally:
        session.uninstall()


def reference_distance(a, b):
    """d = tanh(|b - a| / max(|a|, 1e-8)) for one-element x0s, None where that is NaN (float32 rules:
    a finite previous x0 and an infinite current one give tanh(inf) = 1)."""
    if math.isnan(a) or math.isnan(b) or math.isinf(a):
        return None
    if math.isinf(b):
        return 1.0
    return math.tanh(abs(b - a) / max(abs(a), 1e-8))


def defined(d):
    return d is not None and math.isfinite(d)


def reference_adaptive(distances, num_steps, threshold, min_steps, max_steps):
    """The rule of docs/architecture.md written out again: sketch steps before the switch."""
    for i in range(num_steps):
        n = i + 1
        s = distances[i - 1] - distances[i] if i >= 1 and defined(distances[i - 1]) and defined(distances[i]) else None
        if n < num_steps and n >= min_steps and ((s is not None and 0 < s < threshold) or n >= max_steps):
            return n
    return num_steps


def adaptive_configs(max_steps_limit=50):
    return st.builds(
        lambda threshold, low, extra: SRDConfig(
            threshold=threshold, min_sketch_steps=low, max_sketch_steps=None if extra is None else low + extra
        ),
        st.floats(min_value=1e-6, max_value=1.0),
        st.integers(1, 12),
        st.none() | st.integers(0, max_steps_limit),
    )


# x0 values: any float32 up to 2**64 in size, where float32 arithmetic cannot overflow in the metric
# (|b - a| / 1e-8 stays finite), and the values that can: NaN, +-Inf, zero
X0_VALUES = st.floats(-(2.0**64), 2.0**64, width=32) | st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0])


@settings(max_examples=150, deadline=None)
@given(config=adaptive_configs(), values=st.lists(X0_VALUES, max_size=40))
def test_adaptive_in_the_runtime_is_one_way_bounded_and_deterministic(config, values):
    """Any x0 sequence (NaN, Inf, zeros, sign flips): the real runtime serves sketch^k render^(N-k)."""
    x0s = [torch.tensor([v]) for v in values]
    timesteps = [1000.0 * (1 - i / max(len(values), 1)) for i in range(len(values))]
    served, trace = run_runtime(config, timesteps, x0s)
    n = len(values)
    k = served.count(SKETCH)
    assert served == [SKETCH] * k + [RENDER] * (n - k)  # one-way
    assert trace.roles == served and trace.completed  # the trace tells the truth
    assert trace.switch_step == (k if k < n else None)
    if k < n:
        assert config.min_sketch_steps <= k <= config.resolved_max_sketch_steps(n)
    assert k == reference_adaptive(trace.distances, n, config.threshold, config.min_sketch_steps, trace_max(config, n))
    assert trace.distances[:1] == [None] * min(n, 1)
    for i in range(1, k):  # every step the policy was asked about
        expected = reference_distance(values[i - 1], values[i])
        assert trace.distances[i] == (None if expected is None else pytest.approx(expected, rel=1e-5, abs=1e-6))
    json.dumps(trace.to_dict(), allow_nan=False)
    again_served, again = run_runtime(config, timesteps, x0s)  # deterministic
    assert again_served == served and trace_facts(again) == trace_facts(trace)


def trace_max(config, num_steps):
    return config.resolved_max_sketch_steps(num_steps)


@settings(max_examples=300, deadline=None)
@given(
    config=adaptive_configs(),
    distances=st.lists(st.none() | st.floats(allow_nan=True, allow_infinity=True), max_size=60),
)
def test_adaptive_rule_on_any_metric_sequence(config, distances):
    """The scalar part (`AdaptivePolicy.update`) on any d_i: None, NaN, Inf, negative, > 1."""
    n = len(distances)

    def decisions(policy):
        policy.start([float(n - i) for i in range(n)], 1000)
        return [policy.update(i, d) for i, d in enumerate(distances)]

    policy = AdaptivePolicy(config)
    first = decisions(policy)
    switches = [i + 1 for i, decision in enumerate(first) if decision.switch]
    k = switches[0] if switches else n
    if switches:
        assert config.min_sketch_steps <= k <= config.resolved_max_sketch_steps(n) and k < n
    assert k == reference_adaptive(distances, n, config.threshold, config.min_sketch_steps, trace_max(config, n))
    assert all(d.metric is None or math.isfinite(d.metric) for d in first)
    assert decisions(policy) == first  # `start` resets: the same policy object repeats itself
    assert decisions(AdaptivePolicy(config)) == first  # and a fresh one agrees


def test_a_ratio_is_rounded_in_exact_arithmetic_on_the_float_given():
    """Hypothesis found it: in floats 0.85 * 10 is 8.5 and rounds up to 9; the float 0.85 is below 0.85, so 8."""
    served, _ = run_runtime(SRDConfig(switch="ratio", switch_ratio=0.85), [0.0] * 10)
    assert served == [SKETCH] * 8 + [RENDER] * 2
    served, _ = run_runtime(SRDConfig(switch="ratio", switch_ratio=0.25), [0.0] * 10)  # 2.5 exactly: half up
    assert served == [SKETCH] * 3 + [RENDER] * 7


TIMESTEP_LISTS = st.lists(st.floats(0.0, 1000.0), max_size=40).map(lambda ts: sorted(ts, reverse=True))


@settings(max_examples=100, deadline=None)
@given(timesteps=TIMESTEP_LISTS, data=st.data())
def test_fixed_policies_match_their_definitions(timesteps, data):
    n = len(timesteps)
    k = data.draw(st.integers(0, n), label="switch_step")
    ratio = data.draw(st.floats(0.0, 1.0), label="switch_ratio")
    boundary = data.draw(st.floats(0.0, 1.0), label="boundary_ratio")
    expected = {
        SRDConfig(switch="step", switch_step=k): k,
        # round half up, in exact arithmetic on the float the user gave
        SRDConfig(switch="ratio", switch_ratio=ratio): math.floor(Fraction(ratio) * n + Fraction(1, 2)),
        # diffusers' Wan2.2 rule: the high-noise model while t >= boundary_ratio * num_train_timesteps
        SRDConfig(switch="boundary", boundary_ratio=boundary): sum(t >= boundary * 1000 for t in timesteps),
    }
    for config, sketch_steps in expected.items():
        served, trace = run_runtime(config, timesteps)
        assert served == [SKETCH] * sketch_steps + [RENDER] * (n - sketch_steps), config
        assert trace.roles == served and trace.switch_step == (sketch_steps if sketch_steps < n else None)


@given(st.integers(0, 40), st.integers(1, 10))
def test_switch_step_beyond_the_call_is_refused_at_start(num_steps, beyond):
    policy = make_policy(SRDConfig(switch="step", switch_step=num_steps + beyond))
    with pytest.raises(
        ValueError, match=f"beyond the {num_steps} denoising steps of this call; use a value in 0..{num_steps}"
    ):
        policy.start([float(1000 - i) for i in range(num_steps)], 1000)
