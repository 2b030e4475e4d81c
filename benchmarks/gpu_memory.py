"""GPU memory benchmark: what `offload_sketcher` and `prefetch_renderer` buy with the real Wan2.1 shapes.

    python benchmarks/gpu_memory.py            # on a CUDA GPU; an estimated 1.5 minutes on one H100
    python benchmarks/gpu_memory.py --append   # ... and append the table to BENCHMARKS.md
    python benchmarks/gpu_memory.py --tiny     # tiny models on the CPU: the code path the test suite runs

Models: `WanTransformer3DModel` with the configurations of Wan2.1-T2V-14B (sketcher) and
Wan2.1-T2V-1.3B (renderer), random bf16 weights created directly on the GPU (nothing is
downloaded; the 14B never exists on the CPU). Pipeline: a real `WanPipeline` with a tiny VAE on the
GPU, prompt embeddings passed in (umT5 width 4096, 512 tokens, as the real pipeline pads) and
latent output. One short shape keeps the run brief: 480x832, 17 frames (7,800 video tokens; the
standard 81 frames would make every 14B step about 5 s). 10 steps, two of them sketched
(`switch="step", switch_step=2`), classifier-free guidance on (two transformer calls per step).

Three modes, each warmed up by one call, then measured:

* `never`: the default; both models stay on the GPU.
* `offload_sketcher="after_switch"`: bar 1, the peak allocated memory of the render phase at most
  35% of the sketch phase's (per-step peaks from `RunTrace.memory_allocated`).
* `prefetch_renderer=True`: bar 2, the switch step (the first render step, which waits for the
  prefetched copy) no slower than the median later render step by more than 10% (`step_seconds`;
  the core synchronises the GPU at every step end). Median over 3 measured calls.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import srd_plugin as srd  # noqa: E402
from benchmarks.shapes import WAN_1_3B_SIZE, WAN_14B_SIZE, WAN_COMMON  # noqa: E402
from srd_plugin.testing import make_scheduler, tiny_wan_vae  # noqa: E402

WAN_14B = WAN_14B_SIZE
WAN_1_3B = WAN_1_3B_SIZE

MEMORY_BAR = 0.35
SWITCH_BAR = 1.10


@dataclass(frozen=True)
class Setup:
    """One benchmark configuration: models, shape, steps, device."""

    sketcher: dict[str, Any]
    renderer: dict[str, Any]
    common: dict[str, Any]
    height: int
    width: int
    num_frames: int
    text_tokens: int
    steps: int
    switch_step: int
    measured_calls: int
    dtype: torch.dtype
    device: str


GPU = Setup(WAN_14B, WAN_1_3B, WAN_COMMON, 480, 832, 17, 512, 10, 2, 3, torch.bfloat16, "cuda")
TINY = Setup(
    dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, ffn_dim=64),
    dict(num_layers=1, num_attention_heads=2, attention_head_dim=8, ffn_dim=32),
    {**WAN_COMMON, "text_dim": 32, "freq_dim": 32, "rope_max_seq_len": 32},
    32,
    32,
    9,
    16,
    6,
    2,
    1,
    torch.float32,
    "cpu",
)

MODES: dict[str, dict[str, Any]] = {
    "never": {},
    "after_switch": {"offload_sketcher": "after_switch"},
    "prefetch": {"prefetch_renderer": True},
}


def random_wan_transformer(size: dict[str, Any], setup: Setup, seed: int) -> torch.nn.Module:
    """A WanTransformer3DModel with random weights allocated directly on `setup.device`.

    The module is built with its parameters on the meta device (its buffers, the rotary tables,
    computed normally), then every parameter is created on the device: matrices ~ N(0, 0.02),
    norm weights 1, biases 0, which keeps a random 40-layer model's outputs finite.
    """
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights(include_buffers=False):
        model = WanTransformer3DModel(**setup.common, **size)
    generator = torch.Generator(setup.device).manual_seed(seed)
    for module in model.modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            data = torch.empty(parameter.shape, dtype=setup.dtype, device=setup.device)
            if parameter.dim() >= 2:
                data.normal_(0.0, 0.02, generator=generator)
            else:
                data.fill_(1.0 if name == "weight" else 0.0)
            module._parameters[name] = torch.nn.Parameter(data, requires_grad=False)
    return model.to(setup.device).eval()


def build(setup: Setup) -> tuple[Any, torch.nn.Module, dict[str, Any]]:
    """(pipeline with the sketcher, renderer, call arguments)."""
    from diffusers import WanPipeline

    sketcher = random_wan_transformer(setup.sketcher, setup, seed=0)
    renderer = random_wan_transformer(setup.renderer, setup, seed=1)
    vae = tiny_wan_vae(z_dim=setup.common["in_channels"]).to(setup.device)
    pipe = WanPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=make_scheduler("unipc"), transformer=sketcher
    )
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    shape = (1, setup.text_tokens, setup.common["text_dim"])
    call = dict(
        prompt_embeds=torch.randn(shape, generator=generator).to(setup.device, setup.dtype),
        negative_prompt_embeds=torch.randn(shape, generator=generator).to(setup.device, setup.dtype),
        height=setup.height,
        width=setup.width,
        num_frames=setup.num_frames,
        num_inference_steps=setup.steps,
        guidance_scale=5.0,
        output_type="latent",
    )
    return pipe, renderer, call


@dataclass
class ModeResult:
    """The measured traces of one mode, and the figures the bars are about."""

    mode: str
    traces: list[srd.RunTrace] = field(default_factory=list)

    def peak(self, role: str) -> tuple[int, int] | None:
        peaks = [p for p in (trace.peak_memory_of(role) for trace in self.traces) if p is not None]
        return (max(p[0] for p in peaks), max(p[1] for p in peaks)) if peaks else None

    @property
    def memory_ratio(self) -> float | None:
        sketch, render = self.peak("sketch"), self.peak("render")
        return render[0] / sketch[0] if sketch and render else None

    @property
    def switch_seconds(self) -> float:
        return statistics.median(trace.step_seconds[trace.switch_step] for trace in self.traces)

    @property
    def render_seconds(self) -> float:
        """Median of the render steps after the switch step."""
        return statistics.median(s for trace in self.traces for s in trace.step_seconds[trace.switch_step + 1 :])

    @property
    def switch_ratio(self) -> float:
        return self.switch_seconds / self.render_seconds


def measure(pipe: Any, renderer: torch.nn.Module, call: dict[str, Any], setup: Setup, mode: str) -> ModeResult:
    srd.enable(pipe, renderer, switch="step", switch_step=setup.switch_step, **MODES[mode])
    result = ModeResult(mode)
    try:
        for index in range(1 + setup.measured_calls):
            pipe(**call, generator=torch.Generator(setup.device).manual_seed(index))
            trace = srd.last_trace(pipe)
            if trace.fallback_step is not None or trace.switch_step != setup.switch_step:
                raise RuntimeError(f"mode {mode}: the run did not switch as asked:\n{trace.summary()}")
            if index > 0:  # the first call warms up (kernels, allocator, pinned host memory)
                result.traces.append(trace)
    finally:
        srd.disable(pipe)
    return result


def run(setup: Setup) -> list[ModeResult]:
    pipe, renderer, call = build(setup)
    return [measure(pipe, renderer, call, setup, mode) for mode in MODES]


def table(results: list[ModeResult], setup: Setup) -> str:
    gib = 1024**3

    def memory(peak: tuple[int, int] | None) -> str:
        return f"{peak[0] / gib:.2f} / {peak[1] / gib:.2f}" if peak else "-"

    device = torch.cuda.get_device_name() if setup.device == "cuda" else "CPU (tiny models; no memory figures)"
    lines = [
        f"GPU memory benchmark: {'Wan2.1 14B -> 1.3B shapes' if setup is GPU else 'tiny models'}, "
        f"{setup.height}x{setup.width}, {setup.num_frames} frames, {setup.steps} steps, switch at "
        f"{setup.switch_step}, {str(setup.dtype).removeprefix('torch.')}, "
        f"{setup.measured_calls} measured calls per mode",
        f"date {datetime.date.today()}, {device}, torch {torch.__version__}",
        "",
        "| mode | sketch peak GiB alloc / resv | render peak GiB alloc / resv | render / sketch (alloc) "
        "| switch step s | median render step s | switch / median |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        ratio = result.memory_ratio
        lines.append(
            f"| {result.mode} | {memory(result.peak('sketch'))} | {memory(result.peak('render'))} | "
            f"{f'{ratio:.1%}' if ratio is not None else '-'} | {result.switch_seconds:.3f} | "
            f"{result.render_seconds:.3f} | {result.switch_ratio:.2f} |"
        )
    lines.append("")
    lines.extend(verdicts(results) if setup.device == "cuda" else ["bars: not evaluated (no GPU)"])
    return "\n".join(lines)


def verdicts(results: list[ModeResult]) -> list[str]:
    """One line per bar of the issue, with the measured figure."""
    by_mode = {result.mode: result for result in results}
    memory_ratio = by_mode["after_switch"].memory_ratio
    switch_ratio = by_mode["prefetch"].switch_ratio
    memory_verdict = "meets" if memory_ratio is not None and memory_ratio <= MEMORY_BAR else "MISSES"
    switch_verdict = "meets" if switch_ratio <= SWITCH_BAR else "MISSES"
    memory_figure = f"{memory_ratio:.1%}" if memory_ratio is not None else "not recorded"
    return [
        f"bar 1: render / sketch peak allocated with after_switch = {memory_figure} ({memory_verdict} <= 35%)",
        f"bar 2: switch step / median render step with prefetch = {switch_ratio:.2f} ({switch_verdict} <= 1.10)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU, seconds (used by the tests)")
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --tiny for the CPU code path")
    setup = TINY if args.tiny else GPU
    text = table(run(setup), setup)
    print(text)
    if args.append:
        path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        command = "python benchmarks/gpu_memory.py" + (" --tiny" if args.tiny else "")
        with path.open("a") as handle:
            handle.write(f"\n### `{command}`\n\n```\n{text}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
