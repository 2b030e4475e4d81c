"""The report picture and table, drawn from traces built by hand (no model runs)."""

from __future__ import annotations

import sys

import imageio.v2 as imageio
import numpy as np
import pytest

from srd_plugin.report import (
    ROLE_COLOURS,
    TARGET_COLOUR,
    MissingExtraError,
    draw_report,
    pick_frames,
    report_text,
    require_matplotlib,
    speed_line,
    title_of,
)
from srd_plugin.trace import RunTrace


def make_trace(roles: list[str], switch_step: int | None, policy: str = "adaptive") -> RunTrace:
    steps = len(roles)
    metrics = [None, None] + [0.03 / (i + 1) - 0.004 for i in range(steps - 2)]
    if policy != "adaptive":
        metrics = [None] * steps
    return RunTrace(
        pipeline="WanPipeline",
        policy=policy,
        config={"switch": policy, "threshold": 0.01, "min_sketch_steps": 3, "max_sketch_steps": None}
        if policy == "adaptive"
        else {"switch": policy},
        num_steps=steps,
        timesteps=[1000.0 - 100 * i for i in range(steps)],
        roles=roles,
        switch_step=switch_step,
        metrics=metrics,
        distances=[None] + [0.5 / (i + 1) for i in range(steps - 1)],
        step_seconds=[0.4 if role == "sketch" else 0.1 for role in roles],
        completed=True,
    )


def colour_pixels(image: np.ndarray, hex_colour: str) -> int:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image[..., :3].astype(int) - rgb).max(axis=-1) <= 2).sum())


def test_picture_size_and_role_colours(tmp_path):
    trace = make_trace(["sketch"] * 4 + ["render"] * 6, switch_step=4)
    path = draw_report(trace, tmp_path / "r.png", dpi=50)
    image = imageio.imread(path)
    assert image.shape[1] == 500 and image.shape[0] == pytest.approx((2.3 + 2.3 + 0.9) * 50, abs=2)
    assert colour_pixels(image, ROLE_COLOURS["sketch"]) > 200
    assert colour_pixels(image, ROLE_COLOURS["render"]) > 200


def test_sketcher_only_picture_has_no_render_bars(tmp_path):
    trace = make_trace(["sketch"] * 6, switch_step=None, policy="step")
    image = imageio.imread(draw_report(trace, tmp_path / "r.png", dpi=50))
    assert colour_pixels(image, ROLE_COLOURS["sketch"]) > 200
    assert colour_pixels(image, ROLE_COLOURS["render"]) == 0


def test_video_rows_add_height_and_show_the_frames(tmp_path):
    trace = make_trace(["sketch"] * 3 + ["render"] * 3, switch_step=3)
    red = np.zeros((9, 16, 16, 3), dtype=np.uint8)
    red[..., 0] = 255
    green = np.zeros((9, 16, 16, 3), dtype=np.float32)
    green[..., 1] = 1.0
    plain = imageio.imread(draw_report(trace, tmp_path / "plain.png", dpi=50))
    both = imageio.imread(draw_report(trace, tmp_path / "both.png", videos={"a": red, "b": green}, dpi=50))
    assert both.shape[1] == plain.shape[1] and both.shape[0] > plain.shape[0] + 100
    assert colour_pixels(both, "#ff0000") > 1000 and colour_pixels(both, "#00ff00") > 1000


def test_partial_trace_and_renderer_only_trace_draw(tmp_path):
    partial = make_trace(["sketch"] * 3, switch_step=None)
    partial.num_steps, partial.completed = 8, False
    assert "stopped after 3 steps" in title_of(partial)
    draw_report(partial, tmp_path / "partial.png", dpi=40)
    render_only = make_trace(["render"] * 4, switch_step=0, policy="step")
    assert "renderer only" in title_of(render_only)
    draw_report(render_only, tmp_path / "render.png", dpi=40)


def test_speed_target_and_guidance_free_rendering_are_shown(tmp_path):
    trace = make_trace(["sketch"] * 4 + ["render"] * 6, switch_step=4)
    assert speed_line(trace) is None and "\n" not in title_of(trace)
    trace.config = {**trace.config, "render_guidance": "off"}
    trace.guidance_calls_saved = 6
    trace.target_speedup, trace.target_switch_step = 2.5, 7  # the metric settled before the bound
    trace.predicted_speedup, trace.achieved_speedup = 2.61, 2.48
    title = title_of(trace)
    assert "render guidance off (6 renderer calls saved)" in title
    assert "target 2.5x, predicted 2.61x, achieved 2.48x" in title
    picture = imageio.imread(draw_report(trace, tmp_path / "target.png", dpi=100))
    assert colour_pixels(picture, TARGET_COLOUR) > 50  # the latest-switch line of the target


def test_report_text_names_steps_switch_and_step_costs():
    text = report_text(make_trace(["sketch"] * 4 + ["render"] * 6, switch_step=4))
    assert "switch at step 4" in text
    assert "sketcher 400.0 ms, renderer 100.0 ms" in text and "1/4.00" in text


def test_pick_frames_spans_first_to_last():
    frames = np.broadcast_to(np.arange(17, dtype=np.uint8)[:, None, None, None], (17, 2, 2, 3))
    indices, picked = pick_frames(frames, count=6)
    assert indices[0] == 0 and indices[-1] == 16 and len(indices) == 6
    assert [int(frame[0, 0, 0]) for frame in picked] == indices
    assert pick_frames(frames[:3], count=6)[0] == [0, 1, 2]


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingExtraError, match=r'pip install "srd-plugin\[plot\]"'):
        require_matplotlib()
    with pytest.raises(MissingExtraError):
        draw_report(make_trace(["sketch"] * 3, None), tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()
