"""Whom SRD's state belongs to: the components it intercepts (docs/architecture.md, "State").

Deep copies and pickles of enabled components are plain, independent components; pipelines built
from the same components share one setup; `is_enabled`, `last_trace` and `disable` are true for
every pipeline sharing them.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from diffusers import WanPipeline

import srd_plugin as srd
from srd_plugin.testing import tiny_call_kwargs, tiny_wan_pipeline, tiny_wan_renderer

STEPS = 6


def generate(pipe, steps=STEPS):
    return pipe(**tiny_call_kwargs(num_inference_steps=steps)).frames


def plain_attributes(obj):
    return {k for k in vars(obj) if k.startswith("_srd") or k in ("__deepcopy__", "__reduce_ex__")}


@pytest.fixture
def pipe():
    p = tiny_wan_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture
def renderer():
    return tiny_wan_renderer()


# -- copies and pickles --------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_of_an_enabled_scheduler_is_plain_and_independent(pipe, renderer, how):
    """Seen before the fix: the copy's set_timesteps / step drove the original scheduler, and a second,
    never-enabled pipeline given the copy ran stale steps without any error."""
    before = copy.deepcopy(pipe.scheduler)
    reference = WanPipeline(**{**pipe.components, "transformer": copy.deepcopy(pipe.transformer), "scheduler": before})
    reference.set_progress_bar_config(disable=True)
    expected = generate(reference)
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    copied = copy.deepcopy(pipe.scheduler) if how == "deepcopy" else pickle.loads(pickle.dumps(pipe.scheduler))
    assert "step" not in vars(copied) and "set_timesteps" not in vars(copied) and not plain_attributes(copied)
    second = WanPipeline(**{**pipe.components, "transformer": reference.transformer, "scheduler": copied})
    second.set_progress_bar_config(disable=True)
    assert torch.equal(generate(second), expected)
    assert srd.last_trace(pipe) is None  # the copy never reached the original's session
    generate(pipe)
    assert srd.last_trace(pipe).roles == ["sketch"] * 2 + ["render"] * (STEPS - 2)


def test_a_copy_of_an_enabled_transformer_is_a_plain_model(pipe, renderer):
    plain_copy = copy.deepcopy(pipe.transformer)
    srd.enable(pipe, renderer, switch="step", switch_step=0)  # every call would render
    copied = copy.deepcopy(pipe.transformer)
    for name in ("forward", "_diffusers_hook", "__deepcopy__", "__reduce_ex__", "_srd_attached"):
        assert name not in vars(copied), name
    assert all(torch.equal(a, b) for a, b in zip(copied.parameters(), plain_copy.parameters()))
    unpickled = pickle.loads(pickle.dumps(pipe.transformer))
    assert "forward" not in vars(unpickled) and "_diffusers_hook" not in vars(unpickled)
    inputs = dict(
        hidden_states=torch.randn(1, 4, 3, 4, 4),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 16, 32),
        return_dict=False,
    )
    assert torch.equal(copied(**inputs)[0], plain_copy(**inputs)[0])
    assert torch.equal(unpickled(**inputs)[0], plain_copy(**inputs)[0])
    assert srd.last_trace(pipe) is None  # no route into the original's run


def test_a_deep_copy_of_an_enabled_pipeline_is_plain(pipe, renderer):
    expected = generate(pipe)
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    twin = copy.deepcopy(pipe)
    assert not srd.is_enabled(twin) and "progress_bar" not in vars(twin)
    assert torch.equal(generate(twin), expected)
    assert srd.is_enabled(pipe) and not torch.equal(generate(pipe), expected)


def test_disable_leaves_no_copy_machinery_behind(pipe, renderer):
    srd.enable(pipe, renderer)
    srd.disable(pipe)
    for obj in (pipe, pipe.scheduler, pipe.transformer):
        assert not plain_attributes(obj)
    assert "step" not in vars(pipe.scheduler) and "progress_bar" not in vars(pipe)


# -- pipelines sharing components ----------------------------------------------------------------
@pytest.mark.parametrize("build", ["components", "from_pipe"])
def test_pipelines_sharing_components_share_one_setup(pipe, renderer, build):
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    expected = generate(pipe)
    twin = WanPipeline(**pipe.components) if build == "components" else WanPipeline.from_pipe(pipe)
    twin.set_progress_bar_config(disable=True)
    assert srd.is_enabled(twin)  # its calls go through the shared sketcher and scheduler already
    srd.enable(twin, renderer, switch="step", switch_step=2)  # joins: same renderer, same settings
    assert torch.equal(generate(twin), expected)
    assert srd.last_trace(twin) is srd.last_trace(pipe)
    assert srd.last_trace(pipe).pipeline == type(twin).__name__
    with pytest.warns(UserWarning, match="shares with 1 other pipeline"):
        srd.disable(twin)
    assert not srd.is_enabled(pipe) and not srd.is_enabled(twin)
    assert "forward" not in vars(pipe.transformer) and "step" not in vars(pipe.scheduler)


def test_another_renderer_on_shared_components_replaces_the_setup_for_all(pipe, renderer):
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    twin = WanPipeline(**pipe.components)
    twin.set_progress_bar_config(disable=True)
    other = tiny_wan_renderer(seed=5)
    with pytest.warns(UserWarning, match="replaces the SRD setup of the components .* 1 other pipeline"):
        srd.enable(twin, other, switch="step", switch_step=3)
    for p in (pipe, twin):
        generate(p)
        assert srd.last_trace(p).switch_step == 3
    srd.disable(pipe)


def test_encode_prompt_works_in_isolation_with_srd_on(pipe, renderer):
    """diffusers' own test: a third pipeline built from the first's components encodes prompts alone."""
    srd.enable(pipe, renderer, switch="step", switch_step=1)
    components = {k: v for k, v in pipe.components.items() if k in ("text_encoder", "tokenizer")}
    isolated = WanPipeline(**{name: components.get(name) for name in pipe.components})
    embeds = isolated.encode_prompt("a red circle", negative_prompt="blurry", device="cpu", max_sequence_length=16)
    reference = pipe.encode_prompt("a red circle", negative_prompt="blurry", device="cpu", max_sequence_length=16)
    assert all(torch.equal(a, b) for a, b in zip(embeds, reference))
    srd.disable(pipe)


def test_a_pipeline_with_its_own_scheduler_on_a_shared_sketcher_joins_with_it(pipe, renderer):
    srd.enable(pipe, renderer, switch="step", switch_step=2)
    own = WanPipeline(**{**pipe.components, "scheduler": type(pipe.scheduler).from_config(pipe.scheduler.config)})
    own.set_progress_bar_config(disable=True)
    assert not srd.is_enabled(own)  # its scheduler starts no SRD run: it runs plain
    plain = generate(own)
    assert srd.last_trace(pipe) is None
    srd.enable(own, renderer, switch="step", switch_step=2)
    assert srd.is_enabled(own) and torch.equal(generate(own), generate(pipe))
    assert not torch.equal(generate(own), plain)
    srd.disable(own)


def test_a_pipeline_routing_more_modules_on_shared_components_takes_the_setup_over_without_a_warning(pipe, renderer):
    """A Wan2.2 pipeline built on a Wan2.1 pipeline's components also routes its `transformer_2`: the same
    renderer and settings cannot simply join, so the setup is rebuilt for both (same renderer: no warning)."""
    import warnings

    from srd_plugin.runtime import session_of
    from srd_plugin.testing import tiny_wan_transformer

    srd.enable(pipe, renderer, switch="step", switch_step=2)
    experts = WanPipeline(**{**pipe.components, "transformer_2": tiny_wan_transformer(seed=9)}, boundary_ratio=0.5)
    experts.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        srd.enable(experts, renderer, switch="step", switch_step=2)
    session = session_of(experts)
    assert session is session_of(pipe) and session.routed == (pipe.transformer, experts.transformer_2)
    generate(experts)
    assert srd.last_trace(pipe).roles == ["sketch"] * 2 + ["render"] * (STEPS - 2)
    srd.disable(pipe)
    assert "forward" not in vars(experts.transformer_2) and not srd.is_enabled(experts)
