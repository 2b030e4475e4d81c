"""`srd generate --model` with the conditioned pipelines: --video / --image / --strength reach the call."""

from __future__ import annotations

import numpy as np
import pytest

import srd_plugin as srd
from srd_plugin.cli import main
from srd_plugin.testing import RENDERER_SIZE, tiny_wan_renderer
from srd_plugin.testing.wan_family import (
    tiny_frames,
    tiny_wan_i2v_pipeline,
    tiny_wan_i2v_transformer,
    tiny_wan_v2v_pipeline,
)
from srd_plugin.video import write_video

COMMON = ["--prompt", "a red circle moving left", "--height", "32", "--width", "32", "--max-sequence-length", "16"]


def test_generate_video_to_video_runs_the_steps_strength_leaves(tmp_path, capsys):
    tiny_wan_v2v_pipeline().save_pretrained(tmp_path / "v2v")
    tiny_wan_renderer().save_pretrained(tmp_path / "renderer")
    write_video(np.stack([np.asarray(frame) for frame in tiny_frames()]), tmp_path / "in.mp4")
    out = tmp_path / "clip.mp4"
    argv = ["generate", "--model", str(tmp_path / "v2v"), "--renderer", str(tmp_path / "renderer"), *COMMON]
    argv += ["--video", str(tmp_path / "in.mp4"), "--strength", "0.6", "--steps", "10", "--device", "cpu"]
    assert main([*argv, "--switch", "step", "--switch-step", "2", "--out", str(out)]) == 0
    trace = srd.RunTrace.load(out.with_suffix(".trace.json"))
    assert trace.pipeline == "WanVideoToVideoPipeline" and trace.roles == ["sketch"] * 2 + ["render"] * 4
    assert out.is_file()


def test_generate_image_to_video_and_media_errors(tmp_path, capsys):
    tiny_wan_i2v_pipeline().save_pretrained(tmp_path / "i2v")
    tiny_wan_i2v_transformer(RENDERER_SIZE, seed=1).save_pretrained(tmp_path / "renderer")
    tiny_frames(count=1)[0].save(tmp_path / "in.png")
    out = tmp_path / "clip.mp4"
    argv = ["generate", "--model", str(tmp_path / "i2v"), "--renderer", str(tmp_path / "renderer"), *COMMON]
    argv += ["--frames", "9", "--steps", "6", "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--image", str(tmp_path / "in.png"), "--switch", "step", "--switch-step", "3"]) == 0
    assert srd.RunTrace.load(out.with_suffix(".trace.json")).roles == ["sketch"] * 3 + ["render"] * 3
    capsys.readouterr()
    assert main([*argv, "--image", str(tmp_path / "missing.png")]) == 1
    assert "--image" in capsys.readouterr().err
    assert main([*argv, "--image", str(tmp_path / "in.png"), "--video", str(tmp_path / "in.png")]) == 1
    assert "takes no 'video' argument" in capsys.readouterr().err


@pytest.mark.parametrize("strength", ["0", "1.5"])
def test_generate_refuses_a_strength_outside_the_schedule(tmp_path, capsys, strength):
    argv = ["generate", "--model", str(tmp_path), "--renderer", str(tmp_path), *COMMON, "--strength", strength]
    assert main([*argv, "--out", str(tmp_path / "c.mp4")]) == 1
    assert "--strength" in capsys.readouterr().err
