"""`srd-run`: an unmodified host program runs with SRD on each supported pipeline it builds.

The first test runs the installed console script in subprocesses, as a user would (the
issue's bar); the others call `launcher.main` in this process, which is what the console
script does, to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline, WanPipeline

import srd_plugin as srd
from srd_plugin import launcher
from srd_plugin.testing import tiny_call_kwargs, tiny_wan_pipeline, tiny_wan_renderer

ROOT = Path(__file__).resolve().parents[1]
HOST = "examples/host_script.py"
CONFIG = ROOT / "examples" / "srd.toml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SRD_"):
            monkeypatch.delenv(name)


def srd_run_executable() -> str:
    found = shutil.which("srd-run", path=str(Path(sys.executable).parent)) or shutil.which("srd-run")
    assert found, "the srd-run console script is not installed; run `pip install -e .`"
    return found


def test_srd_run_on_the_example_host_script(tmp_path):
    """The bar: on with the TOML file, SRD switches; off, the output is bit-identical to the plain script."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SRD_")}
    environment["OMP_NUM_THREADS"] = "1"  # same for all three runs; spares a busy CI machine
    commands = {
        "plain": ([sys.executable, HOST], {}),
        "srd": ([srd_run_executable(), "--config", str(CONFIG), "python", HOST], {"SRD_TRACE_DIR": str(tmp_path)}),
        "off": ([srd_run_executable(), "--config", str(CONFIG), "python", HOST], {"SRD_ENABLE": "0"}),
    }
    runs = {
        name: subprocess.Popen(
            [*command, "--out", str(tmp_path / f"{name}.pt")],
            cwd=ROOT,
            env={**environment, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (command, extra) in commands.items()
    }
    stderr = {}
    for name, process in runs.items():
        out, stderr[name] = process.communicate(timeout=600)
        assert process.returncode == 0, f"{name} run failed:\n{out}\n{stderr[name]}"

    [trace_file] = tmp_path.glob("WanPipeline-*.json")
    trace = json.loads(trace_file.read_text())
    switch = trace["switch_step"]
    assert trace["completed"] and trace["policy"] == "adaptive"
    assert 4 <= switch <= 8  # min_sketch_steps and max_sketch_steps of examples/srd.toml
    assert trace["roles"] == ["sketch"] * switch + ["render"] * (12 - switch)
    assert trace["config"]["threshold"] == 0.01 and trace["config"]["min_sketch_steps"] == 4
    assert "SRD on WanPipeline #1: renderer srd_plugin.testing:tiny_wan_renderer, policy adaptive" in stderr["srd"]
    assert "SRD is off (SRD_ENABLE)" in stderr["off"] and "SRD on" not in stderr["off"]

    plain, with_srd, off = (torch.load(tmp_path / f"{name}.pt") for name in ("plain", "srd", "off"))
    assert torch.equal(off, plain)
    assert not torch.equal(with_srd, plain)


# -- in process ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_wan(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wan") / "pipeline"
    tiny_wan_pipeline().save_pretrained(folder)
    return folder


def write_script(folder: Path, body: str) -> Path:
    script = folder / "host.py"
    script.write_text(textwrap.dedent(body))
    return script


LOADING_HOST = """
    import sys
    import torch
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, WanPipeline
    from diffusers import SkyReelsV2DiffusionForcingPipeline
    from srd_plugin.testing import tiny_call_kwargs
    from srd_plugin.testing.wan_family import tiny_skyreels_transformer

    class SchedulerOnly(DiffusionPipeline):
        def __init__(self, scheduler):
            super().__init__()
            self.register_modules(scheduler=scheduler)

    pipe = WanPipeline.from_pretrained(sys.argv[1])
    pipe.set_progress_bar_config(disable=True)
    # a SkyReels-V2 diffusion-forcing pipeline, built from components: refused by its adapter
    parts = {k: v for k, v in pipe.components.items() if k != "transformer_2"}
    SkyReelsV2DiffusionForcingPipeline(**{**parts, "transformer": tiny_skyreels_transformer()})
    # a pipeline class no adapter knows, loaded from weights
    SchedulerOnly(scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(sys.argv[3])
    SchedulerOnly.from_pretrained(sys.argv[3])
    torch.save(pipe(**tiny_call_kwargs(8)).frames, sys.argv[2])
"""


def test_pipelines_loaded_and_built_are_found_and_everything_is_restored(saved_wan, tmp_path, monkeypatch, capsys):
    originals = (WanPipeline.__dict__["__init__"], DiffusionPipeline.__dict__["from_pretrained"])
    script = write_script(tmp_path, LOADING_HOST)
    monkeypatch.setenv("SRD_TRACE_DIR", str(tmp_path / "traces"))
    monkeypatch.setenv("SRD_SWITCH", "step")
    monkeypatch.setenv("SRD_SWITCH_STEP", "3")
    argv = ["--config", str(CONFIG), "--", "python", str(script), str(saved_wan), str(tmp_path / "out.pt")]
    assert launcher.main([*argv, str(tmp_path / "scheduler-only")]) == 0

    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("srd-run:")]
    assert lines[0].startswith("srd-run: SRD on WanPipeline #1: renderer srd_plugin.testing:tiny_wan_renderer")
    assert lines[0].endswith("policy step (switch_step 3)")
    refused = "srd-run: warning: SkyReelsV2DiffusionForcingPipeline is not supported, left untouched ("
    assert lines[1].startswith(refused)
    assert "deep-copies the scheduler" in lines[1]
    assert lines[2].startswith("srd-run: warning: SchedulerOnly is not supported, left untouched (")
    assert len(lines) == 3
    [trace_file] = (tmp_path / "traces").glob("*.json")
    assert srd.RunTrace.load(trace_file).roles == ["sketch"] * 3 + ["render"] * 5

    # restored: the classes are as they were, and sys.argv / sys.path too
    assert (WanPipeline.__dict__["__init__"], DiffusionPipeline.__dict__["from_pretrained"]) == originals
    assert str(script) not in sys.argv and str(tmp_path) not in sys.path

    # oracle: the same pipeline enabled by hand gives the same latents
    reference = WanPipeline.from_pretrained(saved_wan)
    reference.set_progress_bar_config(disable=True)
    srd.enable(reference, tiny_wan_renderer(), switch="step", switch_step=3)
    assert torch.equal(torch.load(tmp_path / "out.pt"), reference(**tiny_call_kwargs(8)).frames)


def test_program_exit_status_and_restoration_on_exit(tmp_path):
    init = WanPipeline.__dict__["__init__"]
    script = write_script(tmp_path, "import sys\nsys.exit(3)\n")
    with pytest.raises(SystemExit) as info:
        launcher.main(["--config", str(CONFIG), str(script)])
    assert info.value.code == 3
    assert WanPipeline.__dict__["__init__"] is init


def test_a_wrapper_the_program_replaced_is_left_alone(tmp_path):
    """The program may wrap a pipeline class itself; uninstalling must not undo its change."""
    script = write_script(
        tmp_path,
        """
        from diffusers import WanPipeline
        ours = WanPipeline.__init__
        def theirs(self, *args, **kwargs):
            ours(self, *args, **kwargs)
        WanPipeline.__init__ = theirs
        """,
    )
    init = WanPipeline.__dict__["__init__"]
    try:
        assert launcher.main(["--config", str(CONFIG), "python", str(script)]) == 0
        assert WanPipeline.__dict__["__init__"].__name__ == "theirs"
    finally:
        WanPipeline.__init__ = init


@pytest.mark.parametrize(
    "argv, words",
    [
        ([], "no program to run"),
        (["--config"], "--config needs a file"),
        (["--verbose", "host.py"], "unknown option '--verbose'"),
        (["python", "-c", "print(1)"], "interpreter option '-c' is not supported"),
        (["python", "-m"], "python -m needs a module name"),
        (["python", "absent.py"], "script 'absent.py' does not exist"),
        (["--config", "absent.toml", "python", HOST], "config file"),
    ],
)
def test_usage_errors_exit_2_before_running_anything(argv, words, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert launcher.main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "usage: srd-run" in err


def test_bad_settings_exit_2_naming_the_key(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SRD_THRESHOLD", "high")
    assert launcher.main(["--config", str(CONFIG), "python", str(ROOT / HOST)]) == 2
    assert "SRD_THRESHOLD='high': expected a number" in capsys.readouterr().err


# -- the program's random streams (issue 16, item 5) ----------------------------------------------
RANDOM_HOST = """
    import random
    import sys

    import numpy as np
    import torch
    from diffusers import SkyReelsV2DiffusionForcingPipeline
    from srd_plugin.testing import tiny_call_kwargs, tiny_wan_pipeline
    from srd_plugin.testing.wan_family import tiny_skyreels_transformer

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    # refused by its adapter (diffusion forcing), after srd-run has built a renderer for it
    parts = {k: v for k, v in pipe.components.items() if k != "transformer_2"}
    SkyReelsV2DiffusionForcingPipeline(**{**parts, "transformer": tiny_skyreels_transformer()})
    kwargs = tiny_call_kwargs(4)
    if sys.argv[2] == "global":
        kwargs["generator"] = None  # the starting noise comes from the global torch stream
    frames = pipe(**kwargs).frames
    after = {"torch": torch.rand(3), "numpy": torch.from_numpy(np.random.rand(3)), "random": random.random()}
    torch.save({"frames": frames, **after}, sys.argv[1])
"""

#: a renderer factory that draws from every global stream, at import and when called
DRAWING_FACTORY = """
    import random

    import numpy as np
    import torch
    from srd_plugin.testing import tiny_wan_renderer

    random.random(), np.random.rand(), torch.rand(1)

    def make():
        random.random(), np.random.rand(), torch.rand(1)
        return tiny_wan_renderer()
"""


@pytest.fixture
def forget_modules():
    """Modules a test writes are imported by name: drop them from `sys.modules` afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("noise", ["generator", "global"])
def test_sketcher_only_under_srd_run_is_bit_identical_to_the_plain_program(
    noise, tmp_path, monkeypatch, capsys, forget_modules
):
    """switch_step = N runs the sketcher alone: the program, its outputs and its later draws are the plain ones,
    although srd-run imported a factory and built two renderers (one for a pipeline it then refused)."""
    script = write_script(tmp_path, RANDOM_HOST)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "drawing_renderers.py").write_text(textwrap.dedent(DRAWING_FACTORY))
    forget_modules.append("drawing_renderers")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    launcher.run_program(launcher.Program(str(script), None, [str(tmp_path / "plain.pt"), noise]))

    monkeypatch.setenv("SRD_RENDERER", "drawing_renderers:make")
    monkeypatch.setenv("SRD_SWITCH", "step")
    monkeypatch.setenv("SRD_SWITCH_STEP", "4")
    monkeypatch.setenv("SRD_TRACE_DIR", str(tmp_path / "traces"))
    assert launcher.main(["python", str(script), str(tmp_path / "srd.pt"), noise]) == 0
    err = capsys.readouterr().err
    assert "SRD on WanPipeline #1" in err and "warning: SkyReelsV2DiffusionForcingPipeline is not supported" in err
    [trace_file] = (tmp_path / "traces").glob("*.json")
    assert srd.RunTrace.load(trace_file).roles == ["sketch"] * 4

    plain, with_srd = torch.load(tmp_path / "plain.pt"), torch.load(tmp_path / "srd.pt")
    assert torch.equal(with_srd["frames"], plain["frames"])
    assert torch.equal(with_srd["torch"], plain["torch"]) and torch.equal(with_srd["numpy"], plain["numpy"])
    assert with_srd["random"] == plain["random"]


# -- where a factory module is found (issue 16, item 6) -------------------------------------------
FACTORY_HOST = """
    from srd_plugin.testing import tiny_call_kwargs, tiny_wan_pipeline

    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe(**tiny_call_kwargs(2))
"""

TINY_FACTORY = """
    from srd_plugin.testing import tiny_wan_renderer

    def make():
        return tiny_wan_renderer()
"""


def factory_layout(root: Path, module: str, beside: str) -> tuple[Path, Path]:
    """A program folder and a config folder, apart, with the factory module `beside` one of them (or neither)."""
    program, config = root / "program", root / "config"
    program.mkdir()
    config.mkdir()
    script = write_script(program, FACTORY_HOST)
    if beside in ("program", "config"):
        (root / beside / f"{module}.py").write_text(textwrap.dedent(TINY_FACTORY))
    config_file = config / "srd.toml"
    config_file.write_text(f'[srd]\nrenderer = "{module}:make"\nswitch = "step"\nswitch_step = 1\n')
    return script, config_file


@pytest.mark.parametrize("beside", ["program", "config"])
def test_a_factory_module_next_to_the_script_or_the_config_file_is_found(
    beside, tmp_path, monkeypatch, capsys, forget_modules
):
    module = f"renderers_beside_{beside}"
    forget_modules.append(module)
    script, config_file = factory_layout(tmp_path, module, beside)
    monkeypatch.chdir(tmp_path)  # neither folder is the current one, and PYTHONPATH names neither
    path_before = sys.path[:]
    assert launcher.main(["--config", str(config_file), "python", str(script)]) == 0
    assert f"SRD on WanPipeline #1: renderer {module}:make" in capsys.readouterr().err
    assert sys.path == path_before
    assert Path(sys.modules[module].__file__).parent == tmp_path / beside


def test_a_factory_module_that_is_nowhere_is_reported_with_where_it_was_looked_for(tmp_path, monkeypatch, capsys):
    script, config_file = factory_layout(tmp_path, "renderers_nowhere", "neither")
    monkeypatch.chdir(tmp_path)
    assert launcher.main(["--config", str(config_file), "python", str(script)]) == 2
    err = capsys.readouterr().err
    assert f"{config_file}: srd.renderer" in err and "no module 'renderers_nowhere' in" in err
    assert str(tmp_path / "program") in err and str(tmp_path / "config") in err and "sys.path" in err


SHARING_HOST = """
    import sys
    import torch
    from diffusers import WanPipeline
    import srd_plugin as srd
    from srd_plugin.testing import tiny_call_kwargs

    pipe = WanPipeline.from_pretrained(sys.argv[1])
    twins = [pipe, WanPipeline.from_pipe(pipe), WanPipeline(**pipe.components)]
    outputs = []
    for p in twins:
        p.set_progress_bar_config(disable=True)
        outputs.append(p(**tiny_call_kwargs(6)).frames)
        outputs.append(torch.tensor(srd.last_trace(p).switch_step))
    torch.save(outputs, sys.argv[2])
"""


def test_pipelines_sharing_components_under_srd_run_share_one_setup(saved_wan, tmp_path, monkeypatch, capsys):
    """Seen before: the second pipeline was reported "left untouched" while it rendered through the first's
    setup. Now every pipeline is reported as it is: on, sharing one setup, and all give the same output."""
    script = write_script(tmp_path, SHARING_HOST)
    monkeypatch.setenv("SRD_SWITCH", "step")
    monkeypatch.setenv("SRD_SWITCH_STEP", "2")
    assert launcher.main(["--config", str(CONFIG), "python", str(script), str(saved_wan), str(tmp_path / "o.pt")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("srd-run:")]
    assert len(lines) == 3 and all(f"SRD on WanPipeline #{i}" in line for i, line in enumerate(lines, 1))
    assert "shares" not in lines[0]
    assert lines[1].endswith("shares its transformer and scheduler with WanPipeline (one setup)")
    assert lines[2].endswith("shares its transformer and scheduler with WanPipeline, WanPipeline (one setup)")
    outputs = torch.load(tmp_path / "o.pt")
    frames, switches = outputs[0::2], outputs[1::2]
    assert all(torch.equal(f, frames[0]) for f in frames) and [int(s) for s in switches] == [2, 2, 2]
    reference = WanPipeline.from_pretrained(saved_wan)
    reference.set_progress_bar_config(disable=True)
    srd.enable(reference, tiny_wan_renderer(), switch="step", switch_step=2)
    assert torch.equal(frames[0], reference(**tiny_call_kwargs(6)).frames)
