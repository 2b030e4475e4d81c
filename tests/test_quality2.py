"""The second world's quality benchmark (`benchmarks/quality2.py`) on the tiny pair of `train2 --tiny`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
try:
    import quality2
finally:
    sys.path.pop(0)

from srd_plugin.miniature import train2, world2  # noqa: E402

COLUMNS = {
    "method", "small_model", "steps", "sketch_steps", "clips", "semantic", "count", "colour", "shape",
    "direction", "fidelity_db", "contrast", "pattern_energy", "seconds", "speedup", "denoise_speedup",
}  # fmt: skip


def test_clip_set_is_the_validation_rule_on_any_split():
    test = train2.clip_set("test", 8)
    assert train2.validation_set(8) == train2.clip_set("validation", 8)
    assert [seed for _, seed in test] == list(range(1000, 1008))
    assert [len(p.objects) for p, _ in test] == [1, 1] + [2] * 6
    assert all(world2.split_of(p) == "test" for p, _ in test)


def test_quick_benchmark_runs_every_row_with_every_column(tiny_run, tmp_path):
    report_path, plot_path = tmp_path / "q2.json", tmp_path / "q2.png"
    argv = ["--result", str(tiny_run / "result"), "--quick", "--json", str(report_path), "--plot", str(plot_path)]
    assert quality2.main(argv) == 0
    report = json.loads(report_path.read_text())
    rows = {row["method"]: row for row in report["rows"]}
    reduced = next(name for name in rows if name.startswith("step reduction ("))
    assert list(rows) == [
        "sketcher only",
        "renderer only",
        "specialist only",
        "SRD adaptive",
        "SRD adaptive, specialist",
        "SRD switch at 1",
        "SRD switch at 3",
        "SRD adaptive, render guidance off",
        "sketcher only (pass 2)",
        "TeaCache (threshold 0.3)",
        reduced,
    ]
    for row in report["rows"]:
        assert COLUMNS <= set(row) and row["clips"] == 2, row
        assert row["speedup"] > 0 and row["denoise_speedup"] > 0 and np.isfinite(row["fidelity_db"])
    assert rows["sketcher only"]["speedup"] == rows["sketcher only (pass 2)"]["speedup"] == 1.0
    # the trace's sketch steps show which rows switched where
    sketched = {name: row["sketch_steps"] for name, row in rows.items()}
    assert sketched["sketcher only"] == 6 and sketched["renderer only"] == sketched["specialist only"] == 0
    assert (sketched["SRD switch at 1"], sketched["SRD switch at 3"]) == (1, 3)
    share = rows["SRD adaptive"]["denoise_seconds"] / rows["sketcher only"]["denoise_seconds"]
    assert reduced == f"step reduction ({max(1, round(6 * share))} steps)"  # SRD adaptive's measured compute
    assert rows[reduced]["sketch_steps"] == rows[reduced]["steps"]
    assert rows["SRD adaptive, specialist"]["small_model"] == "specialist"
    assert rows["TeaCache (threshold 0.3)"]["teacache_calls"] == 12  # 6 steps, with and without the prompt
    assert report["clips"] == [[p.text, s] for p, s in train2.clip_set("validation", 2)]
    assert report["reference"]["semantic"] == 100.0 and plot_path.stat().st_size > 0


def test_rows_run_the_models_they_name(tiny_run):
    """Each single-model row equals a plain call of the model it names (same seed, same noise), and the
    two small models differ, so that a mislabelled row or a swapped model fails."""
    import srd_plugin as srd
    from srd_plugin.miniature.models2 import call_kwargs, load_second_pipeline

    pipe, smalls = load_second_pipeline(tiny_run / "result")
    prompt, seed = train2.clip_set("validation", 1)[0]
    methods = {m.label: m for m in quality2.first_pass_methods(4, {"threshold": 0.2, "min_sketch_steps": 1})}
    frames = {
        label: quality2.generate(pipe, smalls, quality2.Result2(methods[label]), prompt, seed)
        for label in ("sketcher only", "renderer only", "specialist only", "SRD adaptive", "SRD adaptive, specialist")
    }
    srd.disable(pipe)
    sketcher = pipe.transformer
    for label, model in (("sketcher only", sketcher), ("renderer only", smalls["renderer"])):
        pipe.transformer = model
        np.testing.assert_array_equal(frames[label], pipe(**call_kwargs(prompt.text, seed, 4)).frames[0], label)
    pipe.transformer = smalls["specialist"]
    np.testing.assert_array_equal(frames["specialist only"], pipe(**call_kwargs(prompt.text, seed, 4)).frames[0])
    pipe.transformer = sketcher
    assert not np.array_equal(frames["renderer only"], frames["specialist only"])
    assert not np.array_equal(frames["SRD adaptive"], frames["SRD adaptive, specialist"])


def test_quick_sweep_runs_the_grid_and_suggests(tiny_run, tmp_path):
    report_path = tmp_path / "sweep.json"
    argv = ["--result", str(tiny_run / "result"), "--quick", "--sweep", "--clips", "1", "--json", str(report_path)]
    assert quality2.main(argv) == 0
    report = json.loads(report_path.read_text())
    labels = [row["method"] for row in report["rows"]]
    assert labels == [m.label for m in quality2.sweep_methods(6, None)] and labels[0] == "sketcher only"
    adaptive = [row for row in report["rows"] if row["switch"] == "adaptive"]
    assert len(adaptive) == 2 * len(quality2.SWEEP_THRESHOLDS) * 2  # min sketch steps 1 and 2 at 6 steps
    assert len([row for row in report["rows"] if row["teacache_threshold"]]) == len(quality2.SWEEP_TEACACHE_THRESHOLDS)
    assert report["mode"] == "sweep" and set(report["suggestion"]) >= {"renderer", "specialist"}


def _row(method: str, small: str, semantic: float, fidelity: float, speedup: float, denoise: float, **extra):
    base = {"switch": "adaptive", "teacache_threshold": None, "steps": 30, "threshold": 0.2, "min_sketch_steps": 6}
    return {**base, "method": method, "small_model": small, "semantic": semantic, "fidelity_db": fidelity,
            "speedup": speedup, "denoise_speedup": denoise, **extra}  # fmt: skip


def test_suggestion_is_the_most_accurate_setting_at_the_target_speedup():
    rows = [
        _row("slow and right", "renderer", 90, 30, 1.8, 2.0),
        _row("fast, less right", "renderer", 80, 29, 2.2, 2.5),
        _row("fast, as right, more detail", "renderer", 80, 31, 2.1, 2.4, threshold=0.3),
        _row("specialist", "specialist", 70, 30, 2.5, 3.0),
        _row("TeaCache (threshold 0.2)", "renderer", 60, 28, 2.0, 2.3, switch="step", teacache_threshold=0.2),
        _row("TeaCache (threshold 0.5)", "renderer", 50, 27, 3.0, 3.5, switch="step", teacache_threshold=0.5),
        _row("step reduction (12 steps)", "renderer", 70, 28, 2.2, 2.5, switch="step", steps=12),
        _row("step reduction (8 steps)", "renderer", 60, 27, 3.4, 3.7, switch="step", steps=8),
    ]
    choice = quality2.suggest(rows)
    assert choice["renderer"] == {"method": "fast, as right, more detail", "threshold": 0.3, "min_sketch_steps": 6}
    assert choice["specialist"]["method"] == "specialist"
    assert (choice["teacache_threshold"], choice["reduced_steps"]) == (0.2, 12)
    assert quality2.suggest([r for r in rows if r["speedup"] < 2]) == {"renderer": None, "specialist": None}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sweep", "--split", "test"], "validation split only"),
        ([], "lacks pipeline/model_index.json"),
        (["--clips", "0"], "--clips must be >= 1"),
        (["--min-sketch-steps", "6", "--steps", "6"], "--min-sketch-steps must be between 1 and"),
    ],
)
def test_bad_runs_are_refused_before_any_work(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as stopped:
        quality2.main(["--result", str(tmp_path / "no-pair"), *extra])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_result_or_tiny_work_is_required(capsys):
    with pytest.raises(SystemExit):
        quality2.main(["--quick"])
    assert "give exactly one of --result DIR" in capsys.readouterr().err
