"""Quality benchmark on the miniature world: does SRD keep the sketcher's semantics at lower cost?

    python benchmarks/quality.py                         # held-out prompts, 8 seeds, 20 steps
    python benchmarks/quality.py --split validation      # the split any tuning may look at
    python benchmarks/quality.py --append --plot benchmarks/quality.png
    python benchmarks/quality.py --quick                 # seconds; the path the test suite runs

Every method generates the same (prompt, seed) clips from the same initial noise with the
shipped miniature pair, and the procedural evaluators of `srd_plugin.miniature.evaluate`
score them: semantic accuracy (colour, shape and direction all as prompted), the detail
score (PSNR against a clean re-rendering of what was detected), edge sharpness and
background noise. Methods:

* sketcher only, renderer only (all N steps on one model);
* SRD adaptive (the adaptive policy with settings chosen on the validation split,
  `ADAPTIVE_THRESHOLD`, `ADAPTIVE_MIN_SKETCH_STEPS`) and SRD with fixed switch steps;
* step reduction: the sketcher alone with M < N steps, M chosen after the first pass so that
  its denoising compute equals SRD adaptive's measured mean (it runs in a second pass with a
  second sketcher-only run, the base of that pass's speedups);
* TeaCache at about the same compute: the sketcher alone with `srd_plugin.hooks.teacache`, its
  threshold a fixed setting chosen on the validation split (see `teacache_method`);
* guidance-free rendering (issue 19): SRD adaptive and SRD with the switch at N/4 again with
  `render_guidance="off"`, beside the same switch with the host's guidance. It adds no setting
  to choose: the policy settings are those of the rows beside them.

Methods are interleaved per clip, so drift on a shared machine hits all alike. Wall time is
the whole pipeline call (text encoding and VAE decoding included); "denoise" is the sum of
the per-step times from the SRD trace.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import srd_plugin as srd  # noqa: E402
from benchmarks.shapes import cpu_name  # noqa: E402
from srd_plugin.hooks.teacache import IDENTITY, teacache_stats  # noqa: E402
from srd_plugin.miniature import dataset, evaluate  # noqa: E402
from srd_plugin.miniature.models import DEFAULT_STEPS, load_miniature_pipeline, miniature_call_kwargs  # noqa: E402

#: the adaptive policy of the "SRD adaptive" row, chosen on the validation split (docs/miniature.md,
#: "Choosing the settings"): the most accurate setting whose whole-call speedup there was >= 2.1x
ADAPTIVE_THRESHOLD = 0.2
ADAPTIVE_MIN_SKETCH_STEPS = 4
#: TeaCache threshold of the "TeaCache" row: on the validation split it computes 14 of 40 sketcher
#: calls, the nearest to SRD adaptive's share of the sketcher's denoising time there (38%)
TEACACHE_THRESHOLD = 0.3


@dataclass(frozen=True)
class Method:
    """One way of generating: a step count and the SRD settings (always enabled, so every run has a trace)."""

    label: str
    num_steps: int
    settings: dict[str, Any]


@dataclass
class Result:
    method: Method
    scores: list[evaluate.ClipScore] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    denoise_seconds: list[float] = field(default_factory=list)
    sketch_steps: list[int] = field(default_factory=list)
    #: with TeaCache: (sketcher calls computed, sketcher calls made) per clip
    teacache_calls: list[tuple[int, int]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        summary = evaluate.summarise(self.scores)
        return {
            "method": self.method.label,
            "steps": self.method.num_steps,
            "sketch_steps": float(np.mean(self.sketch_steps)),
            "clips": summary.count,
            "semantic": summary.semantic,
            "colour": summary.colour,
            "shape": summary.shape,
            "direction": summary.direction,
            "detail_db": summary.detail,
            "sharpness": summary.sharpness,
            "background_noise": summary.background_noise,
            "seconds": statistics.mean(self.seconds),
            "denoise_seconds": statistics.mean(self.denoise_seconds),
            "teacache_computed_calls": _mean_or_none([computed for computed, _ in self.teacache_calls]),
            "teacache_calls": _mean_or_none([calls for _, calls in self.teacache_calls]),
        }


def _mean_or_none(values: list[int]) -> float | None:
    return float(np.mean(values)) if values else None


def first_pass_methods(steps: int, fixed: list[int], adaptive: dict[str, Any]) -> list[Method]:
    methods = [
        Method("sketcher only", steps, {"switch": "step", "switch_step": steps}),
        Method("renderer only", steps, {"switch": "step", "switch_step": 0}),
        Method("SRD adaptive", steps, {"switch": "adaptive", **adaptive}),
    ]
    methods += [Method(f"SRD switch at {k}", steps, {"switch": "step", "switch_step": k}) for k in fixed]
    return methods + guidance_free_methods(methods[2:], steps)


def guidance_free_methods(srd_methods: list[Method], steps: int) -> list[Method]:
    """SRD adaptive and the switch at N/4 again, rendering without guidance (`render_guidance="off"`)."""
    keep = {"SRD adaptive", f"SRD switch at {steps // 4}"}
    return [
        Method(f"{m.label}, render guidance off", steps, {**m.settings, "render_guidance": "off"})
        for m in srd_methods
        if m.label in keep
    ]


def timed_call(pipe: Any, renderer: Any, method: Method, kwargs: dict[str, Any], result: Result) -> np.ndarray:
    """One whole pipeline call with SRD enabled as `method` says (so that every method has a trace);
    appends its wall time, denoising time, sketch steps and TeaCache calls to `result`; the frames."""
    srd.enable(pipe, renderer, **method.settings)
    start = time.perf_counter()
    frames = pipe(**kwargs).frames[0]
    result.seconds.append(time.perf_counter() - start)
    trace = srd.last_trace(pipe)
    result.denoise_seconds.append(trace.total_seconds)
    result.sketch_steps.append(len(trace.steps_of("sketch")))
    stats = teacache_stats(pipe.transformer)
    if stats is not None:
        result.teacache_calls.append((stats.computed_calls, len(stats.decisions)))
    return frames


def generate(pipe: Any, renderer: Any, method: Method, prompt: dataset.Prompt, seed: int, result: Result) -> None:
    kwargs = miniature_call_kwargs(prompt.text, seed=seed, num_inference_steps=method.num_steps)
    result.scores.append(evaluate.score_clip(timed_call(pipe, renderer, method, kwargs, result), prompt))


def run_pass(pipe: Any, renderer: Any, methods: list[Method], clips: list[tuple[dataset.Prompt, int]]) -> list[Result]:
    results = [Result(m) for m in methods]
    for prompt, seed in clips:
        for result in results:
            generate(pipe, renderer, result.method, prompt, seed, result)
    srd.disable(pipe)
    return results


def reference_row(pipe: Any, clips: list[tuple[dataset.Prompt, int]]) -> dict[str, Any]:
    """The ceiling: the ground-truth clips of the same prompts and seeds, through the VAE and back."""
    scores = []
    with torch.no_grad():
        for prompt, seed in clips:
            x = torch.from_numpy(dataset.to_model_range(dataset.make_clip(prompt, seed)))[None]
            decoded = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample[0]
            frames = ((decoded.clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).numpy()
            scores.append(evaluate.score_clip(frames, prompt))
    summary = evaluate.summarise(scores)
    return {"method": "reference: true clips through the VAE", **asdict(summary)}


def matched_steps(steps: int, srd_denoise: list[float], sketcher_denoise: list[float]) -> int:
    """The step count at which the sketcher alone costs SRD's measured denoising compute (step reduction)."""
    return max(1, round(steps * statistics.mean(srd_denoise) / statistics.mean(sketcher_denoise)))


