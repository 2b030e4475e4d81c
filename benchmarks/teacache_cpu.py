"""CPU benchmark: transformer blocks computed by SRD + TeaCache vs SRD alone, and what it costs in accuracy.

    python benchmarks/teacache_cpu.py            # tiny pair, 50 steps, a threshold sweep
    python benchmarks/teacache_cpu.py --append   # ... and appends the table to BENCHMARKS.md
    python benchmarks/teacache_cpu.py --tiny     # seconds; the code path the test suite runs

Blocks are counted where they really run (a pre-hook on each block's self-attention), for
both models, over one whole generation with the default adaptive switch; the relative error
is ||x - x_ref|| / ||x_ref|| of the final latents against uncached SRD (same seed). The bar:
at the largest threshold whose error stays within 5%, SRD + TeaCache computes at least 30%
fewer blocks than SRD alone.

What the figures mean: TeaCache's decisions depend only on the timestep embedding, so the
skip pattern follows the schedule as it would on a real model; the error does not. Random
tiny transformers barely change their output between neighbouring steps, so reusing a
residual costs them far less than it costs a trained Wan2.1 (whose tolerable thresholds the
TeaCache authors measured: 0.08 for 1.3B, 0.2 for 14B, with fitted coefficients). The
identity polynomial is used here because no coefficients exist for random models.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import srd_plugin as srd  # noqa: E402
from srd_plugin import TeaCacheConfig  # noqa: E402
from srd_plugin.testing import tiny_call_kwargs, tiny_wan_pipeline, tiny_wan_renderer  # noqa: E402

IDENTITY = (1.0, 0.0)
MAX_ERROR = 0.05
MIN_REDUCTION = 0.30


@dataclass
class Row:
    threshold: float | None  # None: SRD alone
    blocks: int
    switch_step: int | None
    error: float

    def reduction(self, baseline: int) -> float:
        return 1.0 - self.blocks / baseline


def block_counter(*models: torch.nn.Module) -> dict[str, int]:
    counter = {"blocks": 0}

    def count(*_: object) -> None:
        counter["blocks"] += 1

    for model in models:
        for block in model.blocks:
            block.attn1.register_forward_pre_hook(count)
    return counter


def run(steps: int, thresholds: list[float]) -> list[Row]:
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    renderer = tiny_wan_renderer()
    counter = block_counter(pipe.transformer, renderer)

    def generate(teacache: TeaCacheConfig | None) -> tuple[torch.Tensor, int, int | None]:
        srd.enable(pipe, renderer, teacache=teacache)
        counter["blocks"] = 0
        latents = pipe(**tiny_call_kwargs(steps)).frames
        return latents, counter["blocks"], srd.last_trace(pipe).switch_step

    reference, blocks, switch_step = generate(None)
    rows = [Row(None, blocks, switch_step, 0.0)]
    for threshold in thresholds:
        latents, blocks, switch_step = generate(TeaCacheConfig(threshold=threshold, coefficients=IDENTITY))
        error = ((latents - reference).float().norm() / reference.float().norm()).item()
        rows.append(Row(threshold, blocks, switch_step, error))
    srd.disable(pipe)
    return rows


def best(rows: list[Row]) -> Row | None:
    """The row with the fewest blocks among those within the error bound."""
    within = [row for row in rows[1:] if row.error <= MAX_ERROR]
    return min(within, key=lambda row: row.blocks) if within else None


def table(rows: list[Row], steps: int) -> str:
    baseline = rows[0].blocks
    lines = [
        f"TeaCache on a tiny random Wan pair under SRD ({steps} steps, adaptive switch, identity polynomial)",
        f"date {datetime.date.today()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "",
        "| run | threshold | blocks computed | fewer than SRD alone | switch step | rel. error of latents |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        name = "SRD alone" if row.threshold is None else "SRD + TeaCache"
        threshold = "-" if row.threshold is None else f"{row.threshold:g}"
        lines.append(
            f"| {name} | {threshold} | {row.blocks} | {row.reduction(baseline):.1%} | {row.switch_step} | "
            f"{row.error:.2%} |"
        )
    chosen = best(rows)
    lines.append("")
    if chosen is None:
        lines.append(f"no threshold keeps the error within {MAX_ERROR:.0%}: bar NOT met")
    else:
        met = chosen.reduction(baseline) >= MIN_REDUCTION
        lines.append(
            f"largest saving within {MAX_ERROR:.0%} error: threshold {chosen.threshold:g}, {chosen.blocks} blocks vs "
            f"{baseline} for SRD alone ({chosen.reduction(baseline):.1%} fewer, error {chosen.error:.2%}): "
            f"bar (>= {MIN_REDUCTION:.0%} fewer) {'met' if met else 'NOT met'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="few steps and thresholds, seconds (used by the tests)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args(argv)
    steps = args.steps or (12 if args.tiny else 50)
    thresholds = [1.0, 3.0] if args.tiny else [0.4, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0]
    text = table(run(steps, thresholds), steps)
    print(text)
    if args.append:
        path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        command = "python benchmarks/teacache_cpu.py" + (" --tiny" if args.tiny else "")
        with path.open("a") as handle:
            handle.write(f"\n### `{command}`\n\n```\n{text}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
