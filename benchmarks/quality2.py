"""Quality benchmark of the second miniature world (issue 20): does SRD keep the sketcher's semantics
and detail at half its cost, and beat step reduction and TeaCache at the same compute?

    python benchmarks/quality2.py --result DIR --sweep               # validation: the rows to choose settings on
    python benchmarks/quality2.py --result DIR --split test --append  # once, with the chosen settings
    python benchmarks/quality2.py --tiny-work /tmp/t --quick          # a tiny pair trained first; seconds

`DIR` is the `result/` folder `python -m srd_plugin.miniature.train2 --work W` wrote (W/result). Every
method generates the same clips (`train2.clip_set(split, N)`: a quarter one-object, the rest
two-object, seeds 1000+, never trained on) from the same initial noise, interleaved per clip so that
drift on a shared machine hits all alike, scored by the procedural evaluators: semantic accuracy
(count, colour, shape, direction all as prompted), reference-free detail fidelity (`fidelity2`: dB
to the nearest grating of the world, and the fitted contrast) and pattern energy. Rows:

* sketcher only, renderer only, specialist only (all N steps on one model; the specialist row checks
  its premise: trained on low noise only, it should fail alone);
* SRD adaptive with the renderer and, its own row, with the low-noise specialist (`ADAPTIVE_*`);
* SRD with fixed switch steps (N/4, N/2) with the renderer;
* SRD adaptive with the renderer again, with `render_guidance="off"` (issue 19);
* second pass, with its own sketcher-only base: TeaCache on the sketcher (`TEACACHE_THRESHOLD`) and
  step reduction to SRD adaptive's measured denoising compute (`quality.matched_steps`).

Wall time is the whole pipeline call (text encoding and VAE decoding included); the denoise speedup
comes from the SRD trace's per-step times. `--sweep` (validation only) runs a grid of the settings
instead, one pass, and suggests a choice by the first world's rule: the most accurate SRD adaptive
setting at >= 2x whole-call speedup, and the TeaCache threshold and step count nearest its compute.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import srd_plugin as srd  # noqa: E402
from benchmarks.quality import (  # noqa: E402
    Method,
    Result,
    append_to_benchmarks,
    matched_steps,
    plot_panels,
    teacache_method,
    timed_call,
    with_speedups,
)
from benchmarks.shapes import cpu_name  # noqa: E402
from srd_plugin.miniature import evaluate2, fidelity2, train2, world2  # noqa: E402
from srd_plugin.miniature.models2 import DEFAULT_STEPS, call_kwargs, load_second_pipeline  # noqa: E402

#: the adaptive policy of the "SRD adaptive" rows. PROVISIONAL: the first world's validation choice
#: (its min sketch steps scaled from 20 to 30 steps), kept until `--sweep` has been run on the
#: validation split of a trained second pair; replace them with that choice before the test run
ADAPTIVE_THRESHOLD = 0.2
ADAPTIVE_MIN_SKETCH_STEPS = 6
#: the TeaCache row's threshold; PROVISIONAL as above (the first world's choice)
TEACACHE_THRESHOLD = 0.3
#: the whole-call speedup an SRD setting must reach on validation to be chosen (issue 20's bar)
TARGET_SPEEDUP = 2.0
#: the `--sweep` grid: adaptive thresholds x min sketch steps (as fractions of N) with each small
#: model, TeaCache thresholds, step-reduction step counts (fractions of N)
SWEEP_THRESHOLDS = (0.1, 0.2, 0.3, 0.5)
SWEEP_MIN_SKETCH_FRACTIONS = (0.1, 0.2, 0.3)
SWEEP_TEACACHE_THRESHOLDS = (0.1, 0.2, 0.3, 0.5)
SWEEP_REDUCED_FRACTIONS = (0.2, 0.3, 0.4, 0.5)
SMALL_MODELS = ("renderer", "specialist")


@dataclass(frozen=True)
class Method2(Method):
    """A method of `quality.Method` with the small model SRD hands the late steps to (renderer or specialist)."""

    small: str = "renderer"


@dataclass
class Result2(Result):
    """`quality.Result` with the second world's scores: `scores` holds `evaluate2.SemanticScore`s."""

    fidelities: list[fidelity2.FidelityScore] = field(default_factory=list)
    energies: list[float] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        summary = evaluate2.summarise(self.scores, fidelities=self.fidelities)
        settings = self.method.settings
        teacache = settings.get("teacache")
        return {
            "method": self.method.label,
            "small_model": self.method.small,
            "steps": self.method.num_steps,
            "switch": settings["switch"],
            "threshold": settings.get("threshold"),
            "min_sketch_steps": settings.get("min_sketch_steps"),
            "teacache_threshold": teacache.threshold if teacache is not None else None,
            "sketch_steps": float(np.mean(self.sketch_steps)),
            "clips": summary.count,
            **_score_columns(summary, self.energies),
            "seconds": statistics.mean(self.seconds),
            "denoise_seconds": statistics.mean(self.denoise_seconds),
            "teacache_computed_calls": float(np.mean([c for c, _ in self.teacache_calls]))
            if self.teacache_calls
            else None,
            "teacache_calls": float(np.mean([n for _, n in self.teacache_calls])) if self.teacache_calls else None,
        }


