"""The `srd` command: every sub-command runs on tiny models and its outputs are checked."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import pytest
import torch

import srd_plugin as srd
from srd_plugin import demo as demo_module
from srd_plugin.cli import main, read_config_file
from srd_plugin.generate import GenerateOptions, call_arguments
from srd_plugin.testing import tiny_wan_pair, tiny_wan_pipeline, tiny_wan_renderer, tiny_wan_transformer
from srd_plugin.trace import RunTrace
from srd_plugin.video import read_video

TINY_GENERATE = ["--height", "32", "--width", "32", "--frames", "9", "--max-sequence-length", "16"]


def one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def error_line(text: str) -> str:
    """The one error line among set-up messages (e.g. "loading the pipeline ...")."""
    errors = [line for line in text.splitlines() if " error: " in line]
    assert len(errors) == 1 and "Traceback" not in text, text
    return errors[0]


@pytest.fixture
def small_demo(monkeypatch):
    """The demo flow on a smaller video (32x32, 9 frames) to keep these tests quick."""

    def small_models():
        pipe, renderer = tiny_wan_pair()
        call = dict(negative_prompt="blurry", height=32, width=32, num_frames=9, max_sequence_length=16)
        return demo_module.DemoModels(pipe, renderer, call, "small test pair")

    monkeypatch.setattr(demo_module, "demo_models", small_models)


# -- srd demo -------------------------------------------------------------------------------
def test_demo_writes_videos_trace_and_picture(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "6"]) == 0
    printed = capsys.readouterr().out
    trace = RunTrace.load(out / "trace.json")
    assert trace.completed and trace.num_steps == 6 and trace.policy == "adaptive"
    assert trace.switch_step is not None and trace.roles.count("sketch") == trace.switch_step
    for name in ("sketcher-only.mp4", "srd.mp4"):
        video = read_video(out / name)
        assert video.shape[0] == demo_module.DEMO_CALL["num_frames"]
        assert video.shape[1:] == (256, 256, 3)  # 64x64 frames, upscaled 4x for players
    picture = imageio.imread(out / "report.png")
    assert picture.shape[1] == 1000 and picture.shape[0] > 800  # 550 px of plots, then two rows of frames
    for words in ("sketch", "render", f"switch at step {trace.switch_step}", "sketcher-only", "SRD", "speedup"):
        assert words in printed


def test_demo_without_matplotlib_still_writes_videos_and_names_the_extra(tmp_path, capsys, monkeypatch, small_demo):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "4", "--switch-ratio", "0.5"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sketcher-only.mp4", "srd.mp4", "trace.json"]
    assert 'pip install "srd-plugin[plot]"' in capsys.readouterr().err
    trace = RunTrace.load(out / "trace.json")  # the policy options reached the run
    assert trace.policy == "ratio" and trace.roles == ["sketch", "sketch", "render", "render"]


def test_demo_rounds_keep_the_fastest_run_of_each(tmp_path, capsys, small_demo):
    assert main(["demo", "--out", str(tmp_path), "--steps", "3", "--switch-step", "1", "--rounds", "2"]) == 0
    captured = capsys.readouterr()
    assert "round 2 of 2" in captured.err
    for label in ("sketcher-only", "SRD"):
        runs = [float(s) for s in re.findall(rf"^  {label}: ([0-9.]+) s$", captured.err, re.M)]
        assert len(runs) == 2
        shown = float(re.search(rf"^  {label} +([0-9.]+)$", captured.out, re.M).group(1))
        assert shown == pytest.approx(min(runs), abs=0.006)
    assert "fastest of 2 alternating rounds" in captured.out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["demo", "--threshold", "5"], "threshold"),
        (["demo", "--rounds", "0"], "--rounds 0"),
        (["demo", "--steps", "4", "--switch-step", "5"], "--switch-step 5 is beyond the 4 denoising steps"),
        (["demo", "--steps", "1"], "at least 2"),
        (["demo", "--switch-step", "2", "--switch-ratio", "0.5"], "choose one with --switch"),
        (["demo", "--switch", "adaptive", "--switch-step", "2"], "switch_step"),
    ],
)
def test_bad_demo_values_fail_fast_with_one_line(argv, words, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "never")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("srd demo: error:") and words in line
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        ([], "required"),
        (["demo", "--steps", "many"], "invalid int value"),
        (["demo", "--switch", "sometimes"], "invalid choice"),
        (["generate", "--prompt", "x"], "required: --model, --renderer"),
        (["report"], "TRACE.json"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_argument_errors_exit_2_with_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert words in line and "--help" in line


# -- srd generate ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """A tiny pipeline folder and a renderer folder, as `from_pretrained` expects them."""
    root = tmp_path_factory.mktemp("models")
    tiny_wan_pipeline().save_pretrained(root / "pipeline")
    tiny_wan_renderer().save_pretrained(root / "renderer")
    return root / "pipeline", root / "renderer"


def reference_trace(pipeline_dir, renderer_dir, steps: int, **config) -> RunTrace:
    """The same generation through the Python API: the oracle for what the CLI must do."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(pipeline_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    srd.enable(pipe, str(renderer_dir), **config)
    pipe(
        prompt="a red circle moving left",
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=steps,
        max_sequence_length=16,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
    )
    return srd.last_trace(pipe)


