"""One sketcher/renderer pair for `benchmarks/gpu_pairs.py`, and the arithmetic every pair shares.

Each host family keeps its pairs in its own module (`benchmarks/pairs_<family>.py`, a list
`PAIRS` of `PairSpec`), so that engineers adding families never edit the same file; the runner
finds every such module.

The FLOP count is not a per-family formula: `flops_per_call` builds the model on PyTorch's
meta device (no memory, no arithmetic) at the published config and runs ONE call of
`make_inputs` under `torch.utils.flop_counter.FlopCounterMode`, which counts every matmul and
attention kernel at the call's real shapes (2 FLOPs per multiply-add, as FACTS.md counts). So a
new pair gets its FLOP count from its `make_inputs` alone, and the count follows the diffusers
code exactly (text tokens, cross-attention, modulation included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: the switch steps at which every pair's projected speedup is reported
SWITCH_STEPS = (5, 10, 15, 20)


@dataclass(frozen=True)
class PairSpec:
    name: str  # "SkyReels-V2 14B -> 1.3B (540P, 97 frames)"
    model_class: str  # diffusers class name, e.g. "SkyReelsV2Transformer3DModel"
    sketcher: dict  # the published config kwargs of the large model (source below)
    renderer: dict  # the published config kwargs of the small model
    tiny_sketcher: dict  # tiny kwargs exercising the same code path on the CPU (--tiny)
    tiny_renderer: dict
    make_inputs: Callable[[dict, bool, torch.device, torch.dtype], dict]
    # (model config kwargs, tiny, device, dtype) -> kwargs of ONE transformer call at the published
    # default resolution / frames (tiny: a few tokens); batch already doubled for batched-CFG hosts
    calls_per_step: int  # 2 for hosts calling the model twice per step (cond, uncond), 1 for batched CFG
    steps: int  # the family's default num_inference_steps
    source: str  # where the configs and default sizes come from (model card / config URL)
    sketcher_calls_scale: float = 1.0  # e.g. Wan2.2's two experts: both 14B, so the same
    #: called once before a model of this pair is built (e.g. a stand-in for an optional import)
    prepare: Callable[[], None] | None = None


def model_class(spec: PairSpec) -> type:
    """The diffusers class named by the spec."""
    import diffusers

    cls = getattr(diffusers, spec.model_class, None)
    if not isinstance(cls, type):
        raise ValueError(f"{spec.name}: diffusers {diffusers.__version__} has no class {spec.model_class!r}")
    return cls


def build_model(spec: PairSpec, config: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model with random weights created directly on `device` in `dtype` (no float32 copy first)."""
    if spec.prepare is not None:
        spec.prepare()
    cls = model_class(spec)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**config)
    finally:
        torch.set_default_dtype(previous)
    keep = getattr(cls, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():  # as from_pretrained(torch_dtype=...) keeps them
        if name and any(part in keep for part in name.split(".")):
            module.float()
    return model.eval().requires_grad_(False)


def call_model(model: torch.nn.Module, inputs: dict) -> None:
    """One transformer call with the pair's inputs, without autograd."""
    with torch.no_grad():
        model(**inputs)


def flops_per_call(spec: PairSpec, config: dict, tiny: bool = False) -> float:
    """FLOPs (2 per multiply-add) of ONE call of the model built from `config`, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = torch.device("meta")  # float32: the count does not depend on the dtype, and no module is kept apart
    model = build_model(spec, config, meta, torch.float32)
    inputs = spec.make_inputs(config, tiny, meta, torch.float32)
    with FlopCounterMode(display=False) as counter:
        call_model(model, inputs)
    return float(counter.get_total_flops())


def flops_per_step(spec: PairSpec, config: dict, tiny: bool = False, sketcher: bool = False) -> float:
    """FLOPs of one denoising step: the calls the host makes per step (times the sketcher's scale)."""
    scale = spec.sketcher_calls_scale if sketcher else 1.0
    return flops_per_call(spec, config, tiny) * spec.calls_per_step * scale


def projected_speedup(t_sketch: float, t_render: float, k: int, n: int) -> float:
    """S(k) = N Ts / (k Ts + (N - k) Tr): sketch k of N steps with the large model, render the rest."""
    if not 0 <= k <= n:
        raise ValueError(f"switch step k={k} must lie in 0..{n}")
    return n * t_sketch / (k * t_sketch + (n - k) * t_render)


def break_even_switch(t_sketch: float, t_render: float, n: int, budget_steps: float) -> float:
    """The largest k for which SRD (k sketched steps, N - k rendered) costs no more than
    `budget_steps` steps of the small model (e.g. its few-step distilled variant): solves
    k Ts + (N - k) Tr = budget Tr. Negative when even rendering every step is too slow."""
    if t_sketch <= t_render:
        raise ValueError("the sketcher must be the slower model")
    return (budget_steps - n) * t_render / (t_sketch - t_render)
