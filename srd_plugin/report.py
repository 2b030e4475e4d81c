"""The run report: a text table and a picture of one sketch-render call.

The picture answers the questions a person asks before trusting a switch: which model ran
each step and what each step cost (bars coloured by role), why the switch happened where
it did (the adaptive metric against its threshold, with the bounds of the rule), and what
the videos look like (optional rows of frames, e.g. sketcher-only above SRD).

Everything is drawn from a `RunTrace` (plain data), so `srd report TRACE.json` redraws the
same picture later. matplotlib is an optional extra (`pip install "srd-plugin[plot]"`);
it is imported only here, without pyplot, so no global backend is changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .config import SRDConfig
from .switching import RENDER, SKETCH
from .trace import RunTrace
from .video import to_uint8_frames

PLOT_EXTRA = "plot"
ROLE_COLOURS = {SKETCH: "#3b5bdb", RENDER: "#f08c00"}
ROLE_NAMES = {SKETCH: "sketcher", RENDER: "renderer"}
THRESHOLD_COLOUR = "#c92a2a"
SWITCH_COLOUR = "#212529"
TARGET_COLOUR = "#9c36b5"
FRAMES_PER_ROW = 6


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


def require_matplotlib() -> Any:
    """matplotlib's `Figure` class, or a `MissingExtraError` naming the `plot` extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MissingExtraError(
            f"the report picture needs matplotlib, which the '{PLOT_EXTRA}' extra installs: "
            f'pip install "srd-plugin[{PLOT_EXTRA}]"'
        ) from error
    return Figure


# -- the table -----------------------------------------------------------------------------
def comparison_table(wall_times: Mapping[str, float], baseline: str, candidate: str) -> str:
    """Wall time of each run and the measured speedup of `candidate` over `baseline`."""
    lines = [f"  {'run':<16}{'seconds':>9}"]
    lines += [f"  {label:<16}{seconds:>9.2f}" for label, seconds in wall_times.items()]
    speedup = wall_times[baseline] / wall_times[candidate]
    lines.append(
        f"  speedup {speedup:.2f}x ({baseline} / {candidate}: wall time of the whole call, "
        "text encoder and VAE included)"
    )
    return "\n".join(lines)


def per_step_line(trace: RunTrace) -> str | None:
    """Mean step time of each model and their ratio, when both ran."""
    sketch, render = trace.steps_of(SKETCH), trace.steps_of(RENDER)
    if not sketch or not render:
        return None
    sketch_mean = trace.seconds_of(SKETCH) / len(sketch)
    render_mean = trace.seconds_of(RENDER) / len(render)
    ratio = sketch_mean / render_mean if render_mean > 0 else float("inf")
    return (
        f"  mean step: sketcher {sketch_mean * 1000:.1f} ms, renderer {render_mean * 1000:.1f} ms "
        f"(the renderer's step costs 1/{ratio:.2f} of the sketcher's)"
    )


def report_text(trace: RunTrace) -> str:
    """The trace summary plus the per-model step cost."""
    lines = [trace.summary()]
    step_line = per_step_line(trace)
    if step_line:
        lines.append(step_line)
    return "\n".join(lines)


# -- the picture ---------------------------------------------------------------------------
def pick_frames(frames: Any, count: int = FRAMES_PER_ROW) -> tuple[list[int], np.ndarray]:
    """`count` evenly spaced frames (first and last included) as uint8 [k, H, W, 3]."""
    array = to_uint8_frames(frames)
    indices = sorted({int(round(i)) for i in np.linspace(0, len(array) - 1, min(count, len(array)))})
    return indices, array[indices]


def _frame_strip(frames: np.ndarray, gap: int) -> np.ndarray:
    """Frames side by side with white gaps between them."""
    height = frames.shape[1]
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for frame in frames:
        if parts:
            parts.append(spacer)
        parts.append(frame)
    return np.concatenate(parts, axis=1)


def _adaptive_bounds(trace: RunTrace) -> tuple[int | None, int | None]:
    """(min_sketch_steps, resolved max_sketch_steps) of an adaptive trace, else (None, None)."""
    if trace.policy != "adaptive":
        return None, None
    try:
        config = SRDConfig(**trace.config)
    except (TypeError, ValueError):
        return None, None
    return config.min_sketch_steps, config.resolved_max_sketch_steps(trace.num_steps)


