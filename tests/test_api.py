"""The public API: enable / disable / sketch_render / last_trace, bad input, faults, plugins."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline

import srd_plugin as srd
from srd_plugin import IncompatibleRendererError, RendererFailureError, UnsupportedPipelineError
from srd_plugin.hookspecs import hookimpl
from srd_plugin.manager import get_plugin_manager
from srd_plugin.runtime import session_of
from srd_plugin.testing import tiny_call_kwargs, tiny_wan_renderer, tiny_wan_transformer

STEPS = 8


def generate(pipe, **overrides):
    return pipe(**tiny_call_kwargs(STEPS, **overrides)).frames


# -- enable / disable ----------------------------------------------------------------------
def test_enable_returns_pipe_and_reenable_replaces(pipe, renderer):
    assert srd.enable(pipe, renderer, switch="step", switch_step=2) is pipe
    srd.enable(pipe, renderer, switch="step", switch_step=5)
    assert list(pipe.transformer._diffusers_hook.hooks) == ["srd_router"]
    generate(pipe)
    assert srd.last_trace(pipe).switch_step == 5
    srd.disable(pipe)
    srd.disable(pipe)  # idempotent
    assert not srd.is_enabled(pipe)


def test_context_manager_restores_even_on_error(pipe, renderer):
    plain = generate(pipe)
    with pytest.raises(RuntimeError, match="boom"):
        with srd.sketch_render(pipe, renderer, switch="step", switch_step=3):
            assert srd.is_enabled(pipe)
            raise RuntimeError("boom")
    assert not srd.is_enabled(pipe)
    with srd.sketch_render(pipe, renderer, switch="step", switch_step=3):
        generate(pipe)
    assert srd.last_trace(pipe).switch_step == 3  # kept after the block
    assert torch.equal(generate(pipe), plain)


def test_trace_fields_and_json_round_trip(pipe, renderer):
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    generate(pipe)
    trace = srd.last_trace(pipe)
    assert trace.num_steps == STEPS and trace.completed
    assert trace.roles == ["sketch"] * 3 + ["render"] * 5
    assert trace.metrics == [None] * STEPS  # non-adaptive policy: nothing computed
    assert len(trace.step_seconds) == STEPS and all(s > 0 for s in trace.step_seconds)
    again = srd.RunTrace.from_json(trace.to_json())
    assert again == trace
    json.dumps(trace.to_dict())
    summary = trace.summary()
    assert "switch at step 3" in summary and "sketch" in summary and "render" in summary


def test_every_call_starts_fresh(pipe, renderer):
    srd.enable(pipe, renderer)
    first = pipe(**tiny_call_kwargs(20)).frames
    trace_1 = srd.last_trace(pipe)
    second = pipe(**tiny_call_kwargs(20)).frames
    trace_2 = srd.last_trace(pipe)
    assert trace_1 is not trace_2
    assert trace_1.switch_step == trace_2.switch_step and torch.equal(first, second)


def test_scheduler_replaced_after_enable_is_followed(pipe, renderer):
    from diffusers import FlowMatchEulerDiscreteScheduler

    srd.enable(pipe, renderer, switch="step", switch_step=2)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    generate(pipe)
    assert srd.last_trace(pipe).roles == ["sketch"] * 2 + ["render"] * 6
    srd.disable(pipe)
    assert "step" not in pipe.scheduler.__dict__


# -- loading the renderer ----------------------------------------------------------------------
def test_renderer_from_pipeline_folder_and_transformer_folder(pipe, renderer, tmp_path):
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    expected = generate(pipe)
    srd.disable(pipe)
    renderer_pipe = WanPipeline(**{**pipe.components, "transformer": renderer})
    renderer_pipe.save_pretrained(tmp_path / "renderer-pipeline")
    renderer.save_pretrained(tmp_path / "renderer-transformer")
    for source in (tmp_path / "renderer-pipeline", str(tmp_path / "renderer-transformer")):
        srd.enable(pipe, source, switch="step", switch_step=3)
        loaded = session_of(pipe).renderer
        assert loaded is not renderer and type(loaded) is type(renderer)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), renderer.state_dict().values()))
        # same weights; CPU kernels may round differently on differently aligned (loaded) memory
        torch.testing.assert_close(generate(pipe), expected, rtol=1e-5, atol=1e-5)
        srd.disable(pipe)


def test_renderer_path_loads_in_sketcher_dtype(pipe, renderer, tmp_path):
    renderer.save_pretrained(tmp_path / "r")
    pipe.transformer.to(torch.bfloat16)
    srd.enable(pipe, tmp_path / "r", switch="step", switch_step=3)
    assert session_of(pipe).renderer.dtype == torch.bfloat16
    generate(pipe)


@pytest.mark.parametrize(
    "renderer_arg, error, words",
    [
        (None, ValueError, "renderer is None"),
        ("/no/such/folder/renderer", ValueError, "does not exist"),
        ("./relative/missing", ValueError, "does not exist"),
        (42, TypeError, "torch.nn.Module, a path or a hub repo id"),
    ],
)
def test_bad_renderer_arguments(pipe, renderer_arg, error, words):
    with pytest.raises(error, match=words):
        srd.enable(pipe, renderer_arg)
    assert not srd.is_enabled(pipe)


def test_folder_without_model(pipe, tmp_path):
    with pytest.raises(ValueError, match="neither model_index.json"):
        srd.enable(pipe, tmp_path)


def test_unsupported_pipeline_lists_supported():
    with pytest.raises(UnsupportedPipelineError, match="no adapter for object.*WanPipeline") as info:
        srd.enable(object(), tiny_wan_renderer())
    assert isinstance(info.value, TypeError)


def test_wan22_moe_pipeline_is_refused(pipe, renderer):
    moe = WanPipeline(**{**pipe.components, "transformer_2": renderer}, boundary_ratio=0.875)
    with pytest.raises(UnsupportedPipelineError, match="transformer_2.*Wan2.2"):
        srd.enable(moe, tiny_wan_renderer(seed=3))


def test_incompatible_renderer_names_every_mismatch(pipe):
    bad = tiny_wan_transformer(in_channels=8, out_channels=8, text_dim=16)
    with pytest.raises(IncompatibleRendererError) as info:
        srd.enable(pipe, bad)
    message = str(info.value)
    for words in ("latent channels (in_channels)", "output channels (out_channels)", "text embedding width"):
        assert words in message
    assert len(info.value.mismatches) == 3 and isinstance(info.value, ValueError)
    with pytest.raises(IncompatibleRendererError, match="model family.*Linear"):
        srd.enable(pipe, torch.nn.Linear(4, 4))
    assert not srd.is_enabled(pipe)


def test_renderer_on_other_device_refused_when_moving_is_disallowed(pipe):
    with torch.device("meta"):
        elsewhere = tiny_wan_renderer()
    with pytest.raises(IncompatibleRendererError, match="device: the sketcher is on cpu, the renderer on meta"):
        srd.enable(pipe, elsewhere, move_renderer=False)


def test_renderer_dtype_conversion(pipe, renderer):
    srd.enable(pipe, renderer, renderer_dtype="bfloat16", switch="step", switch_step=2)
    assert renderer.dtype == torch.bfloat16
    out = generate(pipe)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_renderer_is_sketcher_warns_and_equals_plain(pipe):
    plain = generate(pipe)
    with pytest.warns(UserWarning, match="cannot speed anything up"):
        srd.enable(pipe, pipe.transformer, switch="step", switch_step=3)
    assert torch.equal(generate(pipe), plain)


def test_bad_override_is_refused_before_any_change(pipe, renderer):
    with pytest.raises(ValueError, match="SRDConfig.threshold"):
        srd.enable(pipe, renderer, threshold=5)
    with pytest.raises(TypeError, match="SRDConfig"):
        srd.enable(pipe, renderer, config={"switch": "step"})
    assert not srd.is_enabled(pipe) and "forward" not in pipe.transformer.__dict__


# -- faults in a call ----------------------------------------------------------------------
def test_switch_step_beyond_steps_fails_at_call_start(pipe, renderer):
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    srd.enable(pipe, renderer, switch="step", switch_step=STEPS + 1)
    with pytest.raises(ValueError, match="beyond the 8 denoising steps"):
        generate(pipe)
    assert calls == []  # no denoising work was done


def test_adaptive_needs_a_flow_scheduler(pipe, renderer):
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="epsilon")
    srd.enable(pipe, renderer)
    with pytest.raises(ValueError, match="flow-matching scheduler"):
        generate(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=2)  # fixed policies need no x0
    generate(pipe)


def test_renderer_exception_leaves_pipeline_usable(pipe, renderer):
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    expected = generate(pipe)
    handle = renderer.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("renderer broke")))
    with pytest.raises(RuntimeError, match="renderer broke") as info:
        generate(pipe)
    assert any("raised by the renderer" in note for note in info.value.__notes__)
    trace = srd.last_trace(pipe)
    assert not trace.completed and "aborted at step 3" in trace.events[0]
    handle.remove()
    assert srd.is_enabled(pipe)
    assert torch.equal(generate(pipe), expected)


def test_interrupt_mid_call_then_disable_restores(pipe, renderer):
    plain = generate(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=2)

    def interrupt(p, i, t, kwargs):
        if i == 4:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        generate(pipe, callback_on_step_end=interrupt)
    srd.disable(pipe)
    assert torch.equal(generate(pipe), plain)


def nan_output(module, args, kwargs, output):
    return (torch.full_like(output[0], float("nan")),) + tuple(output[1:])


def test_renderer_nan_falls_back_to_sketcher(pipe, renderer):
    renderer.register_forward_hook(nan_output, with_kwargs=True)
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    with pytest.warns(UserWarning, match="NaN or Inf at step 3"):
        out = generate(pipe)
    assert torch.isfinite(out).all()
    trace = srd.last_trace(pipe)
    assert trace.fallback_step == 3 and trace.completed
    assert trace.roles == ["sketch"] * STEPS
    srd.disable(pipe)
    assert torch.equal(out, generate(pipe))  # the sketcher did every step


def test_renderer_nan_raises_when_asked(pipe, renderer):
    renderer.register_forward_hook(nan_output, with_kwargs=True)
    srd.enable(pipe, renderer, switch="step", switch_step=3, on_renderer_failure="raise")
    with pytest.raises(RendererFailureError, match="NaN or Inf at step 3"):
        generate(pipe)
    assert srd.is_enabled(pipe)


def test_save_pretrained_writes_only_the_original_components(pipe, renderer, tmp_path):
    pipe.save_pretrained(tmp_path / "before")
    plain = generate(pipe)
    srd.enable(pipe, renderer)
    pipe.save_pretrained(tmp_path / "enabled")
    before = json.loads((tmp_path / "before" / "model_index.json").read_text())
    enabled = json.loads((tmp_path / "enabled" / "model_index.json").read_text())
    assert before == enabled
    assert sorted(p.name for p in (tmp_path / "enabled").iterdir()) == sorted(
        p.name for p in (tmp_path / "before").iterdir()
    )
    reloaded = WanPipeline.from_pretrained(tmp_path / "enabled")
    reloaded.set_progress_bar_config(disable=True)
    assert not hasattr(reloaded.transformer, "_diffusers_hook") or not reloaded.transformer._diffusers_hook.hooks
    torch.testing.assert_close(generate(reloaded), plain, rtol=1e-5, atol=1e-5)


# -- plugins ---------------------------------------------------------------------------------
class Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def srd_prepare_model(self, session, role, model):
        self.calls.append(("prepare", role))

    @hookimpl
    def srd_run_start(self, session, run):
        self.calls.append(("start", run.phase))

    @hookimpl
    def srd_step_end(self, session, run, step_index):
        self.calls.append(("step", step_index, run.phase))

    @hookimpl
    def srd_switch(self, session, run, step_index):
        self.calls.append(("switch", step_index))

    @hookimpl
    def srd_run_end(self, session, run):
        self.calls.append(("end", run.trace.completed))

    @hookimpl
    def srd_restore_model(self, session, role, model):
        self.calls.append(("restore", role))


@pytest.fixture
def recorder():
    plugin = Recorder()
    manager = get_plugin_manager()
    manager.register(plugin, name="test-recorder")
    yield plugin
    manager.unregister(name="test-recorder")


def test_lifecycle_hooks_in_order(pipe, renderer, recorder):
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    pipe(**tiny_call_kwargs(4))
    srd.disable(pipe)
    assert recorder.calls == [
        ("prepare", "sketch"),
        ("prepare", "render"),
        ("start", "sketch"),
        ("step", 0, "sketch"),
        ("step", 1, "sketch"),
        ("switch", 2),
        ("step", 2, "render"),
        ("step", 3, "render"),
        ("end", True),
        ("restore", "render"),
        ("restore", "sketch"),
    ]


def test_check_setup_problems_block_enable(pipe, renderer):
    class Veto:
        @hookimpl
        def srd_check_setup(self, session):
            return ["the veto plugin says no"]

    manager = get_plugin_manager()
    manager.register(Veto(), name="test-veto")
    try:
        with pytest.raises(ValueError, match="the veto plugin says no"):
            srd.enable(pipe, renderer)
    finally:
        manager.unregister(name="test-veto")
    assert not srd.is_enabled(pipe)


def test_a_registered_adapter_serves_a_new_pipeline_class(renderer):
    from srd_plugin.adapters.wan import WanAdapter
    from srd_plugin.testing import tiny_wan_pipeline

    class HouseWanPipeline(WanPipeline):
        pass

    class HouseAdapter(WanAdapter):
        name = "house"

    class HousePlugin:
        @hookimpl
        def srd_get_adapter(self, pipe):
            return HouseAdapter() if isinstance(pipe, HouseWanPipeline) else None

    base = tiny_wan_pipeline()
    house = HouseWanPipeline(**{k: v for k, v in base.components.items() if k != "transformer_2"})
    house.set_progress_bar_config(disable=True)
    manager = get_plugin_manager()
    manager.register(HousePlugin(), name="test-house")
    try:
        srd.enable(house, renderer, switch="step", switch_step=1)
        assert session_of(house).adapter.name == "house"
        house(**tiny_call_kwargs(3))
        assert srd.last_trace(house).roles == ["sketch", "render", "render"]
    finally:
        manager.unregister(name="test-house")


def test_no_warning_on_normal_use(pipe, renderer):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        srd.enable(pipe, renderer)
        generate(pipe)


def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory (injected)")


@pytest.mark.parametrize("mode", ["fallback", "raise"])
def test_renderer_move_failure(pipe, renderer, monkeypatch, mode):
    plain = generate(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=2, on_renderer_failure=mode)
    renderer.to("meta")  # the renderer now lives elsewhere: the next call must move it
    monkeypatch.setattr(renderer, "to", out_of_memory)
    if mode == "raise":
        with pytest.raises(RendererFailureError, match="out of memory"):
            generate(pipe)
        return
    with pytest.warns(UserWarning, match="moving the renderer.*out of memory.*sketcher takes over from step 0"):
        out = generate(pipe)
    trace = srd.last_trace(pipe)
    assert trace.roles == ["sketch"] * STEPS and trace.switch_step is None and trace.fallback_step == 0
    assert torch.equal(out, plain)
