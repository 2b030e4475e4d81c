"""The `srd` command.

srd demo [--out DIR] [--steps N]   sketcher-only vs SRD on the tiny bundled models (CPU)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def _demo(args: argparse.Namespace) -> int:
    from . import disable, enable, last_trace
    from .testing import tiny_wan_pair
    from .video import write_video

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("building the tiny bundled Wan pair (random weights, CPU)...", file=sys.stderr)
    pipe, renderer = tiny_wan_pair()
    pipe.set_progress_bar_config(disable=True)
    call = dict(
        prompt=args.prompt,
        negative_prompt="blurry",
        height=64,
        width=64,
        num_frames=17,
        num_inference_steps=args.steps,
        guidance_scale=5.0,
        output_type="np",
        max_sequence_length=16,
    )
    results = {}
    for label in ("sketcher-only", "srd"):
        if label == "srd":
            enable(pipe, renderer)
        start = time.perf_counter()
        frames = pipe(**call, generator=torch.Generator().manual_seed(args.seed)).frames[0]
        results[label] = time.perf_counter() - start
        write_video(frames, out / f"{label}.mp4")
    trace = last_trace(pipe)
    disable(pipe)
    trace.save(out / "trace.json")
    print(trace.summary())
    speedup = results["sketcher-only"] / results["srd"]
    print(f"\n  {'run':<15}{'seconds':>9}")
    for label, seconds in results.items():
        print(f"  {label:<15}{seconds:>9.2f}")
    print(f"  speedup {speedup:.2f}x (wall time of the whole call, VAE and text encoder included)")
    print(f"\nwrote {out / 'sketcher-only.mp4'}, {out / 'srd.mp4'} and {out / 'trace.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srd", description="Sketch with a large model, render with a small one.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="sketcher-only vs SRD on the tiny bundled models (CPU)")
    demo.add_argument("--out", default="srd-demo", help="output folder (default: srd-demo)")
    demo.add_argument("--steps", type=int, default=20, help="denoising steps (default: 20)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--prompt", default="a red circle moving left")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