def _draw_step_times(axes: Any, trace: RunTrace) -> None:
    steps = np.arange(len(trace.roles))
    milliseconds = np.asarray(trace.step_seconds, dtype=float) * 1000.0
    for role in (SKETCH, RENDER):
        chosen = trace.steps_of(role)
        if not chosen:
            continue
        label = (
            f"{role}: the {ROLE_NAMES[role]}, {len(chosen)} step{'s' if len(chosen) != 1 else ''}, "
            f"{trace.seconds_of(role):.2f} s"
        )
        axes.bar(steps[chosen], milliseconds[chosen], width=0.8, color=ROLE_COLOURS[role], label=label)
    axes.set_ylabel("step wall time (ms)")
    axes.set_ylim(0, max(milliseconds, default=0.0) * 1.35 or 1.0)  # headroom for the legend
    axes.set_xlim(-0.6, max(trace.num_steps, len(trace.roles)) - 0.4)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="upper right", fontsize=8, frameon=False)


def _draw_switch(axes: Any, trace: RunTrace, annotate: bool) -> None:
    """The switch as a dashed line, the render phase lightly tinted, a fallback as a dotted line."""
    if trace.switch_step is not None:
        x = trace.switch_step - 0.5
        end = max(trace.num_steps, len(trace.roles)) - 0.4
        axes.axvspan(x, end, color=ROLE_COLOURS[RENDER], alpha=0.06, linewidth=0)
        axes.axvline(x, color=SWITCH_COLOUR, linestyle="--", linewidth=1.2)
        if annotate:
            axes.annotate(
                f" switch: step {trace.switch_step} renders",
                xy=(x, 1.0),
                xycoords=("data", "axes fraction"),
                va="top",
                ha="left",
                fontsize=8,
                color=SWITCH_COLOUR,
            )
    if trace.fallback_step is not None:
        axes.axvline(trace.fallback_step - 0.5, color=THRESHOLD_COLOUR, linestyle=":", linewidth=1.2)
    latest = trace.target_switch_step
    if trace.target_speedup is not None and latest is not None and latest < trace.num_steps:
        axes.axvline(latest - 0.5, color=TARGET_COLOUR, linestyle="-.", linewidth=1.6)
        if annotate:
            axes.annotate(
                f"latest switch for target {trace.target_speedup:g}x ",
                xy=(latest - 0.5, 0.82),
                xycoords=("data", "axes fraction"),
                va="top",
                ha="right",
                fontsize=8,
                color=TARGET_COLOUR,
            )


def _draw_metric(axes: Any, trace: RunTrace) -> None:
    threshold = trace.config.get("threshold")
    points = [(i, m) for i, m in enumerate(trace.metrics) if m is not None]
    if not points:
        reason = (
            "no adaptive metric: this policy fixes the switch in advance"
            if trace.policy != "adaptive"
            else "no adaptive metric yet (it needs three sketch steps)"
        )
        axes.text(0.5, 0.5, f"policy {trace.policy!r}: {reason}", ha="center", va="center", transform=axes.transAxes)
        axes.set_yticks([])
        return
    xs, ys = zip(*points)
    axes.plot(xs, ys, color=ROLE_COLOURS[SKETCH], marker="o", markersize=4, linewidth=1.5, label="s_i = d_(i-1) - d_i")
    if threshold is not None:
        axes.axhspan(0.0, threshold, color=THRESHOLD_COLOUR, alpha=0.08, linewidth=0)
        axes.axhline(threshold, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.2, label=f"threshold {threshold:g}")
        axes.axhline(0.0, color="#868e96", linewidth=0.8)
    minimum, maximum = _adaptive_bounds(trace)
    if minimum is not None and minimum > 1:
        axes.axvspan(-0.6, minimum - 1.5, color="#868e96", alpha=0.12, linewidth=0, label=f"min_sketch_steps {minimum}")
    if maximum is not None and maximum < trace.num_steps:
        axes.axvline(maximum - 1, color="#868e96", linestyle=":", linewidth=1.2, label=f"max_sketch_steps {maximum}")
    if trace.switch_step is not None and 0 < trace.switch_step <= len(trace.metrics):
        deciding = trace.metrics[trace.switch_step - 1]
        if deciding is not None:
            axes.plot([trace.switch_step - 1], [deciding], marker="*", markersize=13, color=THRESHOLD_COLOUR, zorder=5)
    values = [*ys, 0.0, *([threshold] if threshold is not None else [])]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    axes.set_ylim(low - 0.08 * span, high + 0.5 * span)  # headroom for the legend
    axes.set_ylabel("adaptive metric s_i")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="upper right", fontsize=8, frameon=False, ncol=2)


