"""`benchmarks/layout_survival.py`: true clips noised to step k and finished by one model, on the tiny pair."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
try:
    import layout_survival
finally:
    sys.path.pop(0)

from srd_plugin.miniature import train2  # noqa: E402
from srd_plugin.miniature.models import make_scheduler  # noqa: E402
from srd_plugin.miniature.models2 import load_second_pipeline  # noqa: E402


@pytest.mark.parametrize("steps", [2, 7, 30])
def test_start_sigma_is_the_shift_3_schedule_and_leaves_the_scheduler_alone(steps):
    scheduler = make_scheduler()
    before = scheduler.timesteps.clone()
    for start in range(steps):
        u = 1.0 - start * (1 - 1 / 1000) / steps  # diffusers' flow grid: linspace(1, 1/1000, steps + 1)[:-1]
        assert layout_survival.start_sigma(scheduler, start, steps) == pytest.approx(3 * u / (1 + 2 * u), abs=1e-5)
    assert torch.equal(scheduler.timesteps, before)  # only a copy was set


def test_a_finish_from_step_k_runs_the_schedules_last_steps_from_its_kth_timestep(tiny_run):
    """Oracle: the diffusers scheduler's own timesteps; the transformer sees exactly steps k .. N-1."""
    from diffusers import WanVideoToVideoPipeline

    pipe, _ = load_second_pipeline(tiny_run / "result")
    v2v = WanVideoToVideoPipeline.from_pipe(pipe)
    v2v.set_progress_bar_config(disable=True)
    seen: list[float] = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(float(kwargs["timestep"].flatten()[0])), with_kwargs=True
    )
    prompt, seed = train2.clip_set("validation", 1)[0]
    scheduler = make_scheduler()
    scheduler.set_timesteps(5)
    try:
        for start in (0, 2, 4):
            seen.clear()
            frames = layout_survival.finish(v2v, pipe.transformer, prompt, seed, start, 5)
            expected = [float(t) for t in scheduler.timesteps[start:]]
            assert sorted(set(seen), reverse=True) == pytest.approx(expected)  # CFG: two calls a step
            assert len(seen) == 2 * (5 - start)
            assert seen[0] / 1000 == pytest.approx(layout_survival.start_sigma(scheduler, start, 5), abs=1e-3)  # int t
            assert frames.shape == (17, 64, 64, 3)
    finally:
        handle.remove()


def test_start_steps_outside_the_schedule_are_refused(tiny_run, capsys):
    with pytest.raises(ValueError, match="start step"):
        layout_survival.strength_for(5, 5)
    with pytest.raises(SystemExit):
        layout_survival.main(["--result", str(tiny_run / "result"), "--steps", "4", "--starts", "0,4"])
    assert "--starts: 4 is not a step of a 4-step schedule" in capsys.readouterr().err


def test_the_benchmark_prints_every_model_at_every_start_and_plots(tiny_run, tmp_path, capsys):
    plot = tmp_path / "survival.png"
    argv = ["--result", str(tiny_run / "result"), "--clips", "1", "--starts", "0,1", "--steps", "2"]
    argv += ["--plot", str(plot)]
    assert layout_survival.main(argv) == 0
    out = capsys.readouterr().out
    table = out[out.index("| model |") :]
    for model in ("sketcher", "renderer", "specialist"):
        assert f"| {model} | 0 | 1.000 |" in table
        assert f"| {model} | 1 | 0.750 |" in table  # shift 3 halfway: 3 (1/2) / (1 + 2 (1/2))
    assert "| VAE round trip | 2 | 0.000 |" in table
    assert plot.stat().st_size > 0


def test_the_round_trip_of_a_true_clip_keeps_its_size(tiny_run):
    pipe, _ = load_second_pipeline(tiny_run / "result")
    prompt, seed = train2.clip_set("validation", 1)[0]
    frames = layout_survival.round_trip(pipe.vae, prompt, seed)
    assert frames.shape == (17, 64, 64, 3)
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    assert torch.isfinite(torch.from_numpy(frames)).all()


def test_a_transformer_from_another_folder_runs_beside_the_chosen_roles(tiny_run, capsys):
    """Oracle: the renderer's own folder under another name gives the renderer's row exactly."""
    result = tiny_run / "result"
    argv = ["--result", str(result), "--clips", "1", "--starts", "0", "--steps", "2", "--roles", "renderer"]
    assert layout_survival.main([*argv, "--model", f"again={result / 'renderer'}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    renderer = next(line for line in lines if line.startswith("| renderer | 0 |"))
    again = next(line for line in lines if line.startswith("| again | 0 |"))
    assert renderer.split("|")[2:] == again.split("|")[2:]
    assert not any(line.startswith(("| sketcher |", "| specialist |")) for line in lines)


def test_a_bad_model_argument_is_refused_before_any_work(tiny_run, tmp_path, capsys):
    argv = ["--result", str(tiny_run / "result"), "--steps", "2", "--starts", "0"]
    for bad, message in (
        ("again", "--model takes NAME=DIR"),
        (f"x={tmp_path}", "no transformer in"),
    ):
        with pytest.raises(SystemExit):
            layout_survival.main([*argv, "--model", bad])
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="holds no painter"):
        layout_survival.survival(tiny_run / "result", 1, [0], 2, roles=("painter",))
