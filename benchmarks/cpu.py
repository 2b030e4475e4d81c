"""CPU benchmark: per-step cost of each model, end-to-end speedup at fixed switch steps, plugin overhead.

    python benchmarks/cpu.py                 # mid-size pair, prints the table
    python benchmarks/cpu.py --append        # ... and appends it to BENCHMARKS.md
    python benchmarks/cpu.py --tiny          # seconds; the code path the test suite runs

Every configuration is timed in interleaved rounds (one run of each per round, so drift on
a shared machine hits all alike) and the median over rounds is reported. The denoising
loop is timed end to end through the real WanPipeline (`output_type="latent"`, so the VAE
does not dilute the ratio; text encoding is included).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import srd_plugin as srd  # noqa: E402
from benchmarks.shapes import cpu_name  # noqa: E402
from srd_plugin.testing import WanSize, tiny_wan_pipeline, tiny_wan_transformer  # noqa: E402

MID_SKETCHER = WanSize(num_layers=8, num_attention_heads=8, attention_head_dim=32, ffn_dim=1024)
MID_RENDERER = WanSize(num_layers=4, num_attention_heads=2, attention_head_dim=32, ffn_dim=256)
TINY_SKETCHER = WanSize(num_layers=2, num_attention_heads=2, attention_head_dim=16, ffn_dim=64)
TINY_RENDERER = WanSize(num_layers=1, num_attention_heads=2, attention_head_dim=8, ffn_dim=32)


def build(tiny: bool):
    sketcher_size, renderer_size = (TINY_SKETCHER, TINY_RENDERER) if tiny else (MID_SKETCHER, MID_RENDERER)
    pipe = tiny_wan_pipeline(transformer=tiny_wan_transformer(sketcher_size, seed=0))
    pipe.set_progress_bar_config(disable=True)
    renderer = tiny_wan_transformer(renderer_size, seed=1)
    call = dict(
        prompt="a red circle moving left",
        negative_prompt="blurry",
        height=64 if tiny else 128,
        width=64 if tiny else 128,
        num_frames=9 if tiny else 33,
        guidance_scale=5.0,
        output_type="latent",
        max_sequence_length=16,
    )
    return pipe, renderer, call


def timed(pipe, call, steps: int) -> float:
    start = time.perf_counter()
    pipe(**call, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start


def run(steps: int, switch_steps: list[int], repeats: int, tiny: bool) -> dict:
    pipe, renderer, call = build(tiny)
    configs: list[tuple[str, int | None]] = [("bare", None)] + [(f"srd k={k}", k) for k in switch_steps]
    times: dict[str, list[float]] = {name: [] for name, _ in configs}
    step_seconds: dict[str, list[float]] = {"sketch": [], "render": []}
    timed(pipe, call, 2)  # warm-up (allocator, thread pools)
    for _ in range(repeats):
        for name, k in configs:
            if k is None:
                srd.disable(pipe)
            else:
                srd.enable(pipe, renderer, switch="step", switch_step=k)
            times[name].append(timed(pipe, call, steps))
            trace = srd.last_trace(pipe) if k is not None else None
            if trace is not None and k in (0, steps):
                role = "render" if k == 0 else "sketch"
                step_seconds[role].extend(trace.step_seconds[1:])  # step 0 also carries set-up
    srd.disable(pipe)
    return {"times": times, "step_seconds": step_seconds, "steps": steps, "switch_steps": switch_steps}


def table(result: dict, repeats: int, tiny: bool) -> str:
    steps = result["steps"]
    median = {name: statistics.median(values) for name, values in result["times"].items()}
    t_sketch = statistics.median(result["step_seconds"]["sketch"])
    t_render = statistics.median(result["step_seconds"]["render"])
    bare = median["bare"]
    sketch_only = median[f"srd k={steps}"]
    lines = [
        f"CPU benchmark ({'tiny' if tiny else 'mid-size'} pair, {steps} steps, median of {repeats} interleaved rounds)",
        f"date {datetime.date.today()}, {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "",
        f"per-step time: sketcher {t_sketch * 1000:.1f} ms, renderer {t_render * 1000:.1f} ms, "
        f"ratio {t_sketch / t_render:.2f}x",
        f"plugin overhead (SRD with switch at N vs bare pipeline): {100 * (sketch_only / bare - 1):+.2f}%",
        "",
        "| run | seconds | measured speedup | ideal speedup | measured / ideal |",
        "|---|---:|---:|---:|---:|",
        f"| bare pipeline (sketcher only) | {bare:.3f} | 1.00x | 1.00x | - |",
    ]
    for k in result["switch_steps"]:
        seconds = median[f"srd k={k}"]
        measured = bare / seconds
        ideal = steps * t_sketch / (k * t_sketch + (steps - k) * t_render)
        lines.append(
            f"| SRD, switch at {k} | {seconds:.3f} | {measured:.2f}x | {ideal:.2f}x | {measured / ideal:.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models, a few seconds (used by the tests)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args(argv)
    steps = args.steps or (6 if args.tiny else 20)
    repeats = args.repeats or (2 if args.tiny else 5)
    switch_steps = sorted({0, steps // 4, steps // 2, (3 * steps) // 4, steps})
    result = run(steps, switch_steps, repeats, args.tiny)
    text = table(result, repeats, args.tiny)
    print(text)
    if args.append:
        path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        command = "python benchmarks/cpu.py" + (" --tiny" if args.tiny else "")
        with path.open("a") as handle:
            handle.write(f"\n### `{command}`\n\n```\n{text}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