def title_of(trace: RunTrace) -> str:
    """One line naming the pipeline, the policy, the steps and the switch."""
    if trace.switch_step is None:
        switch = "no switch (sketcher only)"
    elif trace.switch_step == 0:
        switch = "renderer only"
    else:
        switch = f"switch at step {trace.switch_step}"
    stopped = "" if trace.completed else f", stopped after {len(trace.roles)} steps"
    title = f"{trace.pipeline or 'pipeline'} · policy {trace.policy} · {trace.num_steps} steps · {switch}{stopped}"
    speed = speed_line(trace)
    return f"{title}\n{speed}" if speed else title


def speed_line(trace: RunTrace) -> str | None:
    """The speed settings and figures of a call: guidance-free rendering, the target, predicted and achieved."""
    parts = []
    if trace.config.get("render_guidance") == "off":
        parts.append(f"render guidance off ({trace.guidance_calls_saved} renderer calls saved)")
    if trace.target_speedup is not None:
        target = f"target {trace.target_speedup:g}x"
        if trace.predicted_speedup is not None:
            target += f", predicted {trace.predicted_speedup:.2f}x"
        if trace.achieved_speedup is not None:
            target += f", achieved {trace.achieved_speedup:.2f}x"
        parts.append(target)
    return " · ".join(parts) or None


def draw_report(
    trace: RunTrace,
    path: str | Path,
    videos: Mapping[str, Any] | None = None,
    subtitle: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write the report picture of `trace` to `path` (PNG) and return the path.

    videos: optional {label: frames} (floats in [0, 1], uint8 arrays or PIL images); each
        becomes one row of evenly spaced frames, in the given order.
    subtitle: an extra line under the title (e.g. wall times and the measured speedup).
    """
    figure_class = require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    videos = dict(videos or {})
    width = 10.0
    row_heights = [2.3, 2.3]
    strips = {}
    for label, frames in videos.items():
        indices, picked = pick_frames(frames)
        strip = _frame_strip(picked, gap=max(2, picked.shape[2] // 32))
        strips[label] = (indices, strip)
        row_heights.append(0.35 + (width - 1.4) * strip.shape[0] / strip.shape[1])
    figure = figure_class(figsize=(width, sum(row_heights) + 0.9), dpi=dpi, layout="constrained")
    grid = figure.add_gridspec(len(row_heights), 1, height_ratios=row_heights)
    times = figure.add_subplot(grid[0])
    metric = figure.add_subplot(grid[1], sharex=times)
    _draw_step_times(times, trace)
    _draw_switch(times, trace, annotate=True)
    _draw_metric(metric, trace)
    _draw_switch(metric, trace, annotate=False)
    metric.set_xlabel("denoising step")
    times.xaxis.set_major_locator(MaxNLocator(integer=True))
    for row, (label, (indices, strip)) in enumerate(strips.items(), start=2):
        axes = figure.add_subplot(grid[row])
        axes.imshow(strip, interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
        for spine in axes.spines.values():
            spine.set_visible(False)
        axes.set_ylabel(label, fontsize=10)
        axes.set_title(f"frames {', '.join(map(str, indices))}", fontsize=8, loc="left", color="#495057")
    heading = title_of(trace)
    if subtitle:
        heading += "\n" + subtitle
    figure.suptitle(heading, fontsize=11)
    path = Path(path)
    figure.savefig(path, format="png")
    return path
