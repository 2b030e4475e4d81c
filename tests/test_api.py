"""The public API: enable / disable / sketch_render / last_trace, renderer loading, plugins.

Bad input, faults, concurrency and reuse are in test_reliability.py."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from diffusers import WanPipeline

import srd_plugin as srd
from srd_plugin.hookspecs import hookimpl
from srd_plugin.manager import get_plugin_manager
from srd_plugin.runtime import session_of
from srd_plugin.testing import tiny_call_kwargs

STEPS = 8


def generate(pipe, **overrides):
    return pipe(**tiny_call_kwargs(STEPS, **overrides)).frames


# -- enable / disable ----------------------------------------------------------------------
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


def test_renderer_dtype_conversion(pipe, renderer):
    srd.enable(pipe, renderer, renderer_dtype="bfloat16", switch="step", switch_step=2)
    assert renderer.dtype == torch.bfloat16
    out = generate(pipe)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


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