def test_generate_writes_video_trace_picture_like_the_api(saved_models, tmp_path, capsys):
    pipeline_dir, renderer_dir = saved_models
    out = tmp_path / "clips" / "circle.mp4"
    argv = ["generate", "--model", str(pipeline_dir), "--renderer", str(renderer_dir)]
    argv += ["--prompt", "a red circle moving left", *TINY_GENERATE, "--steps", "8", "--seed", "3"]
    argv += ["--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "loading the pipeline" in captured.err and "done in" in captured.err  # set-up is announced
    assert "SRD sketch" in captured.err and "SRD render" in captured.err  # phase-aware progress
    video = read_video(out)
    assert video.shape == (9, 256, 256, 3)
    trace = RunTrace.load(out.with_suffix(".trace.json"))
    assert trace.to_dict() == RunTrace.from_json(trace.to_json()).to_dict()
    assert imageio.imread(out.with_suffix(".report.png")).shape[1] == 1000
    expected = reference_trace(pipeline_dir, renderer_dir, 8)
    assert (trace.roles, trace.switch_step, trace.metrics) == (expected.roles, expected.switch_step, expected.metrics)
    assert f"switch at step {expected.switch_step}" in captured.out


def test_generate_config_file_and_options_on_top(saved_models, tmp_path):
    pipeline_dir, renderer_dir = saved_models
    config = tmp_path / "srd.toml"
    config.write_text('[srd]\nswitch = "step"\nswitch_step = 2\n')
    base = ["generate", "--model", str(pipeline_dir), "--renderer", str(renderer_dir), "--prompt", "a cat"]
    base += [*TINY_GENERATE, "--steps", "4", "--config", str(config)]
    assert main([*base, "--out", str(tmp_path / "file.mp4")]) == 0
    assert RunTrace.load(tmp_path / "file.trace.json").switch_step == 2
    assert main([*base, "--switch-ratio", "0.75", "--out", str(tmp_path / "ratio.mp4")]) == 0
    trace = RunTrace.load(tmp_path / "ratio.trace.json")
    assert trace.policy == "ratio" and trace.switch_step == 3 and trace.config["switch_step"] is None


@pytest.mark.parametrize(
    "change, words",
    [
        ({"--out": "clip.gif"}, "give a path ending in .mp4"),
        ({"--frames": "0"}, "--frames 0: must be a positive integer"),
        ({"--steps": "3", "--switch-step": "4"}, "--switch-step 4 is beyond the 3 denoising steps"),
        ({"--model": "no/such/folder"}, "neither an existing folder nor a hub repo id"),
        ({"--renderer": "./missing-renderer"}, "neither an existing folder nor a hub repo id"),
        ({"--model": "nobody/not-a-model"}, "could not load the pipeline"),
    ],
)
def test_generate_bad_values_exit_1_with_one_line(saved_models, tmp_path, capsys, change, words):
    pipeline_dir, renderer_dir = saved_models
    options = {"--model": str(pipeline_dir), "--renderer": str(renderer_dir), "--out": str(tmp_path / "v.mp4")}
    options.update(change)
    argv = ["generate", "--prompt", "x", *[item for pair in options.items() for item in pair]]
    assert main(argv) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith("srd generate: error:") and words in line


def test_generate_incompatible_renderer_names_the_mismatch(saved_models, tmp_path, capsys):
    pipeline_dir, _ = saved_models
    tiny_wan_transformer(in_channels=8, out_channels=8).save_pretrained(tmp_path / "wrong")
    argv = ["generate", "--model", str(pipeline_dir), "--renderer", str(tmp_path / "wrong"), "--prompt", "x"]
    assert main([*argv, "--out", str(tmp_path / "v.mp4")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "srd generate: error:" in err and "latent channels" in err
    assert not (tmp_path / "v.mp4").exists()


def test_an_option_the_pipeline_does_not_take_is_named():
    class ImagePipeline:
        def __call__(self, prompt, num_inference_steps=50, generator=None, output_type="np"):
            pass

    options = GenerateOptions(model="m", renderer="r", prompt="p", out=None, frames=9)
    with pytest.raises(ValueError, match="--frames: ImagePipeline takes no 'num_frames' argument"):
        call_arguments(ImagePipeline(), options)
    options.frames = None
    options.steps = 4
    kwargs = call_arguments(ImagePipeline(), options)
    assert kwargs["num_inference_steps"] == 4 and kwargs["output_type"] == "np" and "num_frames" not in kwargs


def test_config_file_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[srd]\nswitch = \n")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[srd]\nthresold = 0.02\n")
    cases = (
        (bad, "not a valid TOML file"),
        (unknown, "srd.thresold: unknown key (did you mean threshold?)"),
        (tmp_path / "missing.toml", "does not exist"),
    )
    for path, words in cases:
        assert main(["demo", "--config", str(path), "--out", str(tmp_path / "never")]) == 1
        assert words in one_error_line(capsys.readouterr().err)
    good = tmp_path / "good.toml"
    good.write_text("[srd]\nthreshold = 0.02\nmin_sketch_steps = 3\n")
    config = read_config_file(good)
    assert (config.threshold, config.min_sketch_steps, config.switch) == (0.02, 3, "adaptive")


# -- srd report -----------------------------------------------------------------------------
@pytest.fixture
def saved_trace(pipe, renderer, tmp_path):
    from srd_plugin.testing import tiny_call_kwargs

    srd.enable(pipe, renderer, switch="step", switch_step=2)
    pipe(**tiny_call_kwargs(5))
    return srd.last_trace(pipe), srd.last_trace(pipe).save(tmp_path / "run.json")


def test_report_prints_the_table_and_redraws_the_picture(saved_trace, tmp_path, capsys):
    trace, path = saved_trace
    assert main(["report", str(path)]) == 0
    printed = capsys.readouterr().out
    assert trace.summary() in printed
    assert imageio.imread(tmp_path / "run.png").shape[1] == 1000


def test_report_adds_rows_of_frames_from_videos(saved_trace, tmp_path):
    from srd_plugin.video import write_video

    _, path = saved_trace
    write_video(torch.rand(9, 16, 16, 3).numpy(), tmp_path / "a.mp4")
    assert main(["report", str(path), "--out", str(tmp_path / "plain.png")]) == 0
    assert main(["report", str(path), "--video", str(tmp_path / "a.mp4"), "--out", str(tmp_path / "v.png")]) == 0
    assert imageio.imread(tmp_path / "v.png").shape[0] > imageio.imread(tmp_path / "plain.png").shape[0] + 100


def test_report_without_matplotlib_prints_table_then_names_the_extra(saved_trace, monkeypatch, capsys):
    trace, path = saved_trace
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["report", str(path)]) == 1
    captured = capsys.readouterr()
    assert trace.summary() in captured.out
    assert 'pip install "srd-plugin[plot]"' in one_error_line(captured.err)


def test_report_of_bad_files_is_one_line(tmp_path, capsys):
    not_json = tmp_path / "x.json"
    not_json.write_text("{nope")
    not_trace = tmp_path / "y.json"
    not_trace.write_text(json.dumps({"weights": [1, 2]}))
    video = tmp_path / "missing.mp4"
    for argv, words in (
        ([str(tmp_path / "missing.json")], "cannot be read"),
        ([str(not_json)], "not an SRD trace JSON"),
        ([str(not_trace)], "unknown key(s) weights"),
    ):
        assert main(["report", *argv]) == 1
        assert words in one_error_line(capsys.readouterr().err)
    good = RunTrace(pipeline="P", policy="step", num_steps=1, roles=["sketch"], step_seconds=[0.1]).save(
        tmp_path / "good.json"
    )
    assert main(["report", str(good), "--video", str(video)]) == 1
    assert "--video" in capsys.readouterr().err


# -- srd doctor -----------------------------------------------------------------------------
def test_doctor_names_adapters_plugins_and_says_ready(capsys):
    assert main(["doctor"]) == 0
    printed = capsys.readouterr().out
    for words in ("python", "torch", "diffusers", "CUDA device", "triton", "sageattention", "ffmpeg"):
        assert words in printed
    assert re.search(r"srd_plugin\.adapters\.wan +built-in; adapter for .*\bWanPipeline\b", printed)
    assert re.search(r"srd-plugin +\d+\.\d+", printed)
    assert "srd_plugin.hooks.progress" in printed and "srd_switch" in printed
    assert printed.strip().splitlines()[-1].startswith("READY")


def test_doctor_lists_entry_point_plugins(tmp_path, monkeypatch, capsys):
    from srd_plugin import manager

    site = tmp_path / "site"
    (site / "fake_srd_adapter-1.2.dist-info").mkdir(parents=True)
    (site / "fake_srd_adapter-1.2.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-srd-adapter\nVersion: 1.2\n"
    )
    (site / "fake_srd_adapter-1.2.dist-info" / "entry_points.txt").write_text(
        "[srd_plugin]\nfake = fake_srd_adapter_module\n"
    )
    (site / "fake_srd_adapter_module.py").write_text(
        "from srd_plugin.hookspecs import hookimpl\n\n\n"
        "@hookimpl\ndef srd_supported_pipelines():\n    return ['FakeVideoPipeline']\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(manager, "_manager", None)  # build a fresh manager that sees the new entry point
    monkeypatch.delitem(sys.modules, "fake_srd_adapter_module", raising=False)
    assert main(["doctor"]) == 0
    printed = capsys.readouterr().out
    assert "entry point of fake-srd-adapter 1.2; adapter for FakeVideoPipeline" in printed


def test_doctor_without_adapters_is_not_ready(monkeypatch, capsys):
    import pluggy

    from srd_plugin import hookspecs, manager

    empty = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    empty.add_hookspecs(hookspecs)
    monkeypatch.setattr(manager, "_manager", empty)
    assert main(["doctor"]) == 1
    printed = capsys.readouterr().out
    assert "!! adapters" in printed and printed.strip().splitlines()[-1].startswith("NOT READY")


def test_installed_srd_entry_point_runs():
    executable = shutil.which("srd", path=str(Path(sys.executable).parent))
    assert executable, "the `srd` console script is not installed in this environment"
    result = subprocess.run([executable, "doctor"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "WanPipeline" in result.stdout
