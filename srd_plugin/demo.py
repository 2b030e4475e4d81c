"""`srd demo`: the same prompt and seed, sketcher-only and with SRD, on small bundled models (CPU).

`demo_models()` is the single place that decides which models the demo runs; everything
else (timing, videos, trace, report) works with whatever it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .api import disable, enable, last_trace, sketch_render
from .config import SRDConfig
from .report import MissingExtraError, comparison_table, draw_report, report_text
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


def demo_models() -> DemoModels:
    """The models `srd demo` runs: the tiny random-weight Wan pair of `srd_plugin.testing`.

    Random weights make noise videos; the point today is the timing, the switch and the
    plumbing. Swap in trained miniature models here and nothing else has to change.
    """
    from .testing import tiny_wan_pair

    pipe, renderer = tiny_wan_pair()
    call = dict(
        negative_prompt="blurry",
        height=64,
        width=64,
        num_frames=17,
        guidance_scale=5.0,
        max_sequence_length=16,
    )
    return DemoModels(pipe, renderer, call, "tiny random-weight Wan pair (srd_plugin.testing), 64x64, 17 frames")


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
) -> DemoResult:
    """Run the demo and write `sketcher-only.mp4`, `srd.mp4`, `trace.json` and `report.png` to `out`."""
    if steps < 2:
        raise ValueError(f"--steps {steps}: the demo needs at least 2 denoising steps")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log("building the demo models ...")
    models = demo_models()
    log(f"  {models.description}")
    pipe = models.pipe
    _warm_up(pipe, models, prompt, config, log)
    wall_times: dict[str, float] = {}
    frames: dict[str, Any] = {}
    for label in (BASELINE, CANDIDATE):
        if label == CANDIDATE:
            enable(pipe, models.renderer, config)
        pipe.set_progress_bar_config(desc=label if label == BASELINE else None)
        log(f"generating {label} ({steps} steps, seed {seed}) ...")
        start = time.perf_counter()
        output = pipe(
            prompt=prompt, **models.call, num_inference_steps=steps, output_type="np", generator=_seeded(seed)
        )
        wall_times[label] = time.perf_counter() - start
        frames[label] = to_uint8_frames(output.frames[0])
    trace = last_trace(pipe)
    disable(pipe)
    videos = {label: write_video(frames[label], out / f"{FILE_STEMS[label]}.mp4", fps=models.fps) for label in frames}
    trace_path = trace.save(out / "trace.json")
    table = report_text(trace) + "\n\n" + comparison_table(wall_times, BASELINE, CANDIDATE)
    picture, problem = None, None
    subtitle = (
        f"same prompt and seed · {BASELINE} {wall_times[BASELINE]:.2f} s · {CANDIDATE} {wall_times[CANDIDATE]:.2f} s "
        f"· measured speedup {wall_times[BASELINE] / wall_times[CANDIDATE]:.2f}x (whole call)"
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


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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
