"""The second miniature world: dataset, evaluators (true and degraded clips), the recipe's tiny mode."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from srd_plugin.miniature import evaluate2, world2
from srd_plugin.miniature.dataset import COLOURS, DIRECTIONS, SHAPES

PAIR = "a red circle moving left and a blue square moving up"
#: a fixed sample of prompts of every split, one and two objects
SAMPLE = [p for split in world2.SPLITS for p in world2.prompts_of(split)[::37]]


# -- dataset ----------------------------------------------------------------------------------
def test_clips_are_deterministic_in_range_and_differ_by_seed():
    clip = world2.make_clip(PAIR, seed=3)
    assert clip.shape == (world2.NUM_FRAMES, world2.HEIGHT, world2.WIDTH, 3) == (17, 64, 64, 3)
    assert clip.dtype == np.float32 and clip.min() >= 0.0 and clip.max() <= 1.0
    np.testing.assert_array_equal(clip, world2.make_clip(world2.Prompt2.parse(PAIR), seed=3))
    assert not np.array_equal(clip, world2.make_clip(PAIR, seed=4))


def test_objects_move_as_prompted_stay_inside_and_apart():
    for prompt in world2.all_prompts()[::5]:
        params = world2.sample_params(prompt, seed=11)
        for spec, obj in zip(prompt.objects, params.objects):
            (x0, y0), (x1, y1) = obj.centres[0], obj.centres[-1]
            dx, dy = DIRECTIONS[spec.direction]
            assert (x1 - x0) * dx + (y1 - y0) * dy >= 16.0 - 1e-9
            assert abs((x1 - x0) * dy) + abs((y1 - y0) * dx) == 0.0
            for cx, cy in (obj.centres[0], obj.centres[-1]):
                area = world2.shape_coverage(obj.shape, obj.size, cx, cy, world2.HEIGHT, world2.WIDTH).sum()
                assert area == pytest.approx(np.pi * obj.size**2, rel=0.05)  # whole shape in frame
        if len(params.objects) == 2:
            overlap = np.prod(world2.coverage(params), axis=0)
            assert overlap.max() == 0.0


def test_patterns_are_fine_and_part_of_the_clip():
    params = world2.sample_params(PAIR, seed=0)
    textured, plain = world2.render_layers(params)
    assert 0.03 < np.abs(textured - plain).mean() < 0.1  # the pattern is there, but small next to the objects
    assert not np.array_equal(textured, world2.make_clip(PAIR, seed=1))
    # the object's pattern moves with it: relative to its centre it is the same in every frame
    obj = params.objects[0]
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    first = obj.pattern.values(xs - obj.centres[0][0], ys - obj.centres[0][1])
    shifted = obj.pattern.values(xs + 16 - obj.centres[16][0], ys - obj.centres[16][1])  # moving left, 16 frames
    speed = (obj.centres[0][0] - obj.centres[16][0]) / 16
    assert speed > 0 and np.allclose(first, shifted, atol=1e-9) == (abs(speed - 1.0) < 1e-12)


def test_splits_partition_the_prompts_and_keep_every_pair_in_training():
    splits = {name: world2.prompts_of(name) for name in world2.SPLITS}
    texts = [p.text for name in world2.SPLITS for p in splits[name]]
    assert sorted(texts) == sorted(p.text for p in world2.all_prompts()) and len(texts) == 1500
    assert all(len(splits[name]) >= 100 for name in ("validation", "test"))
    train = splits["train"]
    values = {"colour": list(COLOURS), "shape": list(SHAPES), "direction": list(DIRECTIONS)}
    singles = [p.objects[0] for p in train if len(p.objects) == 1]
    for first, second in itertools.combinations(values, 2):
        seen = {(getattr(o, first), getattr(o, second)) for o in singles}
        assert seen == set(itertools.product(values[first], values[second])), (first, second)
    pairs = [p for p in train if len(p.objects) == 2]
    for attribute in ("shape", "direction"):  # both objects' values in every combination
        seen = {(getattr(p.objects[0], attribute), getattr(p.objects[1], attribute)) for p in pairs}
        assert seen == set(itertools.product(values[attribute], repeat=2)), attribute


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("a red circle", "is not of the form"),
        ("a pink circle moving left", "unknown colour"),
        ("a red circle moving left and a red square moving up", "different colours"),
        ("a blue circle moving left and a red square moving up", "earlier in the palette"),
    ],
)
def test_prompt_parse_names_what_is_wrong(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        world2.Prompt2.parse(text)


# -- evaluators on true clips -----------------------------------------------------------------------
def test_true_clips_are_fully_semantic_and_their_own_detail():
    scores = [evaluate2.score_semantics(world2.make_clip(p, 1000 + i), p) for i, p in enumerate(SAMPLE)]
    summary = evaluate2.summarise(scores)
    assert summary.count == len(SAMPLE) >= 40
    assert summary.semantic == 100.0, [(p.text, s) for p, s in zip(SAMPLE, scores) if not s.semantic_ok]
    clip = world2.make_clip(PAIR, 5)
    detail = evaluate2.score_detail(clip, clip)
    assert detail.high_psnr == evaluate2.PSNR_CAP and detail.high_correlation == pytest.approx(1.0)


# -- evaluators on degraded clips -------------------------------------------------------------------
def test_blur_keeps_the_semantics_and_loses_the_detail():
    for index, prompt in enumerate(SAMPLE[::4]):
        clip = world2.make_clip(prompt, 2000 + index)
        blurred = evaluate2.gaussian_blur(clip.astype(np.float64), 1.5)
        assert evaluate2.score_semantics(blurred, prompt).semantic_ok, prompt.text
        detail = evaluate2.score_detail(blurred, clip)
        assert detail.high_energy < 0.5 and detail.high_psnr < 35.0  # the pattern's contrast is mostly gone
    # the pattern-free rendering (right layout, no texture) loses the detail as well
    textured, plain = world2.render_layers(world2.sample_params(PAIR, 7))
    assert evaluate2.score_semantics(plain, PAIR).semantic_ok
    flat = evaluate2.score_detail(plain, textured)
    assert abs(flat.high_correlation) < 0.1 and flat.high_energy < 0.05 and flat.high_psnr < 32.0


def test_detail_ranks_noise_and_a_wrong_phase_below_the_truth():
    clip = world2.make_clip(PAIR, 8).astype(np.float64)
    noisy = np.clip(clip + np.random.default_rng(0).normal(0, 0.03, clip.shape), 0, 1)
    rolled = np.roll(clip, 2, axis=2)  # everything 2 px to the right: every pattern out of phase
    true, noise, phase = (evaluate2.score_detail(x, clip) for x in (clip, noisy, rolled))
    assert true.high_psnr > noise.high_psnr > 20.0
    assert phase.high_correlation < 0.3 < noise.high_correlation < true.high_correlation


def test_wrong_colour_loses_colour_and_only_that():
    clip = world2.make_clip("a red circle moving left", 9)
    swapped = clip[..., [1, 0, 2]]  # red <-> green
    score = evaluate2.score_semantics(swapped, "a red circle moving left")
    assert not score.colour_ok and not score.semantic_ok
    assert evaluate2.score_semantics(swapped, "a green circle moving left").semantic_ok


def test_reversed_clip_loses_every_direction():
    clip = world2.make_clip(PAIR, 10)
    score = evaluate2.score_semantics(clip[::-1], PAIR)
    assert score.colour_ok and score.shape_ok and score.count_ok and not score.direction_ok
    flipped = "a red circle moving right and a blue square moving down"
    assert evaluate2.score_semantics(clip[::-1], flipped).semantic_ok


def test_two_objects_swapping_roles_fail_the_binding():
    params = world2.sample_params(PAIR, 12)
    clip = world2.render(params)
    swapped = "a red square moving up and a blue circle moving left"  # same words, other object does what
    score = evaluate2.score_semantics(clip, swapped)
    assert score.count_ok and score.colour_ok and not score.shape_ok and not score.direction_ok


def test_a_missing_object_fails_the_count():
    textured, _ = world2.render_layers(world2.sample_params("a red circle moving left", 13))
    score = evaluate2.score_semantics(textured, PAIR)
    assert not score.count_ok and not score.colour_ok and not score.semantic_ok
    empty = np.full_like(textured, 0.3)
    nothing = evaluate2.score_semantics(empty, "a red circle moving left")
    assert nothing.detection.objects == () and not nothing.semantic_ok


def test_evaluators_refuse_a_wrong_layout():
    clip = world2.make_clip(PAIR, 0)
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        evaluate2.detect(clip[..., 0])
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate2.score_detail(clip[:9], clip)


# -- the recipe (tiny mode; `tiny_run` is in conftest.py) -------------------------------------------
def test_tiny_recipe_writes_a_pipeline_renderer_and_specialist_that_run_srd(tiny_run):
    import srd_plugin as srd
    from srd_plugin.miniature.models2 import LATENT_CHANNELS, call_kwargs, load_second_pipeline

    pipe, others = load_second_pipeline(tiny_run / "result")
    renderer, specialist = others["renderer"], others["specialist"]
    assert pipe.vae.config.z_dim == LATENT_CHANNELS and len(pipe.vae.config.latents_std) == LATENT_CHANNELS
    for small in (renderer, specialist):  # same width, fewer blocks
        assert small.config.num_layers < pipe.transformer.config.num_layers
        assert small.config.num_attention_heads * small.config.attention_head_dim == (
            pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim
        )
    with srd.sketch_render(pipe, renderer, switch="step", switch_step=1):
        frames = pipe(**call_kwargs(PAIR, seed=0, num_inference_steps=2)).frames[0]
    assert frames.shape == (17, 64, 64, 3) and np.isfinite(frames).all()
    assert srd.last_trace(pipe).roles == ["sketch", "render"]
    stages = json.loads((tiny_run / "result" / "stages.json").read_text())
    assert {name: stage["reason"] for name, stage in stages.items()} == dict.fromkeys(stages, "steps")
    check = json.loads((tiny_run / "vae_check.json").read_text())
    assert check["true"]["semantic"] == 100.0 and check["through_vae"]["count"] == 4


def test_specialist_sees_only_its_noise_levels():
    import torch

    from srd_plugin.miniature.train2 import sample_sigmas

    generator = torch.Generator().manual_seed(0)
    low, full = sample_sigmas(4000, generator, 0.6), sample_sigmas(4000, generator)
    assert low.max() <= 0.6 + 1e-6 and low.max() > 0.58
    assert full.max() > 0.99 and full.mean() > low.mean()


def test_the_logit_normal_density_centres_on_the_mid_levels_and_keeps_its_bound():
    import torch

    from srd_plugin.miniature.train2 import sample_sigmas

    generator = torch.Generator().manual_seed(0)
    full = sample_sigmas(20000, generator, density="logit-normal")
    assert abs(full.median().item() - 0.5) < 0.02
    # sigmoid(N(0, 1)) puts about 57% of the draws between 0.4 and 0.8 and 1.5% above 0.9 (shift3: 39% and 25%)
    assert 0.54 < ((full > 0.4) & (full < 0.8)).float().mean().item() < 0.60
    assert 0.01 < (full > 0.9).float().mean().item() < 0.02
    low = sample_sigmas(20000, generator, 0.6, density="logit-normal")
    assert low.max() <= 0.6 + 1e-6 and low.max() > 0.59


def test_the_sketcher_heads_and_the_density_are_recipe_fields_checked_before_any_work(tmp_path):
    from dataclasses import asdict

    import pytest

    from srd_plugin.miniature import train2

    recipe = train2.Recipe2(sketcher_heads=4)
    size = train2.flow_size(recipe, "sketcher")
    assert (size.num_attention_heads, size.attention_head_dim) == (4, 32)
    assert train2.flow_size(recipe, "renderer") == train2.SIZES["renderer"]
    with pytest.raises(ValueError, match="sketcher_heads must divide"):
        train2.train(tmp_path / "w", train2.Recipe2(sketcher_heads=3), train2.Budget())
    with pytest.raises(ValueError, match="sigma-density takes one of"):
        train2.train(tmp_path / "w", train2.Recipe2(sigma_density="uniform"), train2.Budget())
    assert not (tmp_path / "w").exists()
    # a recipe stored before these fields existed is the default recipe, and a changed field is another recipe
    new_fields = ("sigma_density", "sketcher_heads")
    stored = {key: value for key, value in asdict(train2.Recipe2()).items() if key not in new_fields}
    assert train2._fixed_part(stored) == train2._fixed_part(asdict(train2.Recipe2()))
    assert train2._fixed_part(stored) != train2._fixed_part(asdict(recipe))


def test_flow_stage_resumes_exactly_and_a_budget_stop_is_resumed(tiny_run, tmp_path):
    import shutil

    import torch

    from srd_plugin.miniature import train2

    def fresh(name: str):
        work = tmp_path / name
        work.mkdir()
        for item in ("clips.pt", "vae.pt", "vae_final", "latents.pt", "recipe.json"):
            source = tiny_run / item
            (shutil.copytree if source.is_dir() else shutil.copy)(source, work / item)
        return work

    straight = fresh("straight")
    train2.main(["--work", str(straight), "--tiny", "--stop-after", "sketcher", "--patience", "99"])
    split = fresh("split")
    train2.main(["--work", str(split), "--tiny", "--stop-after", "sketcher", "--budget", "0"])
    assert json.loads((split / "sketcher_final" / "done.json").read_text())["reason"] == "budget"
    train2.main(["--work", str(split), "--tiny", "--stop-after", "sketcher", "--sketcher-steps", "2"])
    train2.main(["--work", str(split), "--tiny", "--stop-after", "sketcher", "--patience", "99"])
    # the first run stopped at step 2 by its step count: a larger count is only taken up by a fresh final
    a, b = (torch.load(w / "sketcher.pt") for w in (straight, split))
    assert a["step"] == 4 and b["step"] == 2
    shutil.rmtree(split / "sketcher_final")
    train2.main(["--work", str(split), "--tiny", "--stop-after", "sketcher", "--patience", "99"])
    b = torch.load(split / "sketcher.pt")
    assert b["step"] == 4 and b["history"] == a["history"]
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=0, msg=name)


def test_a_folder_restored_from_kept_weights_goes_on_from_them(tiny_run, tmp_path):
    """Work folders do not survive between sessions; the committed copy holds final weights and done.json only."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from srd_plugin.miniature import train2

    work = tmp_path / "restored"
    work.mkdir()
    for item in ("recipe.json", "vae_final", "vae_folded"):
        source = tiny_run / item
        (shutil.copytree if source.is_dir() else shutil.copy)(source, work / item)
    command = ["--work", str(work), "--tiny", "--stop-after", "sketcher"]
    train2.main([*command, "--budget", "0"])
    kept = load_file(work / "sketcher_final" / "diffusion_pytorch_model.safetensors")
    for item in ("sketcher.pt", "clips.pt", "latents.pt"):
        (work / item).unlink()
    train2.main([*command, "--budget", "0"])
    assert "sketcher warm start from sketcher_final at step 0" in (work / "train.log").read_text()
    saved = torch.load(work / "sketcher.pt")
    for state in ("model", "ema", "best"):
        for name, tensor in kept.items():
            torch.testing.assert_close(saved[state][name], tensor, rtol=0, atol=0, msg=f"{state} {name}")
    train2.main([*command, "--patience", "99"])
    done = json.loads((work / "sketcher_final" / "done.json").read_text())
    assert done["reason"] == "steps" and done["step"] == 4 and torch.load(work / "sketcher.pt")["step"] == 4


