"""`target_speedup`: the latest switch step that reaches the target, from step times or the FLOP model.

Oracles: S(k) = N r / (k r + N - k) written out by hand against the H200 figures in BENCHMARKS.md
(r = 6.53 / 1.235: S(10) = 2.85x; halving the renderer step: 3.63x, FACTS.md); the FLOP models
against the independent count in FACTS.md (Wan 14B / 1.3B 5.9, CogVideoX 5B / 2B 2.75); the
policy's decisions on number sequences; an end-to-end tiny Wan run whose bound is recomputed here
from the adapters' FLOP models and the call's shapes.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch

import srd_plugin as srd
from srd_plugin import SRDConfig
from srd_plugin.adapters import cosmos as cosmos_adapter
from srd_plugin.adapters import kandinsky5 as kandinsky5_adapter
from srd_plugin.adapters import ltx as ltx_adapter
from srd_plugin.adapters import skyreels as skyreels_adapter
from srd_plugin.adapters.base import Adapter
from srd_plugin.adapters.cogvideox import cogvideox_macs
from srd_plugin.adapters.wan import WanAdapter, wan_macs
from srd_plugin.guidance import bind_call
from srd_plugin.speed import FLOPS, MEASURED, SpeedTarget, latest_switch_step, predicted_speedup
from srd_plugin.switching import AdaptivePolicy
from srd_plugin.testing import tiny_call_kwargs
from srd_plugin.trace import RunTrace

H200_WAN = (6.53, 1.235)  # s per CFG step, BENCHMARKS.md


def test_predicted_speedup_matches_the_h200_projection():
    r = H200_WAN[0] / H200_WAN[1]
    assert predicted_speedup(50, 10, r) == pytest.approx(50 * 6.53 / (10 * 6.53 + 40 * 1.235))
    assert round(predicted_speedup(50, 10, r), 2) == 2.85
    assert round(predicted_speedup(50, 10, 2 * r), 2) == 3.63  # renderer without guidance: half its step
    assert predicted_speedup(50, 0, r) == pytest.approx(r) and predicted_speedup(50, 50, r) == 1.0


@pytest.mark.parametrize(
    "ratio, target, expected",
    [
        (6.53 / 1.235, 2.8, 10),  # S(10) = 2.847 >= 2.8 > S(11) = 2.72
        (6.53 / 1.235, 3.0, 8),  # the paper's "> 3x" needs a switch at 8 or earlier
        (2 * 6.53 / 1.235, 3.5, 10),  # guidance-free rendering: S(10) = 3.63, S(11) = 3.40
        (6.53 / 1.235, 1.0, 50),  # no speed-up asked: any switch
        (6.53 / 1.235, 6.0, None),  # beyond the renderer alone (5.29x): unreachable
    ],
)
def test_latest_switch_step(ratio, target, expected):
    k = latest_switch_step(50, ratio, target)
    assert k == expected
    if k is not None and k < 50:
        assert predicted_speedup(50, k, ratio) >= target > predicted_speedup(50, k + 1, ratio)


def test_flop_models_agree_with_the_independent_count():
    common = dict(patch_size=(1, 2, 2), attention_head_dim=128)
    big = SimpleNamespace(num_layers=40, num_attention_heads=40, ffn_dim=13824, **common)
    small = SimpleNamespace(num_layers=30, num_attention_heads=12, ffn_dim=8960, **common)
    latent, text = (1, 16, 21, 60, 104), 512  # 832x480, 81 frames: 32,760 video tokens
    assert wan_macs(big, latent, text) / 1e15 == pytest.approx(0.84, abs=0.01)
    assert wan_macs(big, latent, text) / wan_macs(small, latent, text) == pytest.approx(5.9, abs=0.05)
    cog = dict(patch_size=2, patch_size_t=None, attention_head_dim=64)
    five_b = SimpleNamespace(num_layers=42, num_attention_heads=48, **cog)
    two_b = SimpleNamespace(num_layers=30, num_attention_heads=30, **cog)
    latent = (2, 13, 16, 60, 90)  # 720x480, 49 frames, CFG batch
    assert cogvideox_macs(five_b, latent, 226) / cogvideox_macs(two_b, latent, 226) == pytest.approx(2.75, abs=0.05)


def _policy(latest, min_sketch_steps=3, max_sketch_steps=None, steps=20):
    config = SRDConfig(threshold=0.01, min_sketch_steps=min_sketch_steps, max_sketch_steps=max_sketch_steps)
    policy = AdaptivePolicy(config)
    policy.start(list(range(steps, 0, -1)), 1000)
    policy.latest_switch = latest
    return policy


def _first_switch(policy, distances):
    for i, d in enumerate(distances):
        if policy.update(i, d).switch:
            return i + 1
    return None


UNSETTLED = [None] + [0.5] * 19  # s_i = 0: never below the threshold while positive


@pytest.mark.parametrize(
    "latest, distances, expected",
    [
        (7, UNSETTLED, 7),  # the target's bound switches
        (1, UNSETTLED, 3),  # below min_sketch_steps: min_sketch_steps
        (None, UNSETTLED, 12),  # no target: ceil(0.6 * 20)
        (15, UNSETTLED, 12),  # a bound beyond max_sketch_steps changes nothing
        (9, [None, 0.5, 0.4, 0.35, 0.345] + [0.3] * 15, 5),  # the metric settles first (s_4 = 0.005)
    ],
)
def test_adaptive_policy_switches_no_later_than_the_target_allows(latest, distances, expected):
    assert _first_switch(_policy(latest), distances) == expected


def _trace(sketch_seconds):
    return RunTrace(num_steps=50, roles=["sketch"] * len(sketch_seconds), step_seconds=list(sketch_seconds))


def test_the_bound_comes_from_flops_before_the_renderer_is_measured_then_from_step_times():
    target = SpeedTarget(3.0, 50, measured={})
    target.flops = {"sketch": 5.9, "render": 1.0}
    target.shapes = [("cond", ())]
    assert target.update(_trace([9.0])) == latest_switch_step(50, 5.9, 3.0) and target.basis == FLOPS
    # the first sketch step carries the set-up: with only that one, the earlier call's sketcher figure is used
    target.measured[target.key] = (6.53, 1.235)
    assert target.update(_trace([9.0])) == 8 and target.basis == MEASURED
    assert target.update(_trace([9.0, 6.53, 6.53])) == 8
    assert target.update(_trace([9.0, 2 * 6.53, 2 * 6.53])) == latest_switch_step(50, 2 * 6.53 / 1.235, 3.0)


def _sketcher_calls(pipe):
    """The (latent shape, text tokens) of each sketcher call of a one-step plain run."""
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(
            (tuple(kwargs["hidden_states"].shape), kwargs["encoder_hidden_states"].shape[1])
        ),
        with_kwargs=True,
    )
    pipe(**tiny_call_kwargs(1))
    handle.remove()
    return seen


@pytest.mark.parametrize("render_guidance", ["host", "off"])
def test_first_call_switches_at_the_flop_bound(pipe, renderer, render_guidance):
    calls = _sketcher_calls(pipe)
    assert len(calls) == 2  # CFG: cond and uncond
    sketch = sum(wan_macs(pipe.transformer.config, shape, text) for shape, text in calls)
    rendered = calls if render_guidance == "host" else calls[:1]
    render = sum(wan_macs(renderer.config, shape, text) for shape, text in rendered)
    steps, target = 20, 2.5
    expected = latest_switch_step(steps, sketch / render, target)
    assert 3 <= expected < 12  # between min_sketch_steps and max_sketch_steps: the target decides
    srd.enable(
        pipe, renderer, threshold=1e-9, min_sketch_steps=3, target_speedup=target, render_guidance=render_guidance
    )
    pipe(**tiny_call_kwargs(steps))
    trace = srd.last_trace(pipe)
    assert trace.switch_step == expected == trace.target_switch_step
    assert trace.speed_basis == FLOPS
    assert trace.predicted_speedup == pytest.approx(predicted_speedup(steps, expected, sketch / render))
    assert trace.achieved_speedup is not None and trace.achieved_speedup > 0  # a figure, not a timing check
    assert "latest switch for target_speedup 2.5x" in trace.summary() and "predicted" in trace.summary()
    with warnings.catch_warnings():  # tiny models are overhead-bound: their measured ratio may miss the target
        warnings.simplefilter("ignore")
        pipe(**tiny_call_kwargs(steps))  # the second call uses the step times the first one measured
    assert srd.last_trace(pipe).speed_basis == MEASURED


def test_an_unreachable_target_warns_with_the_best_figure_and_switches_at_the_fastest_allowed(pipe, renderer):
    srd.enable(pipe, renderer, threshold=1e-9, min_sketch_steps=4, target_speedup=1000.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe(**tiny_call_kwargs(20))
    trace = srd.last_trace(pipe)
    assert trace.switch_step == 4
    messages = [str(w.message) for w in caught if "target_speedup" in str(w.message)]
    assert len(messages) == 1
    assert "cannot be reached" in messages[0] and f"{trace.predicted_speedup:.2f}x" in messages[0]
    assert trace.predicted_speedup < 1000 and any("cannot be reached" in e for e in trace.events)


@pytest.mark.parametrize(
    "fields",
    [
        dict(switch="step", switch_step=3),
        dict(switch="ratio", switch_ratio=0.2),
        dict(switch="boundary", boundary_ratio=0.9),
    ],
)
def test_fixed_policies_refuse_a_target(fields):
    with pytest.raises(ValueError, match="target_speedup.*switch='adaptive'"):
        SRDConfig(target_speedup=3.0, **fields)


@pytest.mark.parametrize("value", [0.5, math.nan, math.inf, "3", True])
def test_target_values_are_validated(value):
    with pytest.raises(ValueError, match="target_speedup"):
        SRDConfig(target_speedup=value)


def test_an_adapter_without_a_flop_model_is_refused(pipe, renderer, monkeypatch):
    monkeypatch.setattr(WanAdapter, "flops_per_call", Adapter.flops_per_call)
    with pytest.raises(ValueError, match="flops_per_call"):
        srd.enable(pipe, renderer, target_speedup=2.0)
    assert not srd.is_enabled(pipe)


def test_settings_read_the_new_fields(tmp_path):
    config = SRDConfig.from_env({"SRD_RENDER_GUIDANCE": "off", "SRD_TARGET_SPEEDUP": "3"})
    assert config.render_guidance == "off" and config.target_speedup == 3.0
    path = tmp_path / "srd.toml"
    path.write_text('[srd]\nrender_guidance = "off"\ntarget_speedup = 2.5\n')
    assert SRDConfig.from_file(path).target_speedup == 2.5
    with pytest.raises(ValueError, match="SRD_TARGET_SPEEDUP"):
        SRDConfig.from_env({"SRD_TARGET_SPEEDUP": "0.5"})


def test_trace_fields_survive_json():
    trace = RunTrace(num_steps=4, target_speedup=3.0, predicted_speedup=3.1, achieved_speedup=2.9, speed_basis=FLOPS)
    assert RunTrace.from_json(trace.to_json()) == trace


def test_batched_host_counts_the_conditional_half_for_guidance_free_rendering():
    """CogVideoX: the sketch step is one call on the doubled batch, the guidance-free render step one on half of it."""
    from srd_plugin.testing import (
        tiny_cogvideox_call_kwargs,
        tiny_cogvideox_pipeline,
        tiny_cogvideox_renderer,
    )

    pipe, renderer = tiny_cogvideox_pipeline(), tiny_cogvideox_renderer()
    shapes = []
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(
            (tuple(kwargs["hidden_states"].shape), kwargs["encoder_hidden_states"].shape[1])
        ),
        with_kwargs=True,
    )
    steps = 8
    srd.enable(pipe, renderer, threshold=1e-9, min_sketch_steps=2, target_speedup=1.5, render_guidance="off")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe(**tiny_cogvideox_call_kwargs(steps))
    trace = srd.last_trace(pipe)
    (latent, text), half = shapes[0], (1, *shapes[0][0][1:])
    assert latent[0] == 2
    ratio = cogvideox_macs(pipe.transformer.config, latent, text) / cogvideox_macs(renderer.config, half, text)
    assert trace.speed_basis == FLOPS and trace.target_switch_step == latest_switch_step(steps, ratio, 1.5)
    assert trace.predicted_speedup == pytest.approx(predicted_speedup(steps, trace.switch_step, ratio))
    assert trace.guidance_calls_saved == steps - trace.switch_step


# -- the FLOP basis on the other families ---------------------------------------------------------------
FAMILY_ADAPTERS = {
    "ltx": ltx_adapter.ADAPTER,
    "cosmos": cosmos_adapter.ADAPTER,
    "kandinsky5": kandinsky5_adapter.ADAPTER,
    "skyreels": skyreels_adapter.ADAPTER,
}


def _new_family(name):
    """(a fresh tiny pipeline, its renderer, call kwargs for `steps`) of one pipeline per family."""
    from srd_plugin.testing import RENDERER_SIZE, cosmos, kandinsky5, ltx, wan_family

    if name == "ltx":
        return ltx.tiny_ltx_pipeline("t2v"), ltx.tiny_ltx_renderer(), lambda n: ltx.tiny_ltx_call_kwargs("t2v", n)
    if name == "cosmos":
        return (
            cosmos.tiny_cosmos_pipeline("t2i"),
            cosmos.tiny_cosmos_renderer(),
            lambda n: cosmos.tiny_cosmos_call_kwargs("t2i", n),
        )
    if name == "kandinsky5":
        return (
            kandinsky5.tiny_kandinsky5_pipeline("t2v"),
            kandinsky5.tiny_kandinsky5_renderer(),
            lambda n: kandinsky5.tiny_kandinsky5_call_kwargs("t2v", n),
        )
    return (
        wan_family.tiny_skyreels_pipeline(),
        wan_family.tiny_skyreels_transformer(RENDERER_SIZE, seed=1),
        lambda n: tiny_call_kwargs(n),
    )


def _halved(arguments):
    """A batched CFG call's arguments at one half (only the shapes matter for FLOPs)."""
    batch = arguments["hidden_states"].shape[0]
    return {
        k: v[: batch // 2] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch else v
        for k, v in arguments.items()
    }


@pytest.mark.parametrize("render_guidance", ["host", "off"])
@pytest.mark.parametrize("family", ["ltx", "cosmos", "kandinsky5", "skyreels"])
def test_the_target_bound_comes_from_each_familys_flop_model(family, render_guidance):
    """The first call's bound: the adapter's FLOPs summed over the host's calls of one step, the renderer
    counted on what it would run (guidance-free: the conditional call, or the conditional half)."""
    pipe, renderer, call = _new_family(family)
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(bind_call(module, args, kwargs)), with_kwargs=True
    )
    pipe(**call(2))  # two steps (a one-step LTX schedule is degenerate); the first step's calls count
    handle.remove()
    adapter = FAMILY_ADAPTERS[family]
    per_step = 1 if adapter.cfg_layout.calls == "batched" else 2
    assert len(calls) == 2 * per_step
    calls = calls[:per_step]
    sketch = sum(adapter.flops_per_call(pipe.transformer, a) for a in calls)
    if render_guidance == "host":
        rendered = calls
    elif adapter.cfg_layout.calls == "batched":
        rendered = [_halved(a) for a in calls]
    else:
        rendered = calls[:1]
    render = sum(adapter.flops_per_call(renderer, a) for a in rendered)
    ratio, steps = sketch / render, 12
    assert ratio > 1
    target = predicted_speedup(steps, 4, ratio)  # the bound falls at k = 4 exactly
    srd.enable(
        pipe, renderer, threshold=1e-9, min_sketch_steps=2, target_speedup=target, render_guidance=render_guidance
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe(**call(steps))
    trace = srd.last_trace(pipe)
    assert trace.speed_basis == FLOPS
    assert trace.target_switch_step == latest_switch_step(steps, ratio, target) == 4 == trace.switch_step
    assert trace.predicted_speedup == pytest.approx(target)


def _block(n, m, d, f):
    """One DiT block by hand: q, k, v, out on n tokens; n x n attention; cross-attention (q, out on n,
    k, v on m text tokens, n x m attention); a two-layer MLP of width f. m = 0: no cross-attention."""
    self_attention = 4 * n * d * d + 2 * n * n * d
    cross = 2 * n * d * d + 2 * m * d * d + 2 * n * m * d if m else 0
    return self_attention + cross + 2 * n * d * f


def test_the_new_flop_models_count_tokens_and_widths_from_each_config():
    from srd_plugin.testing import cosmos, kandinsky5, ltx

    zeros = torch.zeros
    model = ltx.tiny_ltx_transformer()  # 2 layers, 4 heads x 8, MLP 4x; packed latents [B, tokens, C]
    got = ltx_adapter.ADAPTER.flops_per_call(
        model, {"hidden_states": zeros(2, 50, 8), "encoder_hidden_states": zeros(2, 16, 32)}
    )
    assert got == 2 * 2 * _block(50, 16, 32, 128)
    model = cosmos.tiny_cosmos_transformer()  # 2 layers, 4 heads x 16, mlp_ratio 2, patch (1, 2, 2)
    arguments = {"hidden_states": zeros(1, 16, 3, 8, 8), "encoder_hidden_states": zeros(1, 16, 32)}
    assert cosmos_adapter.ADAPTER.flops_per_call(model, arguments) == 2 * _block(3 * 4 * 4, 16, 64, 128)
    model = cosmos.tiny_cosmos25_transformer()  # plus the text projection 48 -> 32 on every text token
    arguments["encoder_hidden_states"] = zeros(1, 16, 48)
    arguments["hidden_states"] = zeros(1, 17, 3, 8, 8)
    assert cosmos_adapter.ADAPTER.flops_per_call(model, arguments) == 2 * _block(48, 16, 64, 128) + 16 * 48 * 32
    model = kandinsky5.tiny_kandinsky5_transformer()  # width 32, MLP 64, 2 visual blocks, 1 text block
    arguments = {"hidden_states": zeros(1, 2, 4, 4, 33), "encoder_hidden_states": zeros(1, 6, 32)}
    assert kandinsky5_adapter.ADAPTER.flops_per_call(model, arguments) == 2 * _block(8, 6, 32, 64) + (
        4 * 6 * 32 * 32 + 2 * 6 * 6 * 32 + 2 * 6 * 32 * 64
    )
