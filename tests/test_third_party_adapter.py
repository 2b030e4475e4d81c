"""The example third-party adapter (examples/srd-toy-loop), discovered through its entry point.

The package is really installed (`pip install --target`, no network, the venv left as it
is), its folder put on `sys.path`, and the plugin manager rebuilt: discovery goes through
`importlib.metadata` and the "srd_plugin" entry-point group, as for any installed adapter.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import srd_plugin as srd
from srd_plugin import IncompatibleRendererError, launcher
from srd_plugin.manager import get_plugin_manager, reload_plugin_manager, supported_pipelines

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "examples" / "srd-toy-loop"
STEPS = 12


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Install the example package into a temporary folder and make its entry point visible."""
    source = tmp_path_factory.mktemp("source") / PACKAGE.name  # the build writes next to its sources
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    result = subprocess.run([*command, "--target", str(target), str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    reload_plugin_manager()
    import srd_toy_loop.models

    yield srd_toy_loop.models
    sys.path.remove(str(target))
    for name in [n for n in sys.modules if n == "srd_toy_loop" or n.startswith("srd_toy_loop.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    reload_plugin_manager()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SRD_"):
            monkeypatch.delenv(name)


def reference_loop(sampler, renderer, switch_step: int, seed: int = 0):
    """The sampler's loop written out by hand: the sketcher for `switch_step` steps, then the renderer."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(sampler.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, sampler.transformer.config.channels, 32, generator=generator)
    scheduler.set_timesteps(STEPS)
    with torch.no_grad():
        for index, t in enumerate(scheduler.timesteps):
            model = sampler.transformer if index < switch_step else renderer
            latents = scheduler.step(model(latents, t.expand(2)), t, latents, return_dict=False)[0]
    return latents


def run(sampler, seed: int = 0):
    return sampler(num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed))


def test_discovered_through_its_entry_point_only(toy):
    entry_points = importlib.metadata.entry_points(group="srd_plugin")
    assert "srd_toy_loop.srd_adapter" in {ep.value for ep in entry_points if ep.name == "toy_loop"}
    assert get_plugin_manager().get_plugin("toy_loop") is sys.modules["srd_toy_loop.srd_adapter"]
    assert "ToyFlowSampler" in supported_pipelines()

    target = sys.path.pop(0)  # without the installed distribution, the adapter is gone
    try:
        importlib.invalidate_caches()
        reload_plugin_manager()
        assert "ToyFlowSampler" not in supported_pipelines()
    finally:
        sys.path.insert(0, target)
        importlib.invalidate_caches()
        reload_plugin_manager()
    assert "ToyFlowSampler" in supported_pipelines()


def test_step_switch_equals_the_hand_written_loop_and_disable_restores(toy):
    from srd_toy_loop import ToyFlowSampler

    sampler = ToyFlowSampler(toy.tiny_sketcher())
    renderer = toy.tiny_renderer()
    plain = run(sampler)
    srd.enable(sampler, renderer, switch="step", switch_step=5)
    with_srd = run(sampler)
    assert srd.last_trace(sampler).roles == ["sketch"] * 5 + ["render"] * 7
    srd.disable(sampler)
    assert torch.equal(run(sampler), plain)
    assert torch.equal(with_srd, reference_loop(sampler, renderer, 5))
    assert torch.equal(plain, reference_loop(sampler, renderer, STEPS))


def test_adaptive_policy_and_a_renderer_folder(toy, tmp_path):
    from srd_toy_loop import ToyFlowSampler

    sampler = ToyFlowSampler(toy.tiny_sketcher())
    toy.tiny_renderer().save_pretrained(tmp_path / "renderer")
    srd.enable(sampler, str(tmp_path / "renderer"), min_sketch_steps=3, max_sketch_steps=6)
    run(sampler)
    trace = srd.last_trace(sampler)
    assert 3 <= trace.switch_step <= 6 and trace.completed
    assert trace.roles == ["sketch"] * trace.switch_step + ["render"] * (STEPS - trace.switch_step)
    assert [m is None for m in trace.metrics[:2]] == [True, True]  # s_i is defined from step 2 on
    assert all(m is not None for m in trace.metrics[2 : trace.switch_step])


def test_incompatible_renderer_is_refused_by_the_adapter(toy):
    from srd_toy_loop import ToyFlowSampler, ToyVelocityNet

    sampler = ToyFlowSampler(toy.tiny_sketcher())
    with pytest.raises(IncompatibleRendererError, match="latent channels"):
        srd.enable(sampler, ToyVelocityNet(channels=3, hidden=16, layers=1))
    assert not srd.is_enabled(sampler)


def test_srd_run_python_m_on_the_third_party_host(toy, tmp_path, monkeypatch, capsys):
    from srd_toy_loop import ToyFlowSampler

    monkeypatch.setenv("SRD_TRACE_DIR", str(tmp_path))
    init = ToyFlowSampler.__dict__["__init__"]
    out = tmp_path / "toy.pt"
    argv = ["--config", str(PACKAGE / "srd.toml"), "--", "python", "-m", "srd_toy_loop.demo", "--out", str(out)]
    assert launcher.main(argv) == 0
    assert ToyFlowSampler.__dict__["__init__"] is init
    err = capsys.readouterr().err
    assert "SRD on ToyFlowSampler #1: renderer srd_toy_loop.models:tiny_renderer, policy step (switch_step 6)" in err
    [trace_file] = tmp_path.glob("ToyFlowSampler-*.json")
    assert srd.RunTrace.load(trace_file).roles == ["sketch"] * 6 + ["render"] * 6
    sampler = ToyFlowSampler(toy.tiny_sketcher())
    assert torch.equal(torch.load(out), reference_loop(sampler, toy.tiny_renderer(), 6))
