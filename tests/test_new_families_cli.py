"""`srd doctor`, `srd-run` and `srd generate --model` with the LTX-Video, Cosmos Predict2 and Kandinsky 5 pipelines."""

from __future__ import annotations

import re
import textwrap

import pytest
import torch

import srd_plugin as srd
from srd_plugin import generate, launcher
from srd_plugin.cli import main
from srd_plugin.testing.cosmos import tiny_cosmos_pipeline, tiny_cosmos_renderer
from srd_plugin.testing.ltx import tiny_ltx_call_kwargs, tiny_ltx_pipeline, tiny_ltx_renderer


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("SRD_"):
            monkeypatch.delenv(name)


def test_doctor_lists_the_new_adapters(capsys):
    assert main(["doctor"]) == 0
    printed = capsys.readouterr().out
    expected = {
        "ltx": "LTXConditionPipeline, LTXImageToVideoPipeline, LTXPipeline",
        "cosmos": "Cosmos2TextToImagePipeline, Cosmos2VideoToWorldPipeline",
        "kandinsky5": "Kandinsky5I2VPipeline, Kandinsky5T2VPipeline",
    }
    for module, pipelines in expected.items():
        assert re.search(rf"srd_plugin\.adapters\.{module} +built-in; adapter for {pipelines}", printed), module


HOST = """
import sys
import torch
from srd_plugin.testing.{family} import {builder}, {call}

pipe = {builder}("{kind}")
torch.save(pipe(**{call}("{kind}"), return_dict=False)[0], sys.argv[1])
"""

FAMILIES = [
    ("ltx", "tiny_ltx_pipeline", "tiny_ltx_call_kwargs", "tiny_ltx_renderer", "t2v", "LTXPipeline"),
    ("ltx", "tiny_ltx_pipeline", "tiny_ltx_call_kwargs", "tiny_ltx_renderer", "condition", "LTXConditionPipeline"),
    (
        "cosmos",
        "tiny_cosmos_pipeline",
        "tiny_cosmos_call_kwargs",
        "tiny_cosmos_renderer",
        "t2i",
        "Cosmos2TextToImagePipeline",
    ),
    (
        "kandinsky5",
        "tiny_kandinsky5_pipeline",
        "tiny_kandinsky5_call_kwargs",
        "tiny_kandinsky5_renderer",
        "t2v",
        "Kandinsky5T2VPipeline",
    ),
]


@pytest.mark.parametrize(("family", "builder", "call", "renderer", "kind", "name"), FAMILIES)
def test_srd_run_enables_pipelines_built_from_components(
    family, builder, call, renderer, kind, name, tmp_path, monkeypatch, capsys
):
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(HOST.format(family=family, builder=builder, call=call, kind=kind)))
    monkeypatch.setenv("SRD_RENDERER", f"srd_plugin.testing.{family}:{renderer}")
    monkeypatch.setenv("SRD_SWITCH", "step")
    monkeypatch.setenv("SRD_SWITCH_STEP", "2")
    monkeypatch.setenv("SRD_TRACE_DIR", str(tmp_path / "traces"))
    assert launcher.main(["--", "python", str(script), str(tmp_path / "out.pt")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("srd-run:")]
    assert lines and lines[0].startswith(f"srd-run: SRD on {name} #1: renderer srd_plugin.testing.{family}:{renderer}")
    [trace_file] = (tmp_path / "traces").glob("*.json")
    roles = srd.RunTrace.load(trace_file).roles
    assert roles[:2] == ["sketch", "sketch"] and set(roles[2:]) == {"render"}


def test_generate_with_an_ltx_pipeline_folder_matches_the_api(tmp_path, capsys):
    from diffusers import DiffusionPipeline

    tiny_ltx_pipeline("t2v").save_pretrained(tmp_path / "pipeline")
    tiny_ltx_renderer().save_pretrained(tmp_path / "renderer")
    out = tmp_path / "clip.mp4"
    argv = ["generate", "--model", str(tmp_path / "pipeline"), "--renderer", str(tmp_path / "renderer")]
    argv += ["--prompt", "a red circle moving left", "--height", "32", "--width", "32", "--frames", "9"]
    argv += ["--steps", "6", "--max-sequence-length", "16", "--seed", "3", "--device", "cpu", "--out", str(out)]
    argv += ["--switch", "step", "--switch-step", "2"]
    assert main(argv) == 0
    trace = srd.RunTrace.load(out.with_suffix(".trace.json"))
    assert trace.pipeline == "LTXPipeline" and trace.roles == ["sketch"] * 2 + ["render"] * 4
    reference = DiffusionPipeline.from_pretrained(tmp_path / "pipeline", torch_dtype=torch.float32)
    srd.enable(reference, str(tmp_path / "renderer"), switch="step", switch_step=2)
    reference(**tiny_ltx_call_kwargs(num_inference_steps=6))
    assert srd.last_trace(reference).roles == trace.roles


def test_generate_writes_a_cosmos_text2image_result_as_a_one_frame_video(tmp_path, monkeypatch):
    """The stand-in safety checker cannot load from a folder: the pipeline is built in code, the rest is the CLI."""
    from srd_plugin.video import read_video

    monkeypatch.setattr(generate, "load_pipeline", lambda model, dtype, device, log: tiny_cosmos_pipeline("t2i"))
    tiny_cosmos_renderer().save_pretrained(tmp_path / "renderer")
    out = tmp_path / "image.mp4"
    argv = ["generate", "--model", "nvidia/Cosmos-Predict2-14B-Text2Image", "--renderer", str(tmp_path / "renderer")]
    argv += ["--prompt", "a red circle", "--height", "32", "--width", "32", "--steps", "4"]
    argv += [
        "--max-sequence-length",
        "16",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--switch",
        "step",
        "--switch-step",
        "1",
    ]
    assert main(argv) == 0
    assert read_video(out).shape[0] == 1
    assert srd.RunTrace.load(out.with_suffix(".trace.json")).roles == ["sketch"] + ["render"] * 3