def test_recipe_refuses_bad_settings(tmp_path):
    from srd_plugin.miniature import train2

    with pytest.raises(ValueError, match="--budget must be >= 0"):
        train2.Budget.parse("vae=-1")
    with pytest.raises(ValueError, match="unknown stages"):
        train2.Budget.parse("decoder=3")
    with pytest.raises(ValueError, match="minutes like 30"):
        train2.Budget.parse("vae=three")
    budget = train2.Budget.parse("20,vae=0")
    assert budget.timer("vae")() and not budget.timer("sketcher")()
    with pytest.raises(ValueError, match="unknown stage"):
        train2.train(tmp_path, train2.TINY, train2.Budget(), stop_after="decoder")
    (tmp_path / "recipe.json").write_text(json.dumps(dataclasses.asdict(train2.Recipe2())))
    with pytest.raises(ValueError, match="another recipe"):
        train2.train(tmp_path, train2.TINY, train2.Budget())


def test_reference_free_pattern_energy_tells_textured_from_smoothed():
    for index, prompt in enumerate(SAMPLE[::6]):
        clip = world2.make_clip(prompt, 3000 + index).astype(np.float64)
        energy = evaluate2.pattern_energy(clip)
        assert 0.7 < energy < 1.4, (prompt.text, energy)
        assert evaluate2.pattern_energy(evaluate2.gaussian_blur(clip, 1.5)) < 0.5 * energy
    _, plain = world2.render_layers(world2.sample_params(PAIR, 14))
    assert evaluate2.pattern_energy(plain) < 0.05


