"""The renderer joins the host's offloading (model CPU offload, group, sequential) in either order of calls.

These run diffusers' and accelerate's real offloading code on the CPU:
* model CPU offload through `pipe.enable_model_cpu_offload(device="cpu")`, which makes
  accelerate's hooks use `cpu:0` as the execution device (a real `module.to("cpu:0")` at every
  onload, a no-op for the data);
* group offloading through `pipe.enable_group_offload(onload_device="cpu", ...)`, block and leaf
  level, and to disk;
* sequential offloading through accelerate's `cpu_offload(pipe.transformer, "cpu")`, the call
  `enable_sequential_cpu_offload` makes per component. (`enable_sequential_cpu_offload(device="cpu")`
  itself fails on a CPU-only torch even without SRD: accelerate 1.15's tensor placement breaks for
  the execution device `cpu:0` in the Wan transformer's first layer.)
The outputs must equal those of SRD without offloading, bit for bit (disk offloading excepted: the
host's own disk offloading already changes the last bits on the CPU, with or without SRD).
"""

from __future__ import annotations

import accelerate
import pytest
import torch
from movements import MovementRecorder, register, unregister

import srd_plugin as srd
from srd_plugin.hooks.host_offload import GROUP, MODEL, SEQUENTIAL, host_offloading
from srd_plugin.testing import tiny_call_kwargs

STEPS = 4
SWITCH = dict(switch="step", switch_step=2)


def generate(pipe):
    return pipe(**tiny_call_kwargs(STEPS)).frames


def model_offload(pipe, tmp_path):
    pipe.enable_model_cpu_offload(device="cpu")


def group_block(pipe, tmp_path):
    pipe.enable_group_offload(onload_device="cpu", offload_type="block_level", num_blocks_per_group=1)


def group_leaf(pipe, tmp_path):
    pipe.enable_group_offload(onload_device="cpu", offload_type="leaf_level")


def group_disk(pipe, tmp_path):
    pipe.enable_group_offload(
        onload_device="cpu", offload_type="block_level", num_blocks_per_group=2, offload_to_disk_path=str(tmp_path)
    )


def sequential(pipe, tmp_path):
    accelerate.cpu_offload(pipe.transformer, "cpu", offload_buffers=True)


TECHNIQUES = {
    "model": (model_offload, MODEL),
    "group_block": (group_block, GROUP),
    "group_leaf": (group_leaf, GROUP),
    "group_disk": (group_disk, GROUP),
    "sequential": (sequential, SEQUENTIAL),
}


def count_calls(module):
    """Forwards of a model's last layer: how often the model really computed."""
    calls = []
    module.proj_out.register_forward_pre_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("order", ["host_first", "srd_first"])
