"""cache-dit's `enable_cache(pipe)` and SRD: enabled before SRD it works; the wrong orders are refused.

cache-dit patches the pipeline CLASS's `__call__` (and restores it on `disable_cache`); the
fixture puts it back whatever happens, so no other test sees it.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import WanPipeline

import srd_plugin as srd
from srd_plugin.hooks.caches import CacheOrderError
from srd_plugin.testing import tiny_call_kwargs

cache_dit = pytest.importorskip("cache_dit", reason="cache-dit is in the test extra: pip install -e '.[test]'")

STEPS = 8


@pytest.fixture
def cached(pipe):
    """A function that turns cache-dit on for `pipe` with settings a 4-block model accepts."""
    class_call = WanPipeline.__dict__["__call__"]

    def enable():
        config = cache_dit.DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=2, residual_diff_threshold=0.5
        )
        cache_dit.enable_cache(pipe, cache_config=config)

    yield enable
    srd.disable(pipe)
    if getattr(pipe.transformer, "_is_cached", False):
        cache_dit.disable_cache(pipe)
    WanPipeline.__call__ = class_call  # restore the class even if a test failed half-way


def generate(pipe):
    return pipe(**tiny_call_kwargs(STEPS)).frames


def test_cache_dit_enabled_before_srd_works(pipe, renderer, cached):
    plain = generate(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    plain_srd = generate(pipe)
    srd.disable(pipe)
    cached()
    cache_dit_alone = generate(pipe)
    assert not torch.equal(cache_dit_alone, plain)  # cache-dit does skip on this model
    srd.enable(pipe, renderer, switch="step", switch_step=STEPS)
    assert torch.equal(generate(pipe), cache_dit_alone)  # sketch-only SRD + cache-dit == cache-dit
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    mixed = generate(pipe)
    assert torch.equal(generate(pipe), mixed) and not torch.equal(mixed, plain_srd)
    srd.disable(pipe)
    assert torch.equal(generate(pipe), cache_dit_alone)
    cache_dit.disable_cache(pipe)
    assert torch.equal(generate(pipe), plain)


def test_cache_dit_enabled_after_srd_is_refused_with_a_way_back(pipe, renderer, cached):
    plain = generate(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    cached()
    with pytest.raises(CacheOrderError, match="after srd.enable"):
        generate(pipe)
    srd.disable(pipe)  # the recovery the message gives
    pipe.transformer._original_forward = pipe.transformer.forward
    cache_dit.disable_cache(pipe)
    assert torch.equal(generate(pipe), plain)


def test_cache_dit_disabled_under_srd_is_refused_with_a_way_back(pipe, renderer, cached):
    plain = generate(pipe)
    cached()
    srd.enable(pipe, renderer, switch="step", switch_step=3)
    cache_dit.disable_cache(pipe)
    with pytest.raises(CacheOrderError, match="dropped SRD's router"):
        generate(pipe)
    srd.disable(pipe)  # the recovery the message gives
    del pipe.transformer.forward
    assert torch.equal(generate(pipe), plain)