def test_gpu_script_tiny_mode_trains_checks_and_reports(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import second_world_gpu
    finally:
        sys.path.pop(0)
    assert second_world_gpu.main(["--out", str(tmp_path), "--tiny"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [row["method"] for row in report["rows"]] == [
        "sketcher only",
        "renderer only",
        "SRD switch at 1",
        "SRD+specialist switch at 1",
        "sketcher only, 2 steps",
    ]
    assert all(row["count"] == 2 and row["seconds"] > 0 for row in report["rows"])
    for row in report["rows"]:  # the reference-free fidelity of every row: a PSNR and a contrast
        assert 0 < row["fidelity_db"] <= 60 and row["fidelity_contrast"] >= 0, row
    assert report["vae_check"]["true"]["semantic"] == 100.0
    assert (tmp_path / "work" / "result" / "specialist" / "config.json").exists()


def test_vae_band_loss_sees_the_patterns_and_not_the_layout():
    import torch

    from srd_plugin.miniature.train2 import high_band

    textured, plain = world2.render_layers(world2.sample_params(PAIR, 15))
    as_model = [torch.from_numpy(c.astype(np.float64)).permute(3, 0, 1, 2)[None] * 2 - 1 for c in (textured, plain)]
    band, plain_band = (high_band(x) for x in as_model)
    reference = evaluate2.high_band(textured)  # the evaluator's band, same low-pass (truncated at 4 std there)
    inner = (slice(None), slice(8, -8), slice(8, -8))
    np.testing.assert_allclose(band[0].permute(1, 2, 3, 0).numpy()[inner] / 2, reference[inner], atol=2e-3)
    assert float((plain_band**2).mean()) < 0.5 * float((band**2).mean())  # outlines alone: most of it is pattern
    assert high_band(torch.full((1, 3, 5, 16, 16), 0.3)).abs().max() < 1e-6  # flat: nothing fine


# -- reference-free detail fidelity (fidelity2) ------------------------------------------------------
#: one and two objects, stripes and checks in the background, a white (clipped) and coloured objects
FIDELITY_CLIPS = [
    (PAIR, 1),
    ("a white triangle moving down", 2),
    ("a yellow square moving right and a white circle moving left", 3),
]


def _half_contrast(params: world2.ClipParams2) -> world2.ClipParams2:
    def half(pattern: world2.Pattern) -> world2.Pattern:
        return dataclasses.replace(pattern, amplitude=pattern.amplitude / 2)

    objects = tuple(dataclasses.replace(obj, pattern=half(obj.pattern)) for obj in params.objects)
    return dataclasses.replace(params, objects=objects, background_pattern=half(params.background_pattern))


@pytest.fixture(scope="module")
def fidelities():
    """Fidelity of each clip of FIDELITY_CLIPS: true, 1.5 px blurred, half contrast, pattern-free, noisy."""
    from srd_plugin.miniature.fidelity2 import score_fidelity

    scores = []
    for prompt, seed in FIDELITY_CLIPS:
        params = world2.sample_params(prompt, seed)
        textured, plain = world2.render_layers(params)
        variants = {
            "true": textured,
            "blurred": evaluate2.gaussian_blur(textured.astype(np.float64), 1.5),
            "half": world2.render(_half_contrast(params)),
            "plain": plain,
            "noisy": np.clip(plain + np.random.default_rng(seed).normal(0, 0.05, plain.shape), 0, 1),
        }
        scores.append((params, variants, {name: score_fidelity(clip, prompt) for name, clip in variants.items()}))
    return scores


def test_fidelity_of_true_clips_is_high_and_finds_the_background_pattern(fidelities):
    from srd_plugin.miniature.fidelity2 import score_fidelity

    sample = [(world2.sample_params(p, 4000 + i), p) for i, p in enumerate(SAMPLE[::4])]
    scores = [score["true"] for _, _, score in fidelities] + [score_fidelity(world2.render(c), p) for c, p in sample]
    for params, true in zip([params for params, _, _ in fidelities] + [c for c, _ in sample], scores):
        assert true.fidelity_db >= 40.0 and true.explained >= 0.9, true
        # the world clips colour + pattern to [0, 1]: a channel near 1 (white, yellow, blue's blue) loses its
        # crests, so such an object reads a lower contrast (white: 0.6-0.85); the background never clips
        assert abs(true.contrast - 1.0) <= 0.2 and true.regions[0].contrast == pytest.approx(1.0, abs=0.01)
        background, pattern = true.regions[0], params.background_pattern
        assert background.name == "background" and background.kind == pattern.kind
        symmetry = np.pi if pattern.kind == "stripes" else np.pi / 2  # checks turned by 90 degrees are the same
        turn = (background.angle - pattern.angle) % symmetry
        assert abs(background.period - pattern.period) < 0.2 and min(turn, symmetry - turn) < np.radians(3)


def test_fidelity_ranks_blur_and_half_contrast_between_the_truth_and_no_pattern(fidelities):
    from srd_plugin.miniature.fidelity2 import BACKGROUND_PATTERN_AMPLITUDE, OBJECT_PATTERN_AMPLITUDE

    def faintest(wave: float) -> float:  # band energy of a unit wave of that frequency (rad/px), plane-wave gain
        return 0.5 * (1 - np.exp(-0.5 * (evaluate2.LOWPASS_SIGMA * wave) ** 2)) ** 2

    # the world grating nearest to a blank region is the faintest one: checks (two half-amplitude
    # waves, sqrt(2) finer) or stripes of the longest period, whichever loses more to the filter
    longest = world2.PERIOD_RANGE[1]
    unit = min(faintest(2 * np.pi / longest), 2 * faintest(2 * np.pi * np.sqrt(2) / longest) / 4)
    for _, _, score in fidelities:
        true, blurred, half, plain = (score[name] for name in ("true", "blurred", "half", "plain"))
        regions = plain.regions
        amplitude = [
            BACKGROUND_PATTERN_AMPLITUDE if r.name == "background" else OBJECT_PATTERN_AMPLITUDE for r in regions
        ]
        mse = sum(a**2 * unit * r.pixels for a, r in zip(amplitude, regions)) / sum(r.pixels for r in regions)
        assert plain.fidelity_db == pytest.approx(-10 * np.log10(mse), abs=0.5)
        assert plain.contrast < 0.01 and plain.fidelity_db < true.fidelity_db - 10
        assert plain.fidelity_db + 2 < half.fidelity_db < true.fidelity_db - 10
        assert half.contrast == pytest.approx(0.5, abs=0.05)
        # a 1.5 px blur keeps under 1% (checks of period 4) to 40% (stripes of period 7) of a world grating's
        # contrast: the faint remnant of a fine one is as far from the family as no pattern, a coarse one's nearer
        assert plain.fidelity_db - 0.2 < blurred.fidelity_db < half.fidelity_db

    def finest(pattern: world2.Pattern) -> float:  # period of its finest wave, in px
        return pattern.period if pattern.kind == "stripes" else pattern.period / np.sqrt(2)

    coarse = [score for params, _, score in fidelities if finest(params.background_pattern) > 5]
    assert len(coarse) == 1  # the first clip's background (most of the pixels): the blur keeps 28% of its contrast
    assert coarse[0]["blurred"].fidelity_db > coarse[0]["plain"].fidelity_db + 1.0


def test_noise_is_not_detail_for_fidelity_but_is_for_pattern_energy(fidelities):
    for _, variants, score in fidelities:
        assert score["noisy"].fidelity_db < score["plain"].fidelity_db and score["noisy"].explained < 0.05
        assert evaluate2.pattern_energy(variants["noisy"]) > evaluate2.pattern_energy(variants["plain"]) + 0.5


def test_fidelity_is_to_the_family_not_to_the_seed():
    from srd_plugin.miniature.fidelity2 import score_fidelity

    params = world2.sample_params(PAIR, 1)
    red = params.objects[0]
    assert red.pattern.kind == "stripes" and abs(red.pattern.period - 6.5) > 1

    def red_fit(kind: str, period: float):
        other = world2.Pattern(kind, period=period, angle=0.3, phase=1.0, amplitude=red.pattern.amplitude)
        swapped = dataclasses.replace(params, objects=(dataclasses.replace(red, pattern=other), *params.objects[1:]))
        score = score_fidelity(world2.render(swapped), PAIR)
        return score, next(r for r in score.regions if r.name == "red")

    score, fit = red_fit("checks", 6.5)  # another sample of the family: as faithful as the seed's own pattern
    assert fit.explained >= 0.9 and fit.kind == "checks" and abs(fit.period - 6.5) < 0.2
    assert score.fidelity_db >= 40.0 and fit.mse < 1e-5
    for period in (2.5, 12.0):  # a clean grating, but finer or coarser than the world's: far from the family
        _, fit = red_fit("stripes", period)
        assert fit.mse > 1e-3 and fit.explained < 0.7, (period, fit)


def test_a_flickering_background_pattern_is_not_the_worlds(fidelities):
    from srd_plugin.miniature.fidelity2 import score_fidelity

    params, _, score = fidelities[0]
    frames = []
    for index in range(world2.NUM_FRAMES):  # the background's grating shifts phase every frame
        moved = dataclasses.replace(params.background_pattern, phase=params.background_pattern.phase + index)
        frames.append(world2.render(dataclasses.replace(params, background_pattern=moved))[index])
    flicker = score_fidelity(np.stack(frames), PAIR)
    assert flicker.regions[0].explained < 0.1 and flicker.fidelity_db < score["plain"].fidelity_db


def test_fidelity_refuses_a_wrong_layout_and_summarises():
    from srd_plugin.miniature.fidelity2 import score_fidelity

    clip = world2.make_clip(PAIR, 0)
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        score_fidelity(clip[..., 0], PAIR)
    _, plain = world2.render_layers(world2.sample_params(PAIR, 0))
    fidelities = [score_fidelity(x, PAIR) for x in (clip, plain)]
    summary = evaluate2.summarise([evaluate2.score_semantics(x, PAIR) for x in (clip, plain)], fidelities=fidelities)
    assert summary.fidelity_db == pytest.approx(np.mean([f.fidelity_db for f in fidelities]))
    assert summary.fidelity_contrast == pytest.approx(np.mean([f.contrast for f in fidelities]))
    assert summary.fidelity_explained == pytest.approx(np.mean([f.explained for f in fidelities]))
    assert summary.semantic == 100.0 and summary.high_psnr is None
    assert evaluate2.summarise([evaluate2.score_semantics(clip, PAIR)]).fidelity_db is None  # callers without it


def test_vae_crops_grow_from_short_to_the_whole_clip():
    import torch

    from srd_plugin.miniature.train2 import Recipe2, _crops

    recipe = Recipe2(vae_batch=2, vae_steps=10, vae_short_steps=4, vae_full_length_steps=3)
    bank = {
        "frames": torch.zeros(3, 17, 64, 64, 3, dtype=torch.uint8),
        "masks": torch.zeros(3, 17, 64, 64, dtype=torch.uint8),
    }
    lengths = [_crops(recipe, bank, torch.Generator().manual_seed(step), step)[0].shape[2] for step in range(10)]
    assert lengths == [5] * 4 + [9] * 3 + [17] * 3
    x, masks = _crops(recipe, bank, torch.Generator().manual_seed(0), 9)
    assert x.shape == (2, 3, 17, 16, 16) and masks.shape == (2, 17, 16, 16)


def test_transformers_reach_every_latent_direction_and_narrow_ones_are_refused():
    """The width rule of `models2`: the last layer must span the whole token, or sampling keeps noise."""
    import torch

    from srd_plugin.miniature import models2
    from srd_plugin.miniature.train2 import SIZES, TINY_SIZES
    from srd_plugin.testing import WanSize

    for size in [*SIZES.values(), *TINY_SIZES.values()]:
        model = models2.build_transformer(size)
        assert torch.linalg.matrix_rank(model.proj_out.weight.detach()) == models2.token_dimension()
    with pytest.raises(ValueError, match=r"width .* at least 128 .* got 64"):
        models2.build_transformer(WanSize(num_layers=1, num_attention_heads=2, attention_head_dim=32, ffn_dim=32))


def test_recipe_file_is_written_whole_by_processes_side_by_side(tmp_path):
    """Two `--only` processes start together; neither may read the other's half-written recipe.json."""
    import multiprocessing

    from srd_plugin.miniature.train2 import _write_atomically

    path = tmp_path / "recipe.json"
    text = json.dumps({"key": "x" * 200_000})
    context = multiprocessing.get_context("fork")
    reads = []
    for _ in range(5):  # plain write_text tore a read in 3 of 5 such rounds on this machine
        writers = [context.Process(target=_write_atomically, args=(path, text)) for _ in range(4)]
        for writer in writers:
            writer.start()
        while any(writer.is_alive() for writer in writers):
            if path.exists():
                reads.append(path.read_text())
        for writer in writers:
            writer.join()
    assert reads and all(read == text for read in reads)
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.json"]


def test_the_kept_copy_of_the_second_world_restores_with_the_default_recipe():
    """`checkpoints/second_world` is what a later session copies to a work folder and trains on (docs/miniature.md):
    the default recipe must accept it, reuse its VAE and fold as they are, and warm-start its transformers."""
    from dataclasses import asdict
    from pathlib import Path

    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from srd_plugin.miniature import models2, train2

    kept = Path(__file__).resolve().parents[1] / "checkpoints" / "second_world"
    recipe = json.loads((kept / "recipe.json").read_text())
    assert train2._fixed_part(recipe) == train2._fixed_part(asdict(train2.Recipe2()))
    vae_done = json.loads((kept / "vae_final" / "done.json").read_text())
    assert vae_done["reason"] == "steps" and vae_done["step"] >= train2.Recipe2().vae_steps
    assert json.loads((kept / "vae_folded" / "done.json").read_text())["step"] == vae_done["step"]
    assert AutoencoderKLWan.from_pretrained(kept / "vae_folded").config.z_dim == models2.LATENT_CHANNELS
    roles = [role for role in train2.FLOW_STAGES if (kept / f"{role}_final").is_dir()]
    assert roles, "the kept copy holds no transformer"
    for role in roles:
        done = json.loads((kept / f"{role}_final" / "done.json").read_text())
        assert done["reason"] in ("budget", "plateau", "steps") and done["history"]
        config = WanTransformer3DModel.from_pretrained(kept / f"{role}_final").config
        size = train2.SIZES[role]
        assert (config.num_layers, config.num_attention_heads, config.attention_head_dim, config.ffn_dim) == (
            size.num_layers,
            size.num_attention_heads,
            size.attention_head_dim,
            size.ffn_dim,
        )
    files = [path for path in kept.rglob("*") if path.is_file()]
    assert not [path.name for path in files if path.suffix == ".pt"], "checkpoints and the clip bank are not kept"
    assert sum(path.stat().st_size for path in files) < 30 * 2**20