def with_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds whole-call and denoising speedups against the pass's first row (its sketcher-only base)."""
    for row in rows:
        row["speedup"] = rows[0]["seconds"] / row["seconds"]
        row["denoise_speedup"] = rows[0]["denoise_seconds"] / row["denoise_seconds"]
    return rows


def append_to_benchmarks(script: str, argv: list[str] | None, text: str) -> None:
    """Appends `text` to BENCHMARKS.md under the command line that produced it."""
    command = "python " + " ".join([script, *(argv if argv is not None else sys.argv[1:])])
    path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
    with path.open("a") as handle:
        handle.write(f"\n### `{command}`\n\n{text}\n")


def teacache_method(steps: int, threshold: float) -> Method:
    """The sketcher alone with TeaCache (`srd_plugin.hooks.teacache`) at `threshold`.

    The miniature sketcher is no published model, so TeaCache has no fitted rescaling
    polynomial for it: the identity polynomial is given explicitly (the rescaled distance is
    the relative change of the time embedding itself). The threshold is a fixed setting of
    this benchmark, chosen on the validation split so that TeaCache's denoising compute is
    about SRD adaptive's (`--teacache-threshold`); it is never fitted on the test prompts.
    """
    config = srd.TeaCacheConfig(threshold=threshold, coefficients=IDENTITY)
    return Method(
        f"TeaCache (threshold {threshold:g})", steps, {"switch": "step", "switch_step": steps, "teacache": config}
    )


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    pipe, renderer = load_miniature_pipeline(args.weights)
    prompts = dataset.prompts_of(args.split)[: args.prompts]
    clips = [(p, 1000 + s) for p in prompts for s in range(args.seeds)]  # seeds never used in training
    adaptive = {
        "threshold": args.threshold,
        "min_sketch_steps": args.min_sketch_steps,
        "max_sketch_steps": args.max_sketch_steps,
    }
    fixed = sorted({max(1, args.steps // 5), args.steps // 4, args.steps // 2})
    methods = first_pass_methods(args.steps, fixed, adaptive)
    pipe(**miniature_call_kwargs(prompts[0].text, num_inference_steps=2))  # warm-up
    started = time.perf_counter()
    results = run_pass(pipe, renderer, methods, clips)
    by_label = {r.method.label: r for r in results}
    reduced_steps = matched_steps(
        args.steps, by_label["SRD adaptive"].denoise_seconds, by_label["sketcher only"].denoise_seconds
    )
    reduction = Method(
        f"step reduction ({reduced_steps} steps)", reduced_steps, {"switch": "step", "switch_step": reduced_steps}
    )
    # the second pass runs the sketcher again, so that its rows' speedups compare like with like
    # even when the machine's load changed between the passes
    second = [Method("sketcher only (pass 2)", args.steps, methods[0].settings)]
    if args.teacache_threshold > 0:
        second.append(teacache_method(args.steps, args.teacache_threshold))
    second.append(reduction)
    second_results = run_pass(pipe, renderer, second, clips)
    rows = [row for batch in (results, second_results) for row in with_speedups([r.row() for r in batch])]
    return {
        "split": args.split,
        "prompts": [p.text for p in prompts],
        "seeds": args.seeds,
        "steps": args.steps,
        "adaptive": adaptive,
        "rows": rows,
        "reference": reference_row(pipe, clips),
        "benchmark_seconds": time.perf_counter() - started,
        "date": str(datetime.date.today()),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"Miniature quality benchmark: {report['split']} split, {len(report['prompts'])} prompts x "
        f"{report['seeds']} seeds, {report['steps']} steps, adaptive {report['adaptive']}",
        f"date {report['date']}, {report['cpu']}, {report['threads']} threads, torch {report['torch']}, "
        f"benchmark took {report['benchmark_seconds']:.0f} s",
        "",
        "| method | sketch steps | semantic % | colour % | shape % | direction % | detail dB | sharpness "
        "| bg noise | seconds | denoise s | speedup | denoise speedup |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        steps = f"{row['sketch_steps']:.1f}/{row['steps']}"
        if row.get("teacache_calls"):
            steps += f" ({row['teacache_computed_calls']:.1f} of {row['teacache_calls']:.0f} calls computed)"
        lines.append(
            f"| {row['method']} | {steps} | {row['semantic']:.1f} | "
            f"{row['colour']:.1f} | {row['shape']:.1f} | {row['direction']:.1f} | {row['detail_db']:.2f} | "
            f"{row['sharpness']:.3f} | {row['background_noise']:.4f} | {row['seconds']:.3f} | "
            f"{row['denoise_seconds']:.3f} | {row['speedup']:.2f}x | {row['denoise_speedup']:.2f}x |"
        )
    ref = report["reference"]
    lines.append(
        f"| {ref['method']} | - | {ref['semantic']:.1f} | {ref['colour']:.1f} | {ref['shape']:.1f} | "
        f"{ref['direction']:.1f} | {ref['detail']:.2f} | {ref['sharpness']:.3f} | {ref['background_noise']:.4f} "
        "| - | - | - | - |"
    )
    if not any(row["method"].startswith("TeaCache") for row in report["rows"]):
        lines += ["", "TeaCache: not measured (--teacache-threshold 0)."]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    reference = report["reference"]
    panels = (
        ("semantic", "semantic accuracy (%)", reference["semantic"]),
        ("detail_db", "detail (dB)", reference["detail"]),
    )
    title = f"Miniature world, {report['split']} prompts: quality versus time"
    return plot_panels(report["rows"], panels, "true clips through the VAE", title, path)


def plot_panels(
    rows: list[dict[str, Any]], panels: tuple[tuple[str, str, float], ...], reference: str, title: str, path: Path
) -> Path:
    """One panel per (row key, axis label, reference value): every row's score against its wall time,
    the reference (what true clips score) as a dashed line; second-pass bases are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    for axis, (key, label, value) in zip(axes, panels):
        axis.axhline(value, color="grey", linestyle="--", linewidth=1)
        axis.annotate(
            reference,
            (0.01, value),
            fontsize=7,
            xycoords=("axes fraction", "data"),
            xytext=(0, 3),
            textcoords="offset points",
            color="grey",
        )
        for row in rows:
            if row["method"].endswith("(pass 2)"):
                continue  # the second pass's own base: the same clips as "sketcher only"
            axis.scatter(row["seconds"], row[key], s=30)
            axis.annotate(
                row["method"], (row["seconds"], row[key]), fontsize=7, xytext=(4, 3), textcoords="offset points"
            )
        axis.set_xlabel("wall time per clip (s)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 prompts, 1 seed, 6 steps: seconds (used by the tests)")
    parser.add_argument("--split", default="test", choices=dataset.SPLITS)
    parser.add_argument("--prompts", type=int, default=None, help="use the first N prompts of the split")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threshold", type=float, default=ADAPTIVE_THRESHOLD)
    parser.add_argument("--min-sketch-steps", type=int, default=ADAPTIVE_MIN_SKETCH_STEPS)
    parser.add_argument(
        "--max-sketch-steps", type=int, default=None, help="adaptive upper bound (default: the policy's, 0.6 N)"
    )
    parser.add_argument(
        "--teacache-threshold",
        type=float,
        default=TEACACHE_THRESHOLD,
        help=f"TeaCache threshold of the TeaCache row (default {TEACACHE_THRESHOLD:g}, chosen on the validation "
        "split for about SRD adaptive's compute; 0: no TeaCache row)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--weights", type=Path, default=None, help="a folder with pipeline/ and renderer/ (default: shipped)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the full report as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="write the quality-versus-time picture (PNG)")
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args(argv)
    args.prompts = args.prompts or (2 if args.quick else None)
    args.seeds = args.seeds or (1 if args.quick else 8)
    args.steps = args.steps or (6 if args.quick else DEFAULT_STEPS)
    if args.quick:
        args.min_sketch_steps = min(args.min_sketch_steps, 2)
        args.max_sketch_steps = None
    report = benchmark(args)
    text = table(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.plot:
        print(f"wrote {plot(report, args.plot)}")
    if args.append:
        append_to_benchmarks("benchmarks/quality.py", argv, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
