"""`benchmarks/second_world_probes.py` on the tiny pair of `train2 --tiny`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
try:
    import second_world_probes as probes
finally:
    sys.path.pop(0)

from srd_plugin.miniature import train2  # noqa: E402
from srd_plugin.miniature.models2 import load_second_pipeline  # noqa: E402


def test_loss_by_level_has_every_model_and_prompt_and_the_input_back_baseline(tiny_run):
    rows = probes.loss_by_level(tiny_run, levels=(1.0, 0.5))
    assert [r["level"] for r in rows] == [1.0, 0.5]
    for role in probes.ROLES:
        for name in ("right", "empty", "other"):
            assert rows[0][f"{role}, {name} prompt"] > 0
    # oracle: at level 1 the input is the noise, so predicting it back misses by exactly the latents' mean square
    import torch

    x0 = torch.load(tiny_run / "latents.pt")["validation_latents"].float()
    assert rows[0]["input back"] == pytest.approx(float((x0**2).mean()), rel=1e-5)


def test_one_object_clips_are_the_validation_set_s_one_object_prompts():
    clips = probes.clips_for(5, one_object=True)
    assert len(clips) == 5 and all(len(p.objects) == 1 for p, _ in clips)
    assert all(c in train2.clip_set("validation", 20) for c in clips)
    assert probes.clips_for(8, one_object=False) == train2.clip_set("validation", 8)


@pytest.mark.parametrize("name", probes.SCHEDULERS)
def test_each_sampler_generates_a_scored_clip(tiny_run, name):
    pipe, _ = load_second_pipeline(tiny_run / "result")
    pipe.scheduler = probes.make_scheduler(name)
    summary = probes.sketcher_semantics(pipe, train2.clip_set("validation", 1), guidance=3.0, steps=2)
    assert summary.count == 1 and 0.0 <= summary.semantic <= 100.0


def test_the_cli_prints_both_tables_and_refuses_a_missing_folder(tiny_run, tmp_path, capsys):
    assert probes.main(["loss", "--work", str(tiny_run)]) == 0
    assert "| level | input back | sketcher, right prompt |" in capsys.readouterr().out
    argv = ["semantics", "--result", str(tiny_run / "result"), "--clips", "1", "--guidance", "1,5", "--steps", "2"]
    assert probes.main(argv) == 0
    out = capsys.readouterr().out
    assert "| 1 |" in out and "| 5 |" in out
    with pytest.raises(SystemExit):
        probes.main(["loss", "--work", str(tmp_path)])
    assert "latents.pt is missing" in capsys.readouterr().err
