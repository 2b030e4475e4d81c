"""One rank of the 2-process context-parallel test (run by tests/test_parallel.py under torchrun).

Each process pays ~11 s to import torch and diffusers, so one launch runs every
configuration the test needs and saves what it saw to `<out>/rank<r>.pt`; the test process
compares those results with single-process runs and across ranks. Usage:

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/parallel_worker.py OUT_DIR
"""

from __future__ import annotations

import datetime
import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig, WanTransformer3DModel

import srd_plugin as srd
from srd_plugin import runtime
from srd_plugin.parallel import cpu_device_count_shim
from srd_plugin.parallel.context_parallel import context_parallel_config, remove_context_parallel
from srd_plugin.switching import Decision, make_policy
from srd_plugin.testing import WanSize, tiny_call_kwargs, tiny_wan_pair, tiny_wan_transformer

STEPS = 10
SWITCH_STEP = 4
ROOT = Path(__file__).resolve().parents[1]


class SubclassedWan(WanTransformer3DModel):
    """A renderer class derived from the host's, as xDiT's Wan wrappers are."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return super().forward(*args, **kwargs)


def subclassed_copy(model: torch.nn.Module) -> SubclassedWan:
    copy = SubclassedWan(**model.config).eval()
    copy.load_state_dict(model.state_dict())
    return copy


def generate(pipe: Any) -> torch.Tensor:
    return pipe(**tiny_call_kwargs(STEPS)).frames


def traced(pipe: Any) -> dict[str, Any]:
    return {"latents": generate(pipe), "trace": srd.last_trace(pipe).to_dict()}


def refusal(pipe: Any, renderer: Any, **overrides: Any) -> str:
    try:
        srd.enable(pipe, renderer, **overrides)
    except ValueError as error:
        return str(error)
    return "accepted"


def contrary_policy(config: Any) -> Any:
    """A policy that disagrees with rank 0: other metrics, a switch three steps later."""
    policy = make_policy(config)
    policy.after_step = lambda index, x0: Decision(metric=100.0 + index, switch=index + 1 == SWITCH_STEP + 3)
    return policy


def is_clean(model: torch.nn.Module, registries: bool = False) -> bool:
    """Nothing of context parallelism or of SRD is left on the model or its submodules.

    With `registries=True` an empty hook registry is tolerated: every pipeline call leaves one
    on the transformer (diffusers' `cache_context` creates it).
    """

    def hooked(module: torch.nn.Module) -> bool:
        registry = getattr(module, "_diffusers_hook", None)
        return registry is not None and (bool(registry.hooks) or not registries)

    return "_parallel_config" not in vars(model) and not any(hooked(m) or "forward" in vars(m) for m in model.modules())


def run(out: Path) -> dict[str, Any]:
    rank = dist.get_rank()
    results: dict[str, Any] = {}
    pipe, renderer = tiny_wan_pair()
    pipe.set_progress_bar_config(disable=True)
    ulysses2 = ContextParallelConfig(ulysses_degree=2)

    # SRD splits both models (srd.enable(..., parallel_config=...)), step and adaptive policy
    srd.enable(pipe, renderer, parallel_config=ulysses2, switch="step", switch_step=SWITCH_STEP)
    results["step"] = traced(pipe)
    srd.enable(pipe, renderer, parallel_config=ulysses2)
    results["adaptive"] = traced(pipe)

    # rank 1's own policy disagrees; the agreed decision (rank 0's) must win
    srd.enable(pipe, renderer, parallel_config=ulysses2, switch="step", switch_step=SWITCH_STEP)
    if rank != 0:
        runtime.make_policy = contrary_policy
    try:
        results["contrary"] = traced(pipe)
    finally:
        runtime.make_policy = make_policy

    # disable removes both splits: plain single-process behaviour, nothing left behind
    srd.disable(pipe)
    results["clean_after_disable"] = (is_clean(pipe.transformer), is_clean(renderer))
    results["plain"] = generate(pipe)

    # refusals, before any change
    results["refused_ulysses4"] = refusal(pipe, renderer, parallel_config=ContextParallelConfig(ulysses_degree=4))
    three_heads = tiny_wan_transformer(WanSize(num_layers=2, num_attention_heads=3, attention_head_dim=16, ffn_dim=64))
    results["refused_three_heads"] = refusal(pipe, three_heads, parallel_config=ulysses2)
    results["untouched_after_refusals"] = (
        not srd.is_enabled(pipe) and is_clean(pipe.transformer, registries=True) and is_clean(three_heads)
    )

    # the user split the sketcher; the renderer follows on the same mesh, and stays the user's after disable
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
    srd.enable(pipe, renderer, switch="step", switch_step=SWITCH_STEP)
    sketcher_cp, renderer_cp = context_parallel_config(pipe.transformer), context_parallel_config(renderer)
    results["same_mesh"] = renderer_cp is not None and renderer_cp._mesh is sketcher_cp._mesh
    results["user_split"] = traced(pipe)
    results["refused_twice_split"] = refusal(pipe, renderer, parallel_config=ulysses2)
    results["refused_three_heads_user_split"] = refusal(pipe, three_heads)
    srd.disable(pipe)
    results["after_disable_user_split"] = (context_parallel_config(pipe.transformer) is sketcher_cp, is_clean(renderer))

    # a renderer of a subclass of the host class (xDiT style), split like the sketcher
    subclassed = subclassed_copy(renderer)
    srd.enable(pipe, subclassed, switch="step", switch_step=SWITCH_STEP)
    results["subclass"] = traced(pipe)
    srd.disable(pipe)

    # a split made after srd.enable is caught at the start of the next call, before any denoising
    remove_context_parallel(pipe.transformer)
    srd.enable(pipe, renderer, switch="step", switch_step=SWITCH_STEP)
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
    try:
        generate(pipe)
        results["split_after_enable"] = "accepted"
    except ValueError as error:
        results["split_after_enable"] = str(error)
    srd.disable(pipe)

    # the example script's --tiny path, in this same process group
    spec = importlib.util.spec_from_file_location("multi_gpu_wan", ROOT / "examples" / "multi_gpu_wan.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results["example_exit_code"] = example.main(["--tiny", "--out", str(out / "example")])
    return results


def main() -> int:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    try:
        with cpu_device_count_shim():
            results = run(out)
        torch.save(results, out / f"rank{rank}.pt")
        return 0
    except BaseException:
        (out / f"rank{rank}.error").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
