"""`srd generate --teacache [THRESHOLD] --sage` on tiny saved pipeline folders, and `srd doctor` on `--sage`.

Oracle: the same generation through the Python API with the SRDConfig the flags stand for;
the CLI's saved trace must carry the same roles and the same TeaCache / SageAttention /
alignment notes. The report picture is left out (matplotlib hidden: the documented no-picture
branch) because test_cli.py covers it and drawing it would triple each test's time.
"""

from __future__ import annotations

import re
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline

import srd_plugin as srd
from srd_plugin import TeaCacheConfig, doctor
from srd_plugin.cli import accelerators_from_args, build_parser, config_from_args, main
from srd_plugin.hooks import sageattention as sage
from srd_plugin.testing import (
    tiny_cogvideox_pipeline,
    tiny_cogvideox_renderer_pipeline,
    tiny_wan_pipeline,
    tiny_wan_renderer,
)
from srd_plugin.trace import RunTrace

PROMPT = "a red circle moving left"
TINY = ["--height", "32", "--width", "32", "--frames", "9", "--max-sequence-length", "16", "--device", "cpu"]
STEPS = 8


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Wan: pipeline + renderer transformer; CogVideoX: 5B-like pipeline + 2B-like renderer pipeline
    (whose vae/ and scheduler/ configs give the alignment)."""
    root = tmp_path_factory.mktemp("models")
    tiny_wan_pipeline().save_pretrained(root / "wan")
    tiny_wan_renderer().save_pretrained(root / "wan-renderer")
    tiny_cogvideox_pipeline().save_pretrained(root / "cog")
    tiny_cogvideox_renderer_pipeline().save_pretrained(root / "cog-renderer")
    return {"wan": (root / "wan", root / "wan-renderer"), "cog": (root / "cog", root / "cog-renderer")}


@pytest.fixture(autouse=True)
def no_picture(monkeypatch):
    """No picture (see the module docstring); the suite's thread count comes from conftest.py."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)


def generate(folders, family, tmp_path, *options):
    """Run `srd generate` on a saved pair; (exit status, saved trace or None)."""
    model, renderer = folders[family]
    out = tmp_path / f"{family}.mp4"
    argv = ["generate", "--model", str(model), "--renderer", str(renderer), "--prompt", PROMPT, *TINY]
    status = main([*argv, "--steps", str(STEPS), "--out", str(out), *options])
    trace = out.with_suffix(".trace.json")
    return status, RunTrace.load(trace) if trace.exists() else None


