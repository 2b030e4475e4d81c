"""`srd_plugin.activate(pipe)`: the flag decides; off is untouched, on equals a plain `enable`."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import srd_plugin as srd
from srd_plugin.random_state import preserved_random_state
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


def test_a_factory_module_next_to_the_config_file_is_found(pipe, tmp_path, monkeypatch):
    """Issue 16, item 6: `renderer = "module:function"` finds the module beside the file naming it."""
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "factory_beside_activate_config.py").write_text(
        "from srd_plugin.testing import tiny_wan_renderer\n\ndef make():\n    return tiny_wan_renderer()\n"
    )
    config = tmp_path / "ops" / "srd.toml"
    config.write_text(
        '[srd]\nenable = true\nrenderer = "factory_beside_activate_config:make"\nswitch = "step"\nswitch_step = 3\n'
    )
    monkeypatch.chdir(tmp_path)
    try:
        srd.activate(pipe, config_file=config)
        activated = generate(pipe)
    finally:
        sys.modules.pop("factory_beside_activate_config", None)
    assert srd.last_trace(pipe).roles == ["sketch"] * 3 + ["render"] * 5
    srd.disable(pipe)
    srd.enable(pipe, tiny_wan_renderer(), switch="step", switch_step=3)
    assert torch.equal(activated, generate(pipe))


# -- the program's random streams (issue 16, item 5) ----------------------------------------------
DRAWING_FACTORY = """
    import random

    import numpy as np
    import torch
    from srd_plugin.testing import LATENT_CHANNELS, tiny_wan_renderer, tiny_wan_transformer

    random.random(), np.random.rand(), torch.rand(1)

    def make():
        random.random(), np.random.rand(), torch.rand(1)
        return tiny_wan_renderer()

    def make_incompatible():
        random.random(), np.random.rand(), torch.rand(1)
        return tiny_wan_transformer(in_channels=2 * LATENT_CHANNELS, out_channels=2 * LATENT_CHANNELS)
"""


def global_draws() -> tuple:
    """The next numbers of the three global streams (drawing them advances the streams)."""
    return torch.rand(4), np.random.rand(4), random.random()


def same_draws(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture
def drawing_factory(tmp_path, monkeypatch):
    """The module name of a factory module that draws from every global stream at import and when called."""
    (tmp_path / "drawing_factory_for_activate.py").write_text(textwrap.dedent(DRAWING_FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "drawing_factory_for_activate"
    sys.modules.pop("drawing_factory_for_activate", None)


def test_activate_leaves_the_global_random_streams_as_they_were(pipe, drawing_factory, monkeypatch):
    seed_all(7)
    expected = global_draws()
    seed_all(7)
    monkeypatch.setenv("SRD_ENABLE", "1")
    monkeypatch.setenv("SRD_RENDERER", f"{drawing_factory}:make")
    srd.activate(pipe)
    assert srd.is_enabled(pipe)
    assert same_draws(global_draws(), expected)

    # also when `enable` refuses the renderer the factory built
    srd.disable(pipe)
    seed_all(7)
    monkeypatch.setenv("SRD_RENDERER", f"{drawing_factory}:make_incompatible")
    with pytest.raises(srd.IncompatibleRendererError):
        srd.activate(pipe)
    assert untouched(pipe)
    assert same_draws(global_draws(), expected)


def test_the_guard_restores_every_stream_also_when_the_block_raises():
    seed_all(3)
    expected = global_draws()
    seed_all(3)
    with pytest.raises(RuntimeError, match="inside"):
        with preserved_random_state():
            global_draws()
            torch.manual_seed(99)  # a reseed inside is undone too
            raise RuntimeError("inside")
    assert same_draws(global_draws(), expected)


CUDA_CHECK = """
    import torch
    from srd_plugin.random_state import preserved_random_state

    torch.manual_seed(5)
    assert not torch.cuda.is_initialized()
    with preserved_random_state():
        torch.rand(3, device="cuda")  # initialises CUDA and advances its generator
    assert torch.cuda.is_initialized()
    after_guard = torch.rand(3, device="cuda")
    torch.cuda.manual_seed_all(5)
    assert torch.equal(after_guard, torch.rand(3, device="cuda")), "CUDA stream moved"
    with preserved_random_state():  # CUDA ready: its state is saved and put back
        torch.rand(3, device="cuda")
    expected = torch.rand(3, device="cuda")
    torch.cuda.manual_seed_all(5)
    torch.rand(3, device="cuda")  # the first draw, taken above as `after_guard`
    assert torch.equal(expected, torch.rand(3, device="cuda")), "CUDA stream moved"
    print("ok")
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_guard_restores_cuda_streams_whether_or_not_cuda_was_initialised():
    """In a fresh process, so that CUDA starts uninitialised."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CUDA_CHECK)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