def _score_columns(summary: evaluate2.Summary2, energies: list[float]) -> dict[str, float | None]:
    return {
        "semantic": summary.semantic,
        "count": summary.count_accuracy,
        "colour": summary.colour,
        "shape": summary.shape,
        "direction": summary.direction,
        "fidelity_db": summary.fidelity_db,
        "contrast": summary.fidelity_contrast,
        "pattern_energy": float(np.mean(energies)),
    }


def _step(label: str, steps: int, switch_step: int, small: str = "renderer") -> Method2:
    return Method2(label, steps, {"switch": "step", "switch_step": switch_step}, small)


def _adaptive(label: str, steps: int, adaptive: dict[str, Any], small: str = "renderer", **extra: Any) -> Method2:
    return Method2(label, steps, {"switch": "adaptive", **adaptive, **extra}, small)


def _teacache(steps: int, threshold: float) -> Method2:
    method = teacache_method(steps, threshold)
    return Method2(method.label, method.num_steps, method.settings)


def first_pass_methods(steps: int, adaptive: dict[str, Any]) -> list[Method2]:
    """Every first-pass row, in table order; `adaptive` the SRD adaptive policy's settings."""
    fixed = sorted({max(1, steps // 4), steps // 2})
    return [
        _step("sketcher only", steps, steps),
        _step("renderer only", steps, 0),
        _step("specialist only", steps, 0, "specialist"),
        _adaptive("SRD adaptive", steps, adaptive),
        _adaptive("SRD adaptive, specialist", steps, adaptive, "specialist"),
        *[_step(f"SRD switch at {k}", steps, k) for k in fixed],
        _adaptive("SRD adaptive, render guidance off", steps, adaptive, render_guidance="off"),
    ]


def sweep_methods(steps: int, max_sketch_steps: int | None) -> list[Method2]:
    """The `--sweep` grid, after its sketcher-only base: one pass, so every speedup has the same base."""
    methods = [_step("sketcher only", steps, steps)]
    minimums = sorted({max(1, round(steps * f)) for f in SWEEP_MIN_SKETCH_FRACTIONS})
    for small in SMALL_MODELS:
        name = "SRD adaptive" if small == "renderer" else "SRD adaptive, specialist"
        for threshold in SWEEP_THRESHOLDS:
            for minimum in minimums:
                adaptive = {"threshold": threshold, "min_sketch_steps": minimum, "max_sketch_steps": max_sketch_steps}
                methods.append(_adaptive(f"{name} ({threshold:g}, min {minimum})", steps, adaptive, small))
    methods += [_teacache(steps, threshold) for threshold in SWEEP_TEACACHE_THRESHOLDS]
    reduced = sorted({max(1, round(steps * f)) for f in SWEEP_REDUCED_FRACTIONS})
    return methods + [_step(f"step reduction ({m} steps)", m, m) for m in reduced]


def generate(pipe: Any, smalls: dict[str, Any], result: Result2, prompt: world2.Prompt2, seed: int) -> np.ndarray:
    """One clip by `result.method` (timed whole, scored, appended to `result`); its frames."""
    method = result.method
    kwargs = call_kwargs(prompt.text, seed, method.num_steps)
    frames = timed_call(pipe, smalls[method.small], method, kwargs, result)
    result.scores.append(evaluate2.score_semantics(frames, prompt))
    result.fidelities.append(fidelity2.score_fidelity(frames, prompt))
    result.energies.append(evaluate2.pattern_energy(frames))
    return frames


def run_pass(pipe: Any, smalls: dict[str, Any], methods: list[Method2], clips: list) -> list[Result2]:
    """All `methods` on every clip, interleaved per clip."""
    results = [Result2(m) for m in methods]
    for prompt, seed in clips:
        for result in results:
            generate(pipe, smalls, result, prompt, seed)
    srd.disable(pipe)
    return results


def reference_row(clips: list[tuple[world2.Prompt2, int]]) -> dict[str, Any]:
    """The ceiling: the true clips of the same prompts and seeds, scored as generations are."""
    semantics, fidelities, energies = [], [], []
    for prompt, seed in clips:
        clip = world2.make_clip(prompt, seed)
        semantics.append(evaluate2.score_semantics(clip, prompt))
        fidelities.append(fidelity2.score_fidelity(clip, prompt))
        energies.append(evaluate2.pattern_energy(clip))
    summary = evaluate2.summarise(semantics, fidelities=fidelities)
    return {"method": "reference: true clips", **_score_columns(summary, energies)}


def suggest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep's choice per small model: the most accurate SRD adaptive setting (semantics, then
    fidelity) at >= TARGET_SPEEDUP whole-call speedup, and the TeaCache threshold and step count whose
    denoise speedup is nearest its own. None where no setting reaches the speedup."""
    choice: dict[str, Any] = {}
    for small in SMALL_MODELS:
        fast = [
            r
            for r in rows
            if r["switch"] == "adaptive" and r["small_model"] == small and r["speedup"] >= TARGET_SPEEDUP
        ]
        best = max(fast, key=lambda r: (r["semantic"], r["fidelity_db"]), default=None)
        choice[small] = None if best is None else {k: best[k] for k in ("method", "threshold", "min_sketch_steps")}
    best = choice["renderer"]
    if best is not None:
        chosen = next(r for r in rows if r["method"] == best["method"])

        def nearest(rows_of: list[dict[str, Any]]) -> dict[str, Any]:
            return min(rows_of, key=lambda r: abs(r["denoise_speedup"] - chosen["denoise_speedup"]))

        choice["teacache_threshold"] = nearest([r for r in rows if r["teacache_threshold"]])["teacache_threshold"]
        choice["reduced_steps"] = nearest([r for r in rows if r["method"].startswith("step reduction")])["steps"]
    return choice


def benchmark(args: argparse.Namespace, result_dir: Path) -> dict[str, Any]:
    """The rows of `args.split` (or the sweep's), with the true clips' reference row."""
    torch.set_num_threads(args.threads)
    pipe, smalls = load_second_pipeline(result_dir)
    clips = train2.clip_set(args.split, args.clips)
    adaptive = {
        "threshold": args.threshold,
        "min_sketch_steps": args.min_sketch_steps,
        "max_sketch_steps": args.max_sketch_steps,
    }
    pipe(**call_kwargs(clips[0][0].text, 0, 2))  # warm-up, untimed
    for small in smalls.values():
        with srd.sketch_render(pipe, small, switch="step", switch_step=1):
            pipe(**call_kwargs(clips[0][0].text, 0, 2))
    started = time.perf_counter()
    report: dict[str, Any] = {"mode": "sweep" if args.sweep else "benchmark"}
    if args.sweep:
        rows = with_speedups(
            [r.row() for r in run_pass(pipe, smalls, sweep_methods(args.steps, args.max_sketch_steps), clips)]
        )
        report["suggestion"] = suggest(rows)
    else:
        results = run_pass(pipe, smalls, first_pass_methods(args.steps, adaptive), clips)
        by_label = {r.method.label: r for r in results}
        reduced = matched_steps(
            args.steps, by_label["SRD adaptive"].denoise_seconds, by_label["sketcher only"].denoise_seconds
        )
        # the second pass runs the sketcher again: its rows' speedups compare like with like
        second = [
            _step("sketcher only (pass 2)", args.steps, args.steps),
            _teacache(args.steps, args.teacache_threshold),
            _step(f"step reduction ({reduced} steps)", reduced, reduced),
        ]
        second_results = run_pass(pipe, smalls, second, clips)
        rows = [row for batch in (results, second_results) for row in with_speedups([r.row() for r in batch])]
    return {
        **report,
        "split": args.split,
        "result": str(result_dir),
        "clips": [[prompt.text, seed] for prompt, seed in clips],
        "steps": args.steps,
        "adaptive": adaptive,
        "teacache_threshold": args.teacache_threshold,
        "rows": rows,
        "reference": reference_row(clips),
        "benchmark_seconds": time.perf_counter() - started,
        "date": str(datetime.date.today()),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def table(report: dict[str, Any]) -> str:
    """The report as a markdown table (every row, then the true clips' reference)."""
    settings = (
        "the grid's settings"
        if report["mode"] == "sweep"
        else (f"adaptive {report['adaptive']}, TeaCache threshold {report['teacache_threshold']:g}")
    )
    lines = [
        f"Second miniature world, {report['mode']}: {report['split']} split, {len(report['clips'])} clips, "
        f"{report['steps']} steps, {settings}",
        f"date {report['date']}, {report['cpu']}, {report['threads']} threads, torch {report['torch']}, "
        f"benchmark took {report['benchmark_seconds']:.0f} s",
        "",
        "| method | sketch steps | semantic % | count % | colour % | shape % | direction % | fidelity dB | contrast "
        "| pattern energy | seconds | speedup | denoise speedup |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        steps = f"{row['sketch_steps']:.1f}/{row['steps']}"
        if row["teacache_calls"]:
            steps += f" ({row['teacache_computed_calls']:.1f} of {row['teacache_calls']:.0f} calls computed)"
        lines.append(
            f"| {row['method']} | {steps} | {_scores(row)} | {row['seconds']:.3f} | {row['speedup']:.2f}x "
            f"| {row['denoise_speedup']:.2f}x |"
        )
    lines.append(f"| {report['reference']['method']} | - | {_scores(report['reference'])} | - | - | - |")
    if "suggestion" in report:
        lines += ["", f"Suggested (validation only; >= {TARGET_SPEEDUP:g}x): {json.dumps(report['suggestion'])}"]
    return "\n".join(lines)


def _scores(row: dict[str, Any]) -> str:
    return (
        f"{row['semantic']:.1f} | {row['count']:.1f} | {row['colour']:.1f} | {row['shape']:.1f} | "
        f"{row['direction']:.1f} | {row['fidelity_db']:.2f} | {row['contrast']:.3f} | {row['pattern_energy']:.2f}"
    )


def check_args(args: argparse.Namespace) -> None:
    """Refuses what cannot run or would break the benchmark's honesty rules, before any work."""
    if args.sweep and args.split == "test":
        raise ValueError(
            "--sweep chooses settings, and settings may be chosen on the validation split only (the test "
            "split is run once, with settings fixed beforehand): run --sweep --split validation, set the "
            "chosen values (flags or the module constants), then run --split test without --sweep"
        )
    if (args.result is None) == (args.tiny_work is None):
        raise ValueError(
            "give exactly one of --result DIR (the result/ folder `python -m srd_plugin.miniature.train2 "
            "--work W` wrote: W/result) and --tiny-work DIR (trains a tiny pair there first)"
        )
    if args.clips < 1:
        raise ValueError(f"--clips must be >= 1, got {args.clips}")
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2 (SRD needs a step to sketch and one to render), got {args.steps}")
    if not 1 <= args.min_sketch_steps < args.steps:
        raise ValueError(
            f"--min-sketch-steps must be between 1 and --steps - 1 ({args.steps - 1}), got {args.min_sketch_steps}"
        )
    if args.teacache_threshold <= 0:
        raise ValueError(
            f"--teacache-threshold must be > 0 (the TeaCache row is required), got {args.teacache_threshold}"
        )
    adaptive = {"threshold": args.threshold, "min_sketch_steps": args.min_sketch_steps}
    srd.SRDConfig(switch="adaptive", max_sketch_steps=args.max_sketch_steps, **adaptive)  # its own checks
    if args.result is not None:
        needed = ("pipeline/model_index.json", *(f"{small}/config.json" for small in SMALL_MODELS))
        missing = [path for path in needed if not (args.result / path).exists()]
        if missing:
            raise ValueError(
                f"{args.result} lacks {', '.join(missing)}: pass the result/ folder of a finished "
                "`python -m srd_plugin.miniature.train2 --work W` run (W/result)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--result", type=Path, default=None, help="the result/ folder train2 wrote")
    parser.add_argument("--tiny-work", type=Path, default=None, help="train a tiny pair in this folder first")
    parser.add_argument("--split", default="validation", choices=("validation", "test"))
    parser.add_argument("--sweep", action="store_true", help="the settings grid (validation only)")
    parser.add_argument("--quick", action="store_true", help="2 clips, 6 steps: seconds (used by the tests)")
    parser.add_argument("--clips", type=int, default=None, help="clips of the split (default 24; quick 2)")
    parser.add_argument("--steps", type=int, default=None, help=f"sampling steps (default {DEFAULT_STEPS}; quick 6)")
    parser.add_argument("--threshold", type=float, default=ADAPTIVE_THRESHOLD)
    parser.add_argument("--min-sketch-steps", type=int, default=None, help=f"default {ADAPTIVE_MIN_SKETCH_STEPS}")
    parser.add_argument("--max-sketch-steps", type=int, default=None, help="default: the policy's, 0.6 N")
    parser.add_argument("--teacache-threshold", type=float, default=TEACACHE_THRESHOLD)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the full report as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="write the quality-versus-time picture (PNG)")
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args(argv)
    defaults = {"clips": (2, 24), "steps": (6, DEFAULT_STEPS), "min_sketch_steps": (2, ADAPTIVE_MIN_SKETCH_STEPS)}
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    try:
        check_args(args)
    except ValueError as error:
        parser.error(str(error))
    result_dir = args.result or train2.train(args.tiny_work, train2.TINY, train2.Budget())
    report = benchmark(args, result_dir)
    text = table(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.plot:
        reference = report["reference"]
        panels = (
            ("semantic", "semantic accuracy (%)", reference["semantic"]),
            ("fidelity_db", "detail fidelity (dB)", reference["fidelity_db"]),
        )
        title = f"Second miniature world, {report['split']} clips: quality versus time"
        print(f"wrote {plot_panels(report['rows'], panels, 'true clips', title, args.plot)}")
    if args.append:
        append_to_benchmarks("benchmarks/quality2.py", argv, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
