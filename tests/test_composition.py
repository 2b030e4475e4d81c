"""diffusers' own caches, set by the user on either model, keep working under SRD and start fresh every call.

Oracles: SRD that only renders (switch_step=0) or only sketches (switch_step=N) must give
exactly what a plain WanPipeline with that model and that cache gives.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

import srd_plugin as srd
from srd_plugin.testing import tiny_call_kwargs, tiny_wan_pipeline

STEPS = 10


class Stop(Exception):
    pass


def generate(pipe, stop_at=None):
    def callback(_pipe, step, _t, kwargs):
        if step == stop_at:
            raise Stop
        return kwargs

    return pipe(**tiny_call_kwargs(STEPS), callback_on_step_end=callback).frames


def interrupted(pipe, stop_at):
    with pytest.raises(Stop):
        generate(pipe, stop_at=stop_at)


def count_block_runs(model):
    counter = {"runs": 0}
    for block in model.blocks:
        block.attn1.register_forward_pre_hook(lambda *_: counter.__setitem__("runs", counter["runs"] + 1))
    return counter


def plain_pipeline(transformer):
    """The same tiny components as the `pipe` fixture (seeded), around `transformer`."""
    pipeline = tiny_wan_pipeline(transformer=transformer)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def mag_cache():
    return MagCacheConfig(
        threshold=0.5, max_skip_steps=2, retention_ratio=0.2, num_inference_steps=STEPS, mag_ratios=[1.0] * STEPS
    )


def test_first_block_cache_on_the_renderer_equals_the_renderer_alone(pipe, renderer):
    renderer.enable_cache(FirstBlockCacheConfig(threshold=0.3))
    runs = count_block_runs(renderer)
    expected = generate(plain_pipeline(renderer))
    assert runs["runs"] < 2 * STEPS * len(renderer.blocks)  # the cache did skip blocks
    srd.enable(pipe, renderer, switch="step", switch_step=0)
    assert torch.equal(generate(pipe), expected)
    assert torch.equal(generate(pipe), expected)


def test_mag_cache_on_the_sketcher_equals_the_sketcher_alone(pipe, renderer):
    reference = plain_pipeline(pipe.transformer)
    pipe.transformer.enable_cache(mag_cache())
    expected = generate(reference)
    srd.enable(pipe, renderer, switch="step", switch_step=STEPS)
    assert torch.equal(generate(pipe), expected)
    assert torch.equal(generate(pipe), expected)


def test_a_call_after_an_interrupted_one_starts_fresh(pipe, renderer):
    """MagCache counts steps; diffusers resets it only at the end of a call that completes.

    Without SRD the stale count spoils the next call (shown on the plain pipeline); under SRD
    both models are reset at the start of every call, so the next call is exact.
    """
    renderer.enable_cache(mag_cache())
    alone = plain_pipeline(renderer)
    expected = generate(alone)
    interrupted(alone, stop_at=4)
    assert not torch.equal(generate(alone), expected)  # the hazard is real
    srd.enable(pipe, renderer, switch="step", switch_step=0)
    interrupted(pipe, stop_at=4)
    assert torch.equal(generate(pipe), expected)


def test_taylorseer_on_both_models_across_the_switch(pipe, renderer):
    def taylorseer():
        return TaylorSeerCacheConfig(
            cache_interval=2,
            disable_cache_before_step=2,
            cache_identifiers=[r"blocks\.\d+"],  # the defaults match no Wan module
            taylor_factors_dtype=torch.float32,
        )

    srd.enable(pipe, renderer, switch="step", switch_step=4)
    uncached = generate(pipe)
    pipe.transformer.enable_cache(taylorseer())
    renderer.enable_cache(taylorseer())
    sketch_runs, render_runs = count_block_runs(pipe.transformer), count_block_runs(renderer)
    first = generate(pipe)
    assert sketch_runs["runs"] < 2 * 4 * len(pipe.transformer.blocks)  # both caches skipped blocks
    assert render_runs["runs"] < 2 * (STEPS - 4) * len(renderer.blocks)
    assert not torch.equal(first, uncached) and torch.isfinite(first).all()
    interrupted(pipe, stop_at=6)
    assert torch.equal(generate(pipe), first)
    srd.disable(pipe)
    renderer.disable_cache()
    expected_sketch_only = generate(plain_pipeline(pipe.transformer))  # TaylorSeer still on the sketcher
    srd.enable(pipe, renderer, switch="step", switch_step=STEPS)
    assert torch.equal(generate(pipe), expected_sketch_only)
