"""FamilyAdapter: the docs' one-screen adapter is the shipped one, and works as a third-party plugin."""

from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import pluggy
import torch

import srd_plugin as srd
from srd_plugin import hookspecs
from srd_plugin.adapters import cosmos
from srd_plugin.adapters.base import FamilyAdapter
from srd_plugin.parametrization import schedule_index as scheduler_index
from srd_plugin.runtime import session_of
from srd_plugin.testing.cosmos import tiny_cosmos_call_kwargs, tiny_cosmos_pipeline, tiny_cosmos_renderer

ROOT = Path(__file__).resolve().parents[1]


def doc_adapter_source() -> str:
    text = (ROOT / "docs" / "adapters.md").read_text()
    section = text.split("## A family in one screen", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_adapter_is_the_shipped_module_without_its_docstring():
    shipped = ast.parse((ROOT / "srd_plugin" / "adapters" / "cosmos.py").read_text())
    shipped.body = [
        node for node in shipped.body[1:] if not isinstance(node, ast.ImportFrom) or node.module != "__future__"
    ]
    documented = ast.parse(doc_adapter_source())
    for tree in (shipped, documented):  # the shipped module imports relatively, the doc absolutely
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module in ("base", "srd_plugin.adapters.base"):
                node.module, node.level = "base", 0
    assert ast.dump(shipped) == ast.dump(documented)
    assert len(doc_adapter_source().splitlines()) <= 45  # one screen, with the CFG layout and the FLOP model


def test_the_documented_adapter_serves_as_a_third_party_plugin(monkeypatch):
    module = types.ModuleType("third_party_cosmos")
    exec(compile(doc_adapter_source(), "docs/adapters.md", "exec"), module.__dict__)
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(module, name="third_party_cosmos")
    monkeypatch.setattr("srd_plugin.api.get_plugin_manager", lambda: manager)
    pipe = tiny_cosmos_pipeline("t2i")
    renderer = tiny_cosmos_renderer()
    sketcher = pipe.transformer

    def swap(p, i, t, kwargs):
        if i == 1:
            p.transformer = renderer
        return kwargs

    expected = pipe(**tiny_cosmos_call_kwargs(), callback_on_step_end=swap, return_dict=False)[0]
    pipe.transformer = sketcher
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    try:
        assert session_of(pipe).adapter is module.ADAPTER  # the third-party plugin, not the built-in
        assert torch.equal(pipe(**tiny_cosmos_call_kwargs(), return_dict=False)[0], expected)
    finally:
        srd.disable(pipe)
    assert manager.hook.srd_supported_pipelines() == [list(cosmos.ADAPTER.pipeline_classes)]


def test_an_empty_declaration_serves_nothing_and_takes_the_schedulers_it_can_read():
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    class Nothing(FamilyAdapter):
        pipeline_classes = ("NoSuchPipeline",)

    adapter = Nothing()
    assert adapter.srd_get_adapter(pipe=tiny_cosmos_pipeline("t2i")) is None
    assert adapter.scheduler_problem(FlowMatchEulerDiscreteScheduler()) is None
    assert adapter.scheduler_problem(UniPCMultistepScheduler(prediction_type="flow_prediction")) is None
    assert adapter.scheduler_problem(UniPCMultistepScheduler()) is None  # epsilon: x0 from alphas_cumprod

    class Opaque:
        config = {}

    problem = adapter.scheduler_problem(Opaque())
    assert "neither a flow-matching sigma table" in problem and "switch='step'" in problem


def test_scheduler_index_locates_a_tail_start():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(10)
    assert scheduler_index(scheduler, scheduler.timesteps[4], fallback=0) == 4
    assert scheduler_index(scheduler, None, fallback=7) == 7
    scheduler.set_begin_index(3)
    assert scheduler_index(scheduler, scheduler.timesteps[4], fallback=0) == 3