def api_trace(folders, family, **config):
    """The oracle: the same generation through the API (latents only; TeaCache and SageAttention
    decide on the model calls, which the output type does not change)."""
    model, renderer = folders[family]
    pipe = DiffusionPipeline.from_pretrained(model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CLI run shows them; here they would only fill pytest's summary
        srd.enable(pipe, str(renderer), **config)
        pipe(
            prompt=PROMPT,
            height=32,
            width=32,
            num_frames=9,
            num_inference_steps=STEPS,
            max_sequence_length=16,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        )
    return srd.last_trace(pipe)


def note(trace, prefix):
    notes = [event for event in trace.events if event.startswith(prefix)]
    assert len(notes) == 1, trace.events
    return notes[0]


def warning_lines(err, words):
    return [line for line in err.splitlines() if line.startswith("warning: ") and words in line]


# -- --teacache --------------------------------------------------------------------------------
def test_teacache_threshold_on_both_wan_models_like_the_api(folders, tmp_path, capsys):
    status, trace = generate(folders, "wan", tmp_path, "--teacache", "1.0", "--switch-step", "3")
    err = capsys.readouterr().err
    assert status == 0
    assert trace.config["teacache"] == {"threshold": 1.0, "coefficients": None, "use_ret_steps": False}
    teacache = note(trace, "teacache: ")
    computed = [int(n) for n in re.findall(r"computed (\d+) of", teacache)]
    assert "sketcher (threshold 1)" in teacache and "renderer (threshold 1)" in teacache
    assert re.findall(r"of (\d+) calls", teacache) == [str(2 * 3), str(2 * (STEPS - 3))]  # cond + uncond
    assert computed[0] < 2 * 3 and computed[1] < 2 * (STEPS - 3)  # both models skipped calls
    expected = api_trace(folders, "wan", switch="step", switch_step=3, teacache=TeaCacheConfig(threshold=1.0))
    assert (trace.roles, trace.events) == (expected.roles, expected.events)
    # the tiny models are no published architecture: one warning line per model, no traceback
    assert len(warning_lines(err, "identity polynomial")) == 2 and "Traceback" not in err


def test_cogvideox_teacache_and_sage_on_the_aligned_pair_like_the_api(folders, tmp_path, capsys):
    status, trace = generate(folders, "cog", tmp_path, "--teacache", "1.0", "--sage", "--switch-step", "3")
    err = capsys.readouterr().err
    assert status == 0
    assert trace.config["sage_attention"] is True and trace.config["teacache"]["threshold"] == 1.0
    assert "cog-renderer/vae/config.json" in note(trace, "cogvideox alignment: ")
    teacache = note(trace, "teacache: ")
    assert re.findall(r"of (\d+) calls", teacache) == ["3", str(STEPS - 3)]  # one batched CFG call per step
    assert "sageattention is not installed" in note(trace, "sage attention: ")  # no sageattention here
    assert warning_lines(err, "SageAttention is not used in CogVideoXTransformer3DModel")
    expected = api_trace(
        folders, "cog", switch="step", switch_step=3, teacache=TeaCacheConfig(threshold=1.0), sage_attention=True
    )
    assert (trace.roles, trace.events) == (expected.roles, expected.events)


def test_bare_teacache_asks_for_each_models_recommended_threshold(folders, tmp_path, capsys):
    args = build_parser().parse_args(["generate", "--model", "m", "--renderer", "r", "--prompt", "p", "--teacache"])
    config = accelerators_from_args(config_from_args(args), args)
    assert config.teacache == TeaCacheConfig() and config.teacache_renderer is None
    # the tiny models have no recommended threshold: refused before any denoising, with the way out
    status, trace = generate(folders, "wan", tmp_path, "--teacache")
    assert status == 1 and trace is None
    err = capsys.readouterr().err
    assert "srd generate: error:" in err and "Traceback" not in err
    assert "teacache on the sketcher" in err and "--teacache THRESHOLD" in err and "generating" not in err


def test_teacache_option_over_a_config_file(tmp_path):
    config_file = tmp_path / "srd.toml"
    config_file.write_text(
        "[srd]\nteacache_renderer = false\n[srd.teacache]\nthreshold = 0.9\ncoefficients = [2.0, 0.0]\n"
    )
    base = ["generate", "--model", "m", "--renderer", "r", "--prompt", "p", "--config", str(config_file)]
    args = build_parser().parse_args([*base, "--teacache", "0.3"])
    config = accelerators_from_args(config_from_args(args), args)
    assert config.teacache == TeaCacheConfig(threshold=0.3, coefficients=(2.0, 0.0))  # the file's other keys stay
    assert config.teacache_renderer is None  # both models
    args = build_parser().parse_args(base)
    assert accelerators_from_args(config_from_args(args), args) == config_from_args(args)  # no option, no change


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_bad_teacache_threshold_is_one_line_before_loading(folders, tmp_path, capsys, value):
    status, trace = generate(folders, "wan", tmp_path, "--teacache", value)
    err = capsys.readouterr().err
    assert status == 1 and trace is None and "loading" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("srd generate: error: --teacache") and "threshold" in lines[0]


# -- --sage ------------------------------------------------------------------------------------
def test_sage_takes_the_route_where_a_kernel_can_run(folders, tmp_path, capsys, monkeypatch):
    """A CPU stand-in computing exactly SDPA: every attention call of both models takes the route, and
    the adaptive switch sees the very same predictions as without --sage."""

    def attend(query, key, value):
        return F.scaled_dot_product_attention(query, key, value)

    kernel = sage.AttentionKernel("stand-in", attend, head_dims=(16,), device_types=("cpu",), dtypes=(torch.float32,))
    monkeypatch.setattr(sage, "sageattention_kernel", lambda: kernel)
    _, plain = generate(folders, "wan", tmp_path)
    status, routed = generate(folders, "wan", tmp_path, "--sage")
    assert status == 0 and "warning:" not in capsys.readouterr().err
    assert (routed.roles, routed.metrics) == (plain.roles, plain.metrics)
    sketch_calls, render_calls = (
        int(n) for n in re.findall(r"(\d+) of \1 attention calls on stand-in", note(routed, "sage"))
    )
    sketch_steps = routed.roles.count("sketch")
    assert sketch_calls == 2 * 4 * 2 * sketch_steps  # self + cross attention, 4 blocks, cond + uncond
    assert render_calls == 2 * 2 * 2 * (STEPS - sketch_steps)  # 2 blocks
    assert not any(event.startswith("sage") for event in plain.events)


def test_doctor_says_what_sage_would_do(capsys, monkeypatch):
    assert main(["doctor"]) == 0
    line = [line for line in capsys.readouterr().out.splitlines() if "generate --sage" in line]
    assert len(line) == 1 and "would fall back to SDPA everywhere" in line[0]
    assert "no CUDA device" in line[0] and "sageattention cannot be imported" in line[0]  # this machine
    with_gpu = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: True))
    monkeypatch.setattr(sage, "sageattention_kernel", lambda: sage.make_sage_kernel(lambda *a, **k: None))
    assert doctor._sage_option(with_gpu).value.startswith("SageAttention for fp16/bf16 attention on CUDA")
    monkeypatch.setattr(sage, "sageattention_kernel", lambda: None)
    assert doctor._sage_option(with_gpu).value == "would fall back to SDPA everywhere: sageattention cannot be imported"
