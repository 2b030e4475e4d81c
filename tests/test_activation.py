"""`srd_plugin.activate(pipe)`: the flag decides; off is untouched, on equals a plain `enable`."""

from __future__ import annotations

import pytest
import torch

import srd_plugin as srd
from srd_plugin.runtime import session_of
from srd_plugin.testing import tiny_call_kwargs, tiny_wan_renderer

STEPS = 8
FACTORY = "srd_plugin.testing:tiny_wan_renderer"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Tests set SRD_* variables through monkeypatch only; none leak in from the shell."""
    import os

    for name in list(os.environ):
        if name.startswith("SRD_"):
            monkeypatch.delenv(name)


def generate(pipe):
    return pipe(**tiny_call_kwargs(STEPS)).frames


def untouched(pipe) -> bool:
    """No session, no hook on the transformer (a call itself creates the empty registry), no scheduler wrapper."""
    registry = getattr(pipe.transformer, "_diffusers_hook", None)
    no_hooks = registry is None or not registry.hooks
    wrapped = {"step", "set_timesteps"} & set(pipe.scheduler.__dict__)
    return session_of(pipe) is None and no_hooks and not wrapped


def test_flag_off_leaves_the_pipeline_untouched(pipe, monkeypatch):
    plain = generate(pipe)
    monkeypatch.setenv("SRD_RENDERER", FACTORY)
    monkeypatch.setenv("SRD_SWITCH", "step")
    monkeypatch.setenv("SRD_SWITCH_STEP", "2")
    assert srd.activate(pipe) is pipe  # no SRD_ENABLE: off
    monkeypatch.setenv("SRD_ENABLE", "0")
    srd.activate(pipe)
    assert untouched(pipe) and not srd.is_enabled(pipe)
    assert torch.equal(generate(pipe), plain)
    assert srd.last_trace(pipe) is None


def test_flag_on_equals_enable(pipe, monkeypatch):
    monkeypatch.setenv("SRD_ENABLE", "1")
    monkeypatch.setenv("SRD_RENDERER", FACTORY)
    monkeypatch.setenv("SRD_SWITCH", "step")
    monkeypatch.setenv("SRD_SWITCH_STEP", "3")
    srd.activate(pipe)
    activated = generate(pipe)
    assert srd.last_trace(pipe).roles == ["sketch"] * 3 + ["render"] * 5

    srd.disable(pipe)
    srd.enable(pipe, tiny_wan_renderer(), switch="step", switch_step=3)
    assert torch.equal(activated, generate(pipe))


def test_config_file_renderer_folder_trace_dir_and_argument_precedence(pipe, tmp_path, monkeypatch):
    tiny_wan_renderer().save_pretrained(tmp_path / "models" / "renderer")
    config = tmp_path / "srd.toml"
    config.write_text(
        '[srd]\nenable = true\nrenderer = "models/renderer"\ntrace_dir = "traces"\nswitch = "step"\nswitch_step = 5\n'
    )
    monkeypatch.setenv("SRD_SWITCH_STEP", "4")  # the environment beats the file ...
    srd.activate(pipe, config_file=config, switch_step=2)  # ... and an argument beats both
    generate(pipe)
    generate(pipe)
    traces = sorted((tmp_path / "traces").glob("WanPipeline-*.json"))
    assert [t.name[-12:] for t in traces] == ["call001.json", "call002.json"]
    for path in traces:
        trace = srd.RunTrace.load(path)
        assert trace.completed and trace.roles == ["sketch"] * 2 + ["render"] * 6
    srd.disable(pipe)
    generate(pipe)
    assert len(list((tmp_path / "traces").glob("*.json"))) == 2  # disabled: nothing more written


def test_srd_config_variable_names_the_file(pipe, tmp_path, monkeypatch):
    config = tmp_path / "ops.toml"
    config.write_text(f'[srd]\nenable = true\nrenderer = "{FACTORY}"\nswitch = "ratio"\nswitch_ratio = 0.5\n')
    monkeypatch.setenv("SRD_CONFIG", str(config))
    srd.activate(pipe)
    generate(pipe)
    assert srd.last_trace(pipe).switch_step == 4


def test_bad_settings_raise_before_touching_the_pipeline(pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("SRD_THRESHOLD", "high")
    with pytest.raises(ValueError, match="SRD_THRESHOLD"):
        srd.activate(pipe)  # the flag is off, but a broken setting is still reported
    monkeypatch.delenv("SRD_THRESHOLD")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SRD_ENABLE", "1")
    monkeypatch.setenv("SRD_RENDERER", FACTORY)
    monkeypatch.setenv("SRD_TRACE_DIR", str(blocker / "traces"))
    with pytest.raises(ValueError, match="SRD_TRACE_DIR: cannot create the trace folder"):
        srd.activate(pipe)
    assert untouched(pipe)


def test_trace_writing_failure_does_not_break_generation(pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("SRD_ENABLE", "1")
    monkeypatch.setenv("SRD_RENDERER", FACTORY)
    monkeypatch.setenv("SRD_TRACE_DIR", str(tmp_path / "traces"))
    srd.activate(pipe)
    (tmp_path / "traces").rmdir()
    (tmp_path / "traces").write_text("now a file")
    with pytest.warns(UserWarning, match="could not write the trace"):
        generate(pipe)
    assert srd.last_trace(pipe).completed
    assert session_of(pipe) is not None