@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_outputs_equal_those_without_offloading(pipe, renderer, name, order, tmp_path):
    apply, technique = TECHNIQUES[name]
    weights = {k: v.clone() for k, v in renderer.state_dict().items()}
    srd.enable(pipe, renderer, **SWITCH)
    expected = [generate(pipe)] * 2  # every call is seeded alike
    srd.disable(pipe)
    plain = generate(pipe)
    sketcher_calls, renderer_calls = count_calls(pipe.transformer), count_calls(renderer)
    if order == "host_first":
        apply(pipe, tmp_path)
        srd.enable(pipe, renderer, **SWITCH)
    else:
        srd.enable(pipe, renderer, **SWITCH)
        apply(pipe, tmp_path)
    outputs = [generate(pipe), generate(pipe)]
    assert host_offloading(renderer) == technique  # the renderer runs under the host's technique
    assert srd.last_trace(pipe).roles == ["sketch"] * 2 + ["render"] * 2
    assert len(sketcher_calls) == 2 * 2 * 2 and len(renderer_calls) == 2 * 2 * 2  # 2 calls, 2 steps, CFG
    srd.disable(pipe)
    after = generate(pipe)
    assert host_offloading(pipe.transformer) == technique  # the host keeps its offloading
    assert host_offloading(renderer) is None  # the renderer's is taken off again, weights intact
    assert all(torch.equal(v, weights[k]) for k, v in renderer.state_dict().items())
    if name == "group_disk":  # loading from disk shifts CPU kernels' last bits, with or without SRD
        torch.testing.assert_close(outputs, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(after, plain, rtol=1e-5, atol=1e-5)
    else:
        assert all(torch.equal(a, b) for a, b in zip(outputs, expected))
        assert torch.equal(after, plain)


@pytest.mark.parametrize("order", ["host_first", "srd_first"])
def test_model_offload_moves_in_order(pipe, renderer, monkeypatch, order):
    """The renderer is on the accelerator only while the call renders; the sketcher leaves when it starts."""
    moves = MovementRecorder(monkeypatch)
    for name, module in (("sketcher", pipe.transformer), ("renderer", renderer), ("vae", pipe.vae)):
        moves.watch(name, module)
    register(moves)
    try:
        if order == "host_first":
            pipe.enable_model_cpu_offload(device="cpu")
            srd.enable(pipe, renderer, **SWITCH)
        else:
            srd.enable(pipe, renderer, **SWITCH)
            pipe.enable_model_cpu_offload(device="cpu")
        moves.take()
        for _ in range(2):
            pipe(**tiny_call_kwargs(STEPS, output_type="pt"))  # decoded: the VAE runs after the denoising
        events = moves.take()
    finally:
        unregister()

    # accelerate moves a model to "cpu:0" at each of its forwards on the CPU (cpu != cpu:0): consecutive repeats
    # are collapsed by `take`
    def call(first):
        return [
            ("call",),
            *([("renderer", "cpu")] if first else []),  # the renderer gets its hook, which puts it on the CPU
            ("sketcher", "cpu:0"), ("step", 0, "sketch"), ("sketcher", "cpu:0"), ("step", 1, "sketch"),
            ("switch", 2), ("sketcher", "cpu"), ("renderer", "cpu:0"),  # the sketcher leaves as the renderer comes
            ("step", 2, "render"), ("renderer", "cpu:0"), ("step", 3, "render"),
            ("end",), ("renderer", "cpu"),  # released before the VAE decodes
            ("vae", "cpu:0"),
            # diffusers moves every component to the CPU after the call and re-creates its hooks
            ("sketcher", "cpu"), ("vae", "cpu"), ("sketcher", "cpu"), ("vae", "cpu"),
        ]  # fmt: skip

    assert events == call(first=True) + call(first=False)


# -- combinations that cannot work ---------------------------------------------------------------
def test_prefetch_with_host_offloading_is_refused_by_enable(pipe, renderer):
    pipe.enable_model_cpu_offload(device="cpu")
    with pytest.raises(ValueError, match="prefetch_renderer=True conflicts with the pipeline's model CPU offloading"):
        srd.enable(pipe, renderer, prefetch_renderer=True)
    assert not srd.is_enabled(pipe)


def test_prefetch_then_host_offloading_fails_at_the_call_before_denoising(pipe, renderer):
    sketcher_calls = count_calls(pipe.transformer)
    srd.enable(pipe, renderer, prefetch_renderer=True)
    group_block(pipe, None)
    with pytest.raises(ValueError, match="prefetch_renderer=True conflicts with the pipeline's group offloading"):
        generate(pipe)
    assert sketcher_calls == []


def test_move_renderer_false_with_host_offloading_is_refused(pipe, renderer):
    sequential(pipe, None)
    with pytest.raises(ValueError, match="move_renderer=False forbids moving the renderer"):
        srd.enable(pipe, renderer, move_renderer=False)


def test_renderer_with_its_own_offloading_is_refused_at_the_call(pipe, renderer):
    pipe.enable_model_cpu_offload(device="cpu")
    accelerate.cpu_offload_with_hook(renderer, "cpu")
    srd.enable(pipe, renderer, **SWITCH)
    with pytest.raises(ValueError, match="the renderer already has its own model CPU offloading"):
        generate(pipe)


def test_renderer_that_cannot_be_loaded_at_the_switch_leaves_the_call_to_the_sketcher(pipe, renderer, monkeypatch):
    pipe.enable_model_cpu_offload(device="cpu")
    plain = generate(pipe)
    moves = MovementRecorder(monkeypatch)
    moves.watch("sketcher", pipe.transformer)
    moves.watch("renderer", renderer)
    srd.enable(pipe, renderer, **SWITCH)
    moves.fail("renderer", "cpu:0")
    with pytest.warns(UserWarning, match="switching to the renderer failed.*out of memory.*from step 2"):
        output = generate(pipe)
    assert torch.equal(output, plain)
    trace = srd.last_trace(pipe)
    assert trace.roles == ["sketch"] * STEPS and trace.fallback_step == 2 and trace.switch_step is None
    # the sketcher was released for the renderer, the renderer's move failed, the renderer went back to the
    # CPU and the sketcher's own hook brought it back for step 2
    failed = moves.events.index(("renderer", "cpu:0", "failed"))
    assert moves.events[failed - 1 : failed + 3] == [
        ("sketcher", "cpu"),
        ("renderer", "cpu:0", "failed"),
        ("renderer", "cpu"),
        ("sketcher", "cpu:0"),
    ]


def test_router_stays_on_top_of_the_sketchers_hooks(pipe, renderer):
    """The structure behind the outputs: during a call, a render-phase call never enters the sketcher's hooks."""
    srd.enable(pipe, renderer, **SWITCH)
    pipe.enable_model_cpu_offload(device="cpu")  # accelerate wraps the router
    router = pipe.transformer._diffusers_hook.get_hook("srd_router")
    seen = []

    def look(pipeline, step, timestep, kwargs):
        outer = pipeline.transformer.forward.func.__qualname__
        seen.append((outer.split(".")[0], router.fn_ref.original_forward.func.__qualname__.split(".")[0]))
        return {}

    for _ in range(2):  # after each call diffusers re-creates its hooks, dropping the router's wrapper
        pipe(**tiny_call_kwargs(STEPS, callback_on_step_end=look))
    # in every step of both calls: the router (a diffusers registry wrapper) outermost, accelerate's hook under it
    assert seen == [("HookRegistry", "add_hook_to_module")] * STEPS * 2
    srd.disable(pipe)
    assert pipe.transformer.forward.func.__qualname__.startswith("add_hook_to_module")
    assert not hasattr(pipe.transformer, "_diffusers_hook")


def test_router_survives_group_offloading_hooks_removed_under_it(pipe, renderer):
    """diffusers' `HookRegistry.remove_hook` rewires the hook above the removed one, which would bypass the
    router; group offloading removes its hooks when it re-applies itself (after loading LoRA weights, or its
    lazy-prefetch hook after the first forward on CUDA). The guard under the router absorbs that."""
    from diffusers.hooks.group_offloading import _maybe_remove_and_reapply_group_offloading

    group_block(pipe, None)
    srd.enable(pipe, renderer, **SWITCH)
    expected = generate(pipe)
    renderer_calls = count_calls(renderer)
    _maybe_remove_and_reapply_group_offloading(pipe.transformer)
    assert torch.equal(generate(pipe), expected)
    assert len(renderer_calls) == 2 * 2  # the renderer still ran both render steps
