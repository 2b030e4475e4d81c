"""`srd demo`: the same prompt and seed, sketcher-only and with SRD, on small bundled models (CPU).

`demo_models()` is the single place that decides which models the demo runs; everything
else (timing, videos, trace, report) works with whatever it returns.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .api import last_trace, sketch_render
from .config import SRDConfig
from .report import MissingExtraError, comparison_table, draw_report, report_text
from .testing import WanSize, tiny_wan_pipeline, tiny_wan_transformer
from .trace import RunTrace
from .video import to_uint8_frames, write_video

BASELINE = "sketcher-only"
CANDIDATE = "SRD"
FILE_STEMS = {BASELINE: "sketcher-only", CANDIDATE: "srd"}


@dataclass
class DemoModels:
    """What the demo runs: a pipeline (its transformer sketches), a renderer, call settings."""

    pipe: Any
    renderer: Any
    call: dict[str, Any]
    description: str
    fps: int = 8
    #: torch intra-op threads while the demo runs (None: leave torch's setting alone)
    threads: int | None = 1


#: the call settings of the trained miniature pair (`srd_plugin.miniature`): 32x32 pixels, 9 frames
DEMO_CALL: dict[str, Any] = dict(
    negative_prompt="", height=32, width=32, num_frames=9, guidance_scale=5.0, max_sequence_length=16
)

#: the fallback when the miniature weights are missing: a random-weight Wan pair whose step costs
#: differ like Wan2.1 14B and 1.3B do (~6x; the FLOP ratio of those two is ~5.9)
RANDOM_SKETCHER = WanSize(num_layers=8, num_attention_heads=8, attention_head_dim=32, ffn_dim=1024)
RANDOM_RENDERER = WanSize(num_layers=4, num_attention_heads=2, attention_head_dim=32, ffn_dim=256)
RANDOM_CALL: dict[str, Any] = dict(
    negative_prompt="blurry", height=64, width=64, num_frames=17, guidance_scale=5.0, max_sequence_length=16
)


def demo_models() -> DemoModels:
    """The models `srd demo` runs: the trained miniature pair shipped in the package.

    A `WanPipeline` (its transformer, 12 blocks, is the sketcher) and a 1-block renderer, both
    loaded with `from_pretrained` from `srd_plugin/miniature/weights/` (see docs/miniature.md).
    Prompts are of the form "a <colour> <shape> moving <direction>". Without the shipped
    weights (a source checkout that lost them) the demo falls back to a random-weight pair.

    One thread: these models are so small that synchronising threads costs more than it
    saves; on a busy 2-core machine two threads made a 20-step call 10-30x slower.
    """
    from .miniature import load_miniature_pipeline

    try:
        pipe, renderer = load_miniature_pipeline()
    except FileNotFoundError:
        pipe = tiny_wan_pipeline(transformer=tiny_wan_transformer(RANDOM_SKETCHER, seed=0))
        renderer = tiny_wan_transformer(RANDOM_RENDERER, seed=1)
        description = "random-weight Wan pair built in memory (no miniature weights found), 64x64, 17 frames"
        return DemoModels(pipe, renderer, dict(RANDOM_CALL), description)
    sketcher, small = pipe.transformer.config, renderer.config
    description = (
        f"trained miniature Wan pair (sketcher {sketcher.num_layers} blocks x "
        f"{sketcher.num_attention_heads * sketcher.attention_head_dim} wide, renderer {small.num_layers} x "
        f"{small.num_attention_heads * small.attention_head_dim}), 32x32, 9 frames; prompts "
        "'a <red|green|blue|yellow|white> <circle|square|triangle> moving <left|right|up|down>'"
    )
    return DemoModels(pipe, renderer, dict(DEMO_CALL), description)


@dataclass
class DemoResult:
    """What `run_demo` measured and wrote; `picture_problem` says why there is no picture."""

    out: Path
    trace: RunTrace
    wall_times: dict[str, float]
    files: list[Path]
    table: str
    picture_problem: str | None = None


def run_demo(
    out: str | Path,
    prompt: str,
    steps: int,
    seed: int,
    config: SRDConfig,
    log: Callable[[str], None],
    rounds: int = 1,
) -> DemoResult:
    """Run the demo and write `sketcher-only.mp4`, `srd.mp4`, `trace.json` and `report.png` to `out`.

    With `rounds` > 1 the two runs alternate and each keeps its fastest round (the trace is
    the fastest SRD round's): on a shared machine the minimum is the figure least disturbed
    by other work.
    """
    if steps < 2:
        raise ValueError(f"--steps {steps}: the demo needs at least 2 denoising steps")
    if rounds < 1:
        raise ValueError(f"--rounds {rounds}: must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log("building the demo models ...")
    models = demo_models()
    log(f"  {models.description}")
    with _torch_threads(models.threads):
        return _run(out, models, prompt, steps, seed, config, log, rounds)


def _run(
    out: Path,
    models: DemoModels,
    prompt: str,
    steps: int,
    seed: int,
    config: SRDConfig,
    log: Callable[[str], None],
    rounds: int,
) -> DemoResult:
    """The timed part of `run_demo`, under the demo models' thread setting."""
    pipe = models.pipe
    _warm_up(pipe, models, prompt, config, log)
    wall_times: dict[str, float] = {}
    frames: dict[str, Any] = {}
    trace: RunTrace | None = None
    for round_index in range(rounds):
        count = f", round {round_index + 1} of {rounds}" if rounds > 1 else ""
        for label in (BASELINE, CANDIDATE):
            log(f"generating {label} ({steps} steps, seed {seed}{count}) ...")
            if label == CANDIDATE:
                with sketch_render(pipe, models.renderer, config):
                    seconds, frames[label] = _timed_call(pipe, models, prompt, steps, seed, desc=None)
            else:
                seconds, frames[label] = _timed_call(pipe, models, prompt, steps, seed, desc=label)
            log(f"  {label}: {seconds:.3f} s")
            if label not in wall_times or seconds < wall_times[label]:
                wall_times[label] = seconds
                if label == CANDIDATE:
                    trace = last_trace(pipe)
    videos = {label: write_video(frames[label], out / f"{FILE_STEMS[label]}.mp4", fps=models.fps) for label in frames}
    trace_path = trace.save(out / "trace.json")
    table = report_text(trace) + "\n\n" + comparison_table(wall_times, BASELINE, CANDIDATE)
    if rounds > 1:
        table += f"\n  (each run: the fastest of {rounds} alternating rounds)"
    picture, problem = None, None
    best = f"best of {rounds} rounds: " if rounds > 1 else ""
    subtitle = (
        f"same prompt and seed · {best}{BASELINE} {wall_times[BASELINE]:.2f} s, "
        f"{CANDIDATE} {wall_times[CANDIDATE]:.2f} s · measured speedup "
        f"{wall_times[BASELINE] / wall_times[CANDIDATE]:.2f}x (whole call)"
    )
    try:
        picture = draw_report(trace, out / "report.png", videos=frames, subtitle=subtitle)
    except MissingExtraError as error:
        problem = str(error)
    return DemoResult(
        out=out,
        trace=trace,
        wall_times=wall_times,
        files=[*videos.values(), trace_path, *([picture] if picture else [])],
        table=table,
        picture_problem=problem,
    )


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` intra-op threads, then restore the caller's setting."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _timed_call(pipe: Any, models: DemoModels, prompt: str, steps: int, seed: int, desc: str | None) -> tuple:
    """(wall seconds of the whole call, its frames as uint8)."""
    pipe.set_progress_bar_config(desc=desc)
    start = time.perf_counter()
    output = pipe(prompt=prompt, **models.call, num_inference_steps=steps, output_type="np", generator=_seeded(seed))
    seconds = time.perf_counter() - start
    return seconds, to_uint8_frames(output.frames[0])


def _warm_up(pipe: Any, models: DemoModels, prompt: str, config: SRDConfig, log: Callable[[str], None]) -> None:
    """One untimed 2-step call (a sketch step, a render step, a VAE decode).

    The first call in a process pays one-off costs (allocator, kernel selection); without a
    warm-up the sketcher-only run, which goes first, would pay them and inflate the speedup.
    """
    log("warming up (one untimed 2-step call) ...")
    pipe.set_progress_bar_config(disable=True)
    warm_up = SRDConfig(
        switch="step", switch_step=1, move_renderer=config.move_renderer, renderer_dtype=config.renderer_dtype
    )
    with sketch_render(pipe, models.renderer, warm_up):
        pipe(prompt=prompt, **models.call, num_inference_steps=2, output_type="np", generator=_seeded(0))
