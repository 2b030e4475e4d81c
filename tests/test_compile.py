"""torch.compile of the sketcher and the renderer under SRD: compiled graphs run, nothing recompiles per step.

Kept to two tests on the smallest models: compiling is slow on a 2-core CPU.
* whole models (`transformer.compile()`), with a counting backend: every sketch call runs
  the sketcher's graph, every render call the renderer's; the only graph break is SRD's
  deliberate hand-over in the render phase (`Session.render`, kept out of the sketcher's graph);
* repeated blocks (`compile_repeated_blocks()`), with the real inductor backend, and TeaCache
  on both roles: no graph break at all, no new compilation once warmed up (the first two
  calls compile each block position and decision, and once more with dynamic shapes).
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import srd_plugin as srd
from srd_plugin import TeaCacheConfig
from srd_plugin.testing import WanSize, tiny_call_kwargs, tiny_wan_pipeline, tiny_wan_transformer

STEPS, SWITCH = 4, 2
SKETCHER = WanSize(num_layers=3, num_attention_heads=2, attention_head_dim=8, ffn_dim=16)
RENDERER = WanSize(num_layers=2, num_attention_heads=1, attention_head_dim=8, ffn_dim=16)


@pytest.fixture
def small_pair():
    pipe = tiny_wan_pipeline(transformer=tiny_wan_transformer(SKETCHER))
    pipe.set_progress_bar_config(disable=True)
    torch._dynamo.reset()
    counters.clear()
    yield pipe, tiny_wan_transformer(RENDERER, seed=1)
    torch._dynamo.reset()


def generate(pipe):
    return pipe(**tiny_call_kwargs(STEPS)).frames


def counting_backend(runs, name):
    """A backend that runs the captured graph as is and counts its executions."""

    def backend(graph_module, example_inputs):
        def run(*args):
            runs[name] += 1
            return graph_module.forward(*args)

        return run

    return backend


def graph_break_reasons():
    return list(counters["graph_break"])


def test_whole_models_compiled_under_srd(small_pair):
    pipe, renderer = small_pair
    srd.enable(pipe, renderer, switch="step", switch_step=SWITCH)
    eager = generate(pipe)
    srd.disable(pipe)
    runs = {"sketch": 0, "render": 0}
    pipe.transformer.compile(backend=counting_backend(runs, "sketch"))  # compiled before enable...
    srd.enable(pipe, renderer, switch="step", switch_step=SWITCH)
    renderer.compile(backend=counting_backend(runs, "render"))  # ...and after
    graphs = []
    for _ in range(3):
        runs.update(sketch=0, render=0)
        assert torch.equal(generate(pipe), eager)
        assert runs == {"sketch": 2 * SWITCH, "render": 2 * (STEPS - SWITCH)}  # cond + uncond per step
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[2]  # warmed up: no new graph, so no recompilation per step or per call
    reasons = graph_break_reasons()
    assert len(reasons) == 1 and "Session.render" in reasons[0], reasons


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_repeated_blocks_compiled_with_inductor_under_srd_and_teacache(small_pair):
    pipe, renderer = small_pair
    srd.enable(
        pipe,
        renderer,
        switch="step",
        switch_step=SWITCH,
        teacache=TeaCacheConfig(threshold=1.0, coefficients=(1.0, 0.0)),
    )
    eager = generate(pipe)
    pipe.transformer.compile_repeated_blocks()
    renderer.compile_repeated_blocks()
    outputs, graphs = [], []
    for _ in range(3):
        outputs.append(generate(pipe))
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[2] > 0  # warmed up: no new graph, so no recompilation per step or per call
    assert graph_break_reasons() == []
    assert torch.equal(outputs[1], outputs[2])
    assert torch.allclose(outputs[2], eager, rtol=1e-4, atol=1e-4)
