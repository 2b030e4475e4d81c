"""CPU benchmark: per-step cost of each model, end-to-end speedup at fixed switch steps, plugin overhead,
and the stacking rows (issue 19).

    python benchmarks/cpu.py                             # mid-size pair, 20 steps, prints the table
    python benchmarks/cpu.py --steps 10 --stack-k 3 --switch-steps 0,10   # the stacking bar: k = 3 of 10
    python benchmarks/cpu.py --append                    # ... and appends the table to BENCHMARKS.md
    python benchmarks/cpu.py --tiny                      # seconds; the code path the test suite runs

Every configuration is timed in interleaved rounds (one run of each per round, so drift on
a shared machine hits all alike) and the median over rounds is reported. The denoising
loop is timed end to end through the real WanPipeline (`output_type="latent"`, so the VAE
does not dilute the ratio; text encoding is included).

Stacking at switch step K (`--stack-k`): SRD alone, SRD with `render_guidance="off"`, and that
plus TeaCache on the renderer with a fixed skip pattern (a constant rescale polynomial, so
every other renderer call is computed; random weights have no realistic step-to-step dynamics,
so how many steps a trained renderer skips is TeaCache's own figure). Each row's ideal uses the
step times T_s, T_r of the switch-at-N and switch-at-0 runs: SRD N T_s / (K T_s + (N-K) T_r);
guidance-free N T_s / (K T_s + (N-K) T_r / 2); with TeaCache N T_s / (K T_s + c T_r / 2), c the
renderer calls TeaCache computed (a skipped call counted as free).
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
from srd_plugin import TeaCacheConfig  # noqa: E402
from srd_plugin.hooks.teacache import srd_teacache_stats  # noqa: E402
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


#: TeaCache with a fixed skip pattern: a constant rescale polynomial adds 1 per call, so with
#: threshold 1.5 every other call is computed (the first and last always are)
FIXED_SKIPS = TeaCacheConfig(threshold=1.5, coefficients=(1.0,))


def configurations(steps: int, switch_steps: list[int], stack_k: int | None) -> list[tuple[str, dict | None]]:
    """(name, SRD settings or None for the bare pipeline), in the order of one round."""
    configs: list[tuple[str, dict | None]] = [("bare", None)]
    configs += [(f"srd k={k}", dict(switch="step", switch_step=k)) for k in switch_steps]
    if stack_k is not None:
        fixed = dict(switch="step", switch_step=stack_k, render_guidance="off")
        configs += [("off", fixed), ("off+teacache", dict(fixed, teacache_renderer=FIXED_SKIPS))]
    return configs


def run(steps: int, switch_steps: list[int], repeats: int, tiny: bool, stack_k: int | None = None) -> dict:
    pipe, renderer, call = build(tiny)
    configs = configurations(steps, switch_steps, stack_k)
    times: dict[str, list[float]] = {name: [] for name, _ in configs}
    step_seconds: dict[str, list[float]] = {"sketch": [], "render": []}
    computed_calls: list[int] = []
    saved_calls: list[int] = []
    timed(pipe, call, 2)  # warm-up (allocator, thread pools)
    for round_index in range(repeats):
        print(f"round {round_index + 1}/{repeats}", file=sys.stderr, flush=True)
        for name, settings in configs:
            if settings is None:
                srd.disable(pipe)
            else:
                srd.enable(pipe, renderer, **settings)
            times[name].append(timed(pipe, call, steps))
            trace = srd.last_trace(pipe) if settings is not None else None
            k = settings.get("switch_step") if settings is not None else None
            if name.startswith("srd") and k in (0, steps):
                role = "render" if k == 0 else "sketch"
                step_seconds[role].extend(trace.step_seconds[1:])  # step 0 also carries set-up
            if name == "off":
                saved_calls.append(trace.guidance_calls_saved)
            if name == "off+teacache":
                computed_calls.append(srd_teacache_stats(pipe)["render"].computed_calls)
    srd.disable(pipe)
    return {
        "times": times,
        "step_seconds": step_seconds,
        "steps": steps,
        "switch_steps": switch_steps,
        "stack_k": stack_k,
        "renderer_calls_computed": computed_calls,
        "uncond_calls_saved": saved_calls,
    }


def ideal(steps: int, k: int, t_sketch: float, render_cost: float) -> float:
    """N T_s over k sketch steps plus `render_cost` seconds of rendering."""
    return steps * t_sketch / (k * t_sketch + render_cost)


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

    def row(label: str, name: str, best: float) -> str:
        measured = bare / median[name]
        return f"| {label} | {median[name]:.3f} | {measured:.2f}x | {best:.2f}x | {measured / best:.1%} |"

    for k in result["switch_steps"]:
        lines.append(row(f"SRD, switch at {k}", f"srd k={k}", ideal(steps, k, t_sketch, (steps - k) * t_render)))
    k = result["stack_k"]
    if k is not None:
        computed = statistics.median(result["renderer_calls_computed"])
        lines += [
            "",
            f"stacking at switch step {k} of {steps} (ideal: guidance-free render step = T_r / 2; with TeaCache "
            f"{computed:g} of {steps - k} renderer calls computed, a skipped call counted as free)",
            "",
            "| run | seconds | measured speedup | ideal speedup | measured / ideal |",
            "|---|---:|---:|---:|---:|",
            row(f"SRD alone, switch at {k}", f"srd k={k}", ideal(steps, k, t_sketch, (steps - k) * t_render)),
            row(
                "SRD + guidance-free rendering",
                "off",
                ideal(steps, k, t_sketch, (steps - k) * t_render / 2),
            ),
            row(
                "SRD + guidance-free rendering + TeaCache on the renderer (fixed skips)",
                "off+teacache",
                ideal(steps, k, t_sketch, computed * t_render / 2),
            ),
        ]
        off = bare / median["off"] / ideal(steps, k, t_sketch, (steps - k) * t_render / 2)
        lines.append("")
        lines.append(
            f"bar: SRD with render_guidance='off' at k = {k} reaches {off:.1%} of its ideal "
            f"({'meets' if off >= 0.95 else 'misses'} >= 95%); uncond calls served without a model per call: "
            f"{statistics.median(result['uncond_calls_saved']):g}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models, a few seconds (used by the tests)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--stack-k", type=int, default=None, help="switch step of the stacking rows (default N // 3)")
    parser.add_argument(
        "--switch-steps", default=None, help="comma list of switch steps to sweep (default 0, N/4, N/2, 3N/4, N)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args(argv)
    steps = args.steps or (6 if args.tiny else 20)
    repeats = args.repeats or (2 if args.tiny else 5)
    stack_k = args.stack_k if args.stack_k is not None else steps // 3
    if not 0 <= stack_k < steps:
        parser.error(f"--stack-k {stack_k}: a switch step in 0..{steps - 1} (the render phase must not be empty)")
    if args.threads:
        torch.set_num_threads(args.threads)
    sweep = (
        [int(k) for k in args.switch_steps.split(",")]
        if args.switch_steps
        else [0, steps // 4, steps // 2, (3 * steps) // 4]
    )
    if any(not 0 <= k <= steps for k in sweep):
        parser.error(f"--switch-steps {args.switch_steps}: switch steps in 0..{steps}")
    switch_steps = sorted({0, steps, stack_k, *sweep})  # 0 and N give the step times of the ideal
    result = run(steps, switch_steps, repeats, args.tiny, stack_k)
    text = table(result, repeats, args.tiny)
    print(text)
    if args.append:
        path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        command = "python " + " ".join(["benchmarks/cpu.py", *(argv if argv is not None else sys.argv[1:])])
        command = command.replace(" --append", "")
        with path.open("a") as handle:
            handle.write(f"\n### `{command}`\n\n```\n{text}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
