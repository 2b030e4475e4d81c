"""The CogVideoXPipeline adapter against independent oracles, and the cross-model latent alignment.

* disabled equals never enabled; switch at N equals the plain pipeline; switch at 0 equals the
  pipeline built around the renderer (when the parametrizations match), bit for bit;
* aligned and naive runs are bit-identical when the parametrizations match;
* the analytic oracle: exact Gaussian v-predictors for the 5B and the 2B parametrization; SRD
  with alignment reproduces the sketcher-only run, the naive swap does not;
* rotary embeddings: the 2B-like renderer never receives any, a rotary renderer gets its own;
* the four policies, incompatibility errors, the renderer's parametrization from its folder.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, DDIMScheduler

import srd_plugin as srd
from srd_plugin import IncompatibleRendererError, SRDConfig
from srd_plugin.adapters.alignment import LatentAlignment, Parametrization
from srd_plugin.adapters.cogvideox import PLUGIN_KEY, rotary_embeddings
from srd_plugin.oracles import gaussian_oracle_transformer
from srd_plugin.runtime import session_of
from srd_plugin.testing import (
    COGVIDEOX_2B_LIKE,
    COGVIDEOX_2B_SCALING_FACTOR,
    COGVIDEOX_5B_LIKE,
    COGVIDEOX_5B_SCALING_FACTOR,
    CogVideoXSize,
    cogvideox_2b_alignment,
    cogvideox_scheduler_config,
    make_cogvideox_scheduler,
    tiny_cogvideox_call_kwargs,
    tiny_cogvideox_pipeline,
    tiny_cogvideox_renderer,
    tiny_cogvideox_renderer_pipeline,
    tiny_cogvideox_transformer,
    tiny_wan_pipeline,
    tiny_wan_renderer,
)

STEPS = 8
ROTARY_RENDERER = CogVideoXSize(num_layers=1, num_attention_heads=1, attention_head_dim=32, rotary=True)


def generate(pipe, steps=STEPS, **overrides):
    return pipe(**tiny_cogvideox_call_kwargs(steps, **overrides)).frames


def rebuilt(pipe, **components):
    """Another CogVideoXPipeline sharing `pipe`'s components except those given."""
    new = CogVideoXPipeline(**{**pipe.components, **components})
    new.set_progress_bar_config(disable=True)
    return new


@pytest.fixture(scope="module")
def cog_pipe():
    """5B-like: rotary sketcher, VAE scaling 0.7, snr_shift_scale 1.0 (shared; every test disables at the end)."""
    return tiny_cogvideox_pipeline()


@pytest.fixture(autouse=True)
def _disable_after(request):
    yield
    if "cog_pipe" in request.fixturenames:
        srd.disable(request.getfixturevalue("cog_pipe"))


@pytest.fixture(scope="module")
def renderer_2b():
    """2B-like: no rotary embeddings, fewer layers and heads."""
    return tiny_cogvideox_renderer()


# -- the core oracles ----------------------------------------------------------------------------
def test_disabled_equals_never_enabled(renderer_2b):
    untouched, toggled = tiny_cogvideox_pipeline(), tiny_cogvideox_pipeline()
    expected = generate(untouched)
    srd.enable(toggled, renderer_2b, switch="step", switch_step=3, **cogvideox_2b_alignment())
    enabled_output = generate(toggled)
    srd.disable(toggled)
    assert not torch.equal(enabled_output, expected)  # the switch did something
    assert torch.equal(generate(toggled), expected)
    assert "forward" not in toggled.transformer.__dict__
    assert not ({"step", "set_timesteps"} & toggled.scheduler.__dict__.keys())


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_switch_at_n_equals_plain_pipeline(scheduler, renderer_2b):
    pipe = tiny_cogvideox_pipeline(scheduler=scheduler)
    expected = generate(pipe)
    srd.enable(pipe, renderer_2b, switch="step", switch_step=STEPS, **cogvideox_2b_alignment())
    assert torch.equal(generate(pipe), expected)
    assert srd.last_trace(pipe).roles == ["sketch"] * STEPS


@pytest.mark.parametrize("size", [COGVIDEOX_2B_LIKE, ROTARY_RENDERER], ids=["no-rotary", "own-rotary"])
@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_switch_at_zero_equals_renderer_pipeline(scheduler, size):
    """Same parametrization: SRD renders with exactly what a pipeline built around the renderer computes
    (for a rotary renderer with another head dim, that includes its own rotary tables)."""
    pipe = tiny_cogvideox_pipeline(scheduler=scheduler)
    renderer = tiny_cogvideox_renderer(size)
    expected = generate(rebuilt(pipe, transformer=renderer))
    srd.enable(pipe, renderer, switch="step", switch_step=0)
    assert torch.equal(generate(pipe), expected)
    assert srd.last_trace(pipe).roles == ["render"] * STEPS


@pytest.mark.parametrize(
    "call",
    [dict(guidance_scale=1.0), dict(num_videos_per_prompt=2)],
    ids=["no-cfg", "two-videos-per-prompt"],
)
def test_call_variants_follow_the_oracles(cog_pipe, renderer_2b, call):
    renderer_only = generate(rebuilt(cog_pipe, transformer=renderer_2b), **call)
    plain = generate(cog_pipe, **call)
    srd.enable(cog_pipe, renderer_2b, switch="step", switch_step=0)
    assert torch.equal(generate(cog_pipe, **call), renderer_only)
    srd.enable(cog_pipe, renderer_2b, switch="step", switch_step=STEPS)
    assert torch.equal(generate(cog_pipe, **call), plain)


@pytest.mark.parametrize(
    "fields",
    [{}, dict(renderer_scaling_factor=0.7, renderer_scheduler_config=cogvideox_scheduler_config(1.0))],
    ids=["nothing-given", "same-as-host-given"],
)
def test_aligned_equals_naive_when_parametrizations_match(cog_pipe, renderer_2b, fields):
    srd.enable(cog_pipe, renderer_2b, switch="step", switch_step=3, align="none")
    naive = generate(cog_pipe)
    srd.enable(cog_pipe, renderer_2b, switch="step", switch_step=3, align="auto", **fields)
    assert torch.equal(generate(cog_pipe), naive)
    assert not any("alignment" in event for event in srd.last_trace(cog_pipe).events)


def test_final_latents_decode(cog_pipe, renderer_2b):
    srd.enable(cog_pipe, renderer_2b, switch="step", switch_step=2, **cogvideox_2b_alignment())
    frames = generate(cog_pipe, steps=3, output_type="np")
    assert frames.shape == (1, 9, 32, 32, 3) and frames.min() >= 0 and frames.max() <= 1


# -- the analytic oracle -----------------------------------------------------------------------------
GAUSSIAN_MEAN = torch.tensor([0.5, -0.3, 0.2, 0.8]).reshape(1, 1, 4, 1, 1)
GAUSSIAN_STD = torch.tensor([0.6, 1.2, 0.9, 0.4]).reshape(1, 1, 4, 1, 1)


def gaussian_oracles(sketcher_shift=1.0, renderer_shift=3.0, sketcher_scaling=0.7, renderer_scaling=1.15258426):
    """The exact v-predictors of one Gaussian data set seen through two parametrizations."""
    k = renderer_scaling / sketcher_scaling
    sketcher = gaussian_oracle_transformer(
        GAUSSIAN_MEAN, GAUSSIAN_STD, make_cogvideox_scheduler(sketcher_shift).alphas_cumprod, rotary=True
    )
    renderer = gaussian_oracle_transformer(
        k * GAUSSIAN_MEAN, k * GAUSSIAN_STD, make_cogvideox_scheduler(renderer_shift).alphas_cumprod, rotary=False
    )
    return sketcher, renderer


def oracle_call(pipe, steps=50):
    embeds = torch.zeros(1, 16, 32)  # the oracles ignore the text: skip the text encoder
    return pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=embeds,
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    ).frames


def relative_error(actual, expected):
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_analytic_oracle_aligned_reproduces_sketcher_naive_does_not(scheduler):
    """On the real constants (scaling 0.7 / 1.15258426, snr_shift_scale 1.0 / 3.0), 50 steps."""
    sketcher, renderer = gaussian_oracles()
    pipe = tiny_cogvideox_pipeline(transformer=sketcher, scheduler=scheduler)
    reference = oracle_call(pipe)
    assert reference.abs().mean() > 0.3  # a real sample, not a degenerate one
    for switch_step in (0, 10, 25, 40):
        errors = {}
        for align in ("auto", "none"):
            srd.enable(pipe, renderer, switch="step", switch_step=switch_step, align=align, **cogvideox_2b_alignment())
            errors[align] = relative_error(oracle_call(pipe), reference)
        srd.disable(pipe)
        print(
            f"analytic oracle ({scheduler}, switch at {switch_step}/50): relative error of the final latent "
            f"aligned {errors['auto']:.2e}, naive {errors['none']:.2e}"
        )
        assert errors["auto"] < 1e-3
        assert errors["none"] > 1e-2


@pytest.mark.parametrize("parts", ["scaling-only", "schedule-only"])
def test_analytic_oracle_each_mismatch_alone(parts):
    """Scale and noise schedule are aligned independently: each mismatch alone is corrected too."""
    if parts == "scaling-only":
        sketcher, renderer = gaussian_oracles(renderer_shift=1.0)
        fields = dict(renderer_scaling_factor=COGVIDEOX_2B_SCALING_FACTOR)
    else:
        sketcher, renderer = gaussian_oracles(renderer_scaling=0.7)
        fields = dict(renderer_scheduler_config=cogvideox_scheduler_config(3.0))
    pipe = tiny_cogvideox_pipeline(transformer=sketcher)
    reference = oracle_call(pipe)
    errors = {}
    for align in ("auto", "none"):
        srd.enable(pipe, renderer, switch="step", switch_step=10, align=align, **fields)
        errors[align] = relative_error(oracle_call(pipe), reference)
    print(f"analytic oracle ({parts}): aligned {errors['auto']:.2e}, naive {errors['none']:.2e}")
    assert errors["auto"] < 1e-3 and errors["none"] > 1e-2


# -- the alignment arithmetic -----------------------------------------------------------------------
def parametrization(scaling, shift):
    return Parametrization(scaling, make_cogvideox_scheduler(shift).alphas_cumprod, f"{scaling}/{shift}")


def test_identical_parametrizations_map_to_the_identity():
    alignment = LatentAlignment(parametrization(0.7, 1.0), parametrization(0.7, 1.0))
    t = torch.arange(1000)
    match = alignment.match(t)
    assert torch.allclose(match.tau, t.double(), atol=1e-9, rtol=0) and not match.clamped.any()
    assert torch.allclose(match.norm, torch.ones(1000, dtype=torch.float64), atol=1e-12)
    x, v = torch.randn(1000, 1, 4, 2, 2), torch.randn(1000, 1, 4, 2, 2)
    assert torch.allclose(alignment.to_renderer(x, match), x, atol=1e-6)
    assert torch.allclose(alignment.to_host(v, x, match), v, atol=1e-6)


def test_real_constants_mapping_is_monotone_and_exact_in_snr():
    host, renderer = parametrization(0.7, 1.0), parametrization(1.15258426, 3.0)
    alignment = LatentAlignment(host, renderer)
    t = torch.arange(1000)
    match = alignment.match(t)
    assert bool((match.tau[1:] > match.tau[:-1]).all())  # strictly monotone
    assert match.clamped.tolist() == [True] + [False] * 999  # only t=0 lies beyond the 2B table
    assert match.tau[0] == 0 and match.tau[999] == 999  # zero terminal SNR maps onto itself
    # at integer tau the renderer's SNR equals the scaled host SNR a^2 / (k s)^2 exactly
    abar_r = renderer.alphas_cumprod
    for i in (19, 399, 899):
        tau = float(match.tau[i])
        expected = match.a[i] ** 2 / match.norm[i] ** 2
        lo = math.floor(tau)
        f = tau - lo
        logit = torch.logit(abar_r[lo]) * (1 - f) + torch.logit(abar_r[lo + 1]) * f
        assert torch.sigmoid(logit).item() == pytest.approx(expected.item(), rel=1e-9)


def test_round_trip_recovers_data_and_noise():
    """Feed the renderer a sample built from known (z, eps) at the matched level: its ideal v, mapped
    back, is the host's ideal v for the same (z, eps)."""
    host, renderer = parametrization(0.7, 1.0), parametrization(1.15258426, 3.0)
    alignment = LatentAlignment(host, renderer)
    k = alignment.k
    t = torch.tensor([999, 979, 500, 19, 1])
    match = alignment.match(t)
    z, eps = torch.randn(5, 1, 4, 2, 2, dtype=torch.float64), torch.randn(5, 1, 4, 2, 2, dtype=torch.float64)
    a, s = (x.reshape(-1, 1, 1, 1, 1) for x in (match.a, match.s))
    x_t = (a * z + s * eps).float()
    x_r = alignment.to_renderer(x_t, match).double()
    alpha_r, sigma_r = a / match.norm.reshape(-1, 1, 1, 1, 1), k * s / match.norm.reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(x_r, alpha_r * k * z + sigma_r * eps, rtol=1e-5, atol=1e-5)
    v_r = alpha_r * eps - sigma_r * k * z  # the renderer's ideal v
    v_host = alignment.to_host(v_r.float(), x_t, match).double()
    torch.testing.assert_close(v_host, a * eps - s * z, rtol=1e-5, atol=1e-5)


def test_clamp_beyond_the_table_is_reported(cog_pipe, renderer_2b):
    """'linspace' spacing reaches t=0, whose 5B SNR lies beyond the 2B table: clamp, and say so."""
    cog_pipe.scheduler = CogVideoXDDIMScheduler.from_config(
        {**cogvideox_scheduler_config(1.0), "timestep_spacing": "linspace"}
    )
    try:
        srd.enable(cog_pipe, renderer_2b, switch="step", switch_step=0, **cogvideox_2b_alignment())
        assert torch.isfinite(generate(cog_pipe, steps=4)).all()
        events = srd.last_trace(cog_pipe).events
        assert any("clamped to [0.0]" in e and "at step 3" in e for e in events), events
    finally:
        cog_pipe.scheduler = make_cogvideox_scheduler(1.0)


# -- rotary embeddings and dtypes -------------------------------------------------------------------
def record_calls(module):
    calls = []

    def spy(_, args, kwargs):
        calls.append(dict(kwargs))

    return calls, module.register_forward_pre_hook(spy, with_kwargs=True)


def test_renderer_without_rotary_never_receives_rotary_embeddings(cog_pipe, renderer_2b):
    renderer_calls, handle_r = record_calls(renderer_2b)
    srd.enable(cog_pipe, renderer_2b, switch="step", switch_step=3, **cogvideox_2b_alignment())
    try:
        generate(cog_pipe)
    finally:
        handle_r.remove()
    assert len(renderer_calls) == STEPS - 3
    assert all(call["image_rotary_emb"] is None for call in renderer_calls)
    # the renderer got the aligned timestep (float, the matched SNR) and the doubled CFG batch
    assert all(
        call["timestep"].dtype == torch.float32 and call["hidden_states"].shape[0] == 2 for call in renderer_calls
    )


def test_rotary_renderer_gets_tables_from_its_own_config(cog_pipe):
    renderer = tiny_cogvideox_renderer(ROTARY_RENDERER)
    renderer_calls, handle = record_calls(renderer)
    srd.enable(cog_pipe, renderer, switch="step", switch_step=5)
    try:
        generate(cog_pipe)
    finally:
        handle.remove()
    own = rebuilt(cog_pipe, transformer=renderer)._prepare_rotary_positional_embeddings(32, 32, 3, "cpu")
    sketchers = cog_pipe._prepare_rotary_positional_embeddings(32, 32, 3, "cpu")
    assert own[0].shape[-1] == 32 and sketchers[0].shape[-1] == 16  # the head dims differ
    for call in renderer_calls:
        cos, sin = call["image_rotary_emb"]
        assert torch.equal(cos, own[0]) and torch.equal(sin, own[1])
    assert len(session_of(cog_pipe).plugin_state[PLUGIN_KEY].rotary) == 1  # computed once, cached


def test_rotary_tables_for_cogvideox_15_configs():
    """The patch_size_t branch (CogVideoX 1.5) equals the pipeline's own computation too."""
    transformer = tiny_cogvideox_transformer(COGVIDEOX_5B_LIKE, patch_size_t=2)
    pipe = tiny_cogvideox_pipeline(transformer=transformer)
    expected = pipe._prepare_rotary_positional_embeddings(32, 32, 4, "cpu")
    actual = rotary_embeddings(transformer.config, 4, 4, 4, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(actual, expected))


def test_renderer_in_its_own_dtype(cog_pipe):
    renderer = tiny_cogvideox_renderer()
    srd.enable(cog_pipe, renderer, switch="step", switch_step=3, **cogvideox_2b_alignment())
    full_precision = generate(cog_pipe)
    srd.enable(cog_pipe, renderer, switch="step", switch_step=3, renderer_dtype="bfloat16", **cogvideox_2b_alignment())
    calls, handle = record_calls(renderer)
    try:
        out = generate(cog_pipe)
    finally:
        handle.remove()
    assert renderer.dtype == torch.bfloat16
    assert all(c["hidden_states"].dtype == torch.bfloat16 for c in calls)
    assert all(c["encoder_hidden_states"].dtype == torch.bfloat16 for c in calls)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert relative_error(out, full_precision) < 0.05  # bf16 rounding only


# -- the policies ------------------------------------------------------------------------------------
def test_step_and_ratio_policies(cog_pipe, renderer_2b):
    srd.enable(cog_pipe, renderer_2b, switch="step", switch_step=5, **cogvideox_2b_alignment())
    by_step = generate(cog_pipe)
    assert srd.last_trace(cog_pipe).roles == ["sketch"] * 5 + ["render"] * 3
    srd.enable(cog_pipe, renderer_2b, switch="ratio", switch_ratio=0.625, **cogvideox_2b_alignment())
    assert torch.equal(generate(cog_pipe), by_step)  # round(0.625 * 8) = 5


@pytest.mark.parametrize("boundary_ratio", [0.9, 0.5])
def test_boundary_policy(cog_pipe, renderer_2b, boundary_ratio):
    srd.enable(cog_pipe, renderer_2b, switch="boundary", boundary_ratio=boundary_ratio)
    generate(cog_pipe)
    trace = srd.last_trace(cog_pipe)
    assert 0 < trace.switch_step < STEPS
    assert trace.roles == ["sketch" if t >= boundary_ratio * 1000 else "render" for t in trace.timesteps]


def sketcher_only_x0(pipe, steps):
    """Reference: the guided x0 of every step, as the CogVideoX scheduler itself computes it."""
    scheduler = pipe.scheduler
    original = scheduler.step
    record = []

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        record.append(result[1].double())  # (prev_sample, pred_original_sample)
        return result

    scheduler.step = spy
    try:
        generate(pipe, steps=steps)
    finally:
        del scheduler.step
    return record


def reference_switch(x0s, threshold, min_steps, max_steps):
    """The adaptive rule written out directly in float64 (independent of srd_plugin.switching)."""
    d = [None] + [
        math.tanh((x0s[i] - x0s[i - 1]).abs().mean().item() / max(x0s[i - 1].abs().mean().item(), 1e-8))
        for i in range(1, len(x0s))
    ]
    for i in range(len(x0s) - 1):
        n = i + 1
        s = d[i - 1] - d[i] if i >= 2 else None
        if n >= min_steps and s is not None and 0 < s < threshold:
            return n, "settled"
        if n >= min_steps and n >= max_steps:
            return n, "max"
    return None, "none"


def test_adaptive_switches_where_the_reference_says(cog_pipe, renderer_2b):
    steps = 12
    x0s = sketcher_only_x0(cog_pipe, steps)
    branches, switch_steps = set(), set()
    for threshold in (1e-6, 0.015, 0.02):
        expected, reason = reference_switch(x0s, threshold, min_steps=5, max_steps=math.ceil(0.6 * steps))
        srd.enable(cog_pipe, renderer_2b, threshold=threshold, **cogvideox_2b_alignment())
        generate(cog_pipe, steps=steps)
        assert srd.last_trace(cog_pipe).switch_step == expected, f"threshold {threshold}"
        switch_steps.add(expected)
        branches.add(reason)
    assert len(switch_steps) == 3, "each threshold should switch at a different step"
    assert branches == {"max", "settled"}, "the thresholds must exercise both ways to switch"


def test_adaptive_serves_diffusers_plain_epsilon_ddim(renderer_2b):
    """diffusers' own CogVideoX tests build a plain `DDIMScheduler()` (epsilon prediction): the adaptive
    policy derives x0 from that parametrization and switches where the rule applied to the scheduler's
    own `pred_original_sample` says."""
    pipe = tiny_cogvideox_pipeline()
    pipe.scheduler = DDIMScheduler()
    steps = 10
    x0s = sketcher_only_x0(pipe, steps)
    expected, _ = reference_switch(x0s, 0.05, min_steps=3, max_steps=math.ceil(0.6 * steps))
    srd.enable(pipe, renderer_2b, threshold=0.05, min_sketch_steps=3)
    generate(pipe, steps=steps)
    trace = srd.last_trace(pipe)
    assert trace.completed and trace.switch_step == expected
    assert all(m is not None for m in trace.metrics[2 : trace.switch_step])


# -- bad input -----------------------------------------------------------------------------------------
def test_incompatible_renderer_names_every_mismatch(cog_pipe):
    bad = tiny_cogvideox_transformer(
        COGVIDEOX_2B_LIKE, in_channels=8, out_channels=8, text_embed_dim=16, patch_size=1, max_text_seq_length=8
    )
    with pytest.raises(IncompatibleRendererError) as info:
        srd.enable(cog_pipe, bad)
    message = str(info.value)
    for words in (
        "latent channels (in_channels)",
        "output channels (out_channels)",
        "text embedding width (text_embed_dim)",
        "spatial patch size (patch_size)",
        "text length (max_text_seq_length)",
    ):
        assert words in message
    assert len(info.value.mismatches) == 5
    with pytest.raises(IncompatibleRendererError, match="model family.*WanTransformer3DModel"):
        srd.enable(cog_pipe, tiny_wan_renderer())
    assert not srd.is_enabled(cog_pipe)


def test_rotary_renderer_may_differ_in_text_length(cog_pipe):
    """Rotary models take any number of text tokens; only sin-cos renderers are tied to theirs."""
    renderer = tiny_cogvideox_transformer(CogVideoXSize(1, 2, 16, rotary=True), max_text_seq_length=8)
    srd.enable(cog_pipe, renderer, switch="step", switch_step=6)
    assert torch.isfinite(generate(cog_pipe)).all()


def test_text_length_the_renderer_cannot_take_is_named(cog_pipe, renderer_2b):
    srd.enable(cog_pipe, renderer_2b, switch="step", switch_step=2)
    with pytest.raises(ValueError, match="takes exactly 16 text tokens.*max_sequence_length=16"):
        generate(cog_pipe, steps=4, max_sequence_length=12)
    trace = srd.last_trace(cog_pipe)
    assert not trace.completed and trace.roles == ["sketch", "sketch"]
    generate(cog_pipe, steps=4)  # the pipeline stays usable
    assert srd.last_trace(cog_pipe).completed


@pytest.mark.parametrize(
    "fields, words",
    [
        (dict(renderer_scheduler_config={"_class_name": "NoSuchScheduler"}), "is not a diffusers scheduler class"),
        (
            dict(renderer_scheduler_config={**cogvideox_scheduler_config(3.0), "prediction_type": "epsilon"}),
            "prediction_type='epsilon'",
        ),
        (
            dict(renderer_scheduler_config={**cogvideox_scheduler_config(3.0), "beta_schedule": "nonsense"}),
            "from_config failed",
        ),
        (dict(renderer_scheduler_config={"_class_name": "FlowMatchEulerDiscreteScheduler"}), "no alphas_cumprod"),
    ],
)
def test_bad_renderer_scheduler_config_is_refused_before_any_change(cog_pipe, renderer_2b, fields, words):
    with pytest.raises(ValueError, match="SRDConfig.renderer_scheduler_config") as info:
        srd.enable(cog_pipe, renderer_2b, **fields)
    assert words in str(info.value)
    assert not srd.is_enabled(cog_pipe) and "forward" not in cog_pipe.transformer.__dict__


@pytest.mark.parametrize(
    "kwargs, field, words",
    [
        (dict(align="always"), "align", "auto, none"),
        (dict(renderer_scaling_factor=0), "renderer_scaling_factor", "positive finite"),
        (dict(renderer_scaling_factor=float("inf")), "renderer_scaling_factor", "positive finite"),
        (dict(renderer_scaling_factor="1.15"), "renderer_scaling_factor", "positive finite"),
        (dict(renderer_scheduler_config="scheduler_config.json"), "renderer_scheduler_config", "a dict"),
        (dict(renderer_scheduler_config={1: 2}), "renderer_scheduler_config", "string keys"),
    ],
)
def test_alignment_config_fields_are_validated(kwargs, field, words):
    with pytest.raises(ValueError) as info:
        SRDConfig(**kwargs)
    assert f"SRDConfig.{field}=" in str(info.value) and words in str(info.value)


def test_host_scheduler_swapped_to_an_unalignable_one_fails_at_call_start(cog_pipe, renderer_2b):
    calls, handle = record_calls(cog_pipe.transformer.transformer_blocks[0])
    srd.enable(cog_pipe, renderer_2b, switch="step", switch_step=3, **cogvideox_2b_alignment())
    cog_pipe.scheduler = DDIMScheduler.from_config({**cogvideox_scheduler_config(1.0), "prediction_type": "epsilon"})
    try:
        with pytest.raises(ValueError, match="cannot align the CogVideoX renderer.*v_prediction"):
            generate(cog_pipe)
        assert calls == []  # refused before any denoising
    finally:
        handle.remove()
        cog_pipe.scheduler = make_cogvideox_scheduler(1.0)
    generate(cog_pipe)  # the pipeline stays usable
    assert srd.last_trace(cog_pipe).completed


def test_wan_refuses_the_alignment_fields():
    pipe = tiny_wan_pipeline()
    with pytest.raises(ValueError, match="SRDConfig.renderer_scaling_factor=1.15.*share the VAE"):
        srd.enable(pipe, tiny_wan_renderer(), renderer_scaling_factor=1.15)
    with pytest.raises(ValueError, match="SRDConfig.renderer_scheduler_config="):
        srd.enable(pipe, tiny_wan_renderer(), renderer_scheduler_config={"shift": 5.0})
    srd.enable(pipe, tiny_wan_renderer(), align="none")  # the identity either way: accepted
    srd.disable(pipe)


# -- the renderer's parametrization from its folder ----------------------------------------------------
def test_renderer_folder_supplies_scaling_and_scheduler(cog_pipe, renderer_2b, tmp_path):
    tiny_cogvideox_renderer_pipeline(renderer_2b).save_pretrained(tmp_path / "cogvideox-2b-like")
    folder = tmp_path / "cogvideox-2b-like"
    srd.enable(cog_pipe, renderer_2b, switch="step", switch_step=3, **cogvideox_2b_alignment())
    explicit = generate(cog_pipe)

    srd.enable(cog_pipe, folder, switch="step", switch_step=3)
    facts = session_of(cog_pipe).plugin_state[PLUGIN_KEY].renderer
    assert facts.scaling_factor == COGVIDEOX_2B_SCALING_FACTOR and facts.scaling_source.endswith("vae/config.json")
    assert torch.equal(facts.alphas_cumprod, make_cogvideox_scheduler(3.0).alphas_cumprod)
    assert facts.scheduler_source.endswith("scheduler/scheduler_config.json")
    torch.testing.assert_close(generate(cog_pipe), explicit, rtol=1e-5, atol=1e-5)
    assert any("1.64655 x host latent" in e for e in srd.last_trace(cog_pipe).events)

    # explicit fields win over the folder: here they say "same as the host", so no alignment
    srd.enable(
        cog_pipe,
        folder,
        switch="step",
        switch_step=3,
        renderer_scaling_factor=COGVIDEOX_5B_SCALING_FACTOR,
        renderer_scheduler_config=cogvideox_scheduler_config(1.0),
    )
    generate(cog_pipe)
    assert not any("alignment" in e for e in srd.last_trace(cog_pipe).events)


def test_transformer_folder_carries_no_parametrization(cog_pipe, renderer_2b, tmp_path):
    renderer_2b.save_pretrained(tmp_path / "transformer")
    srd.enable(cog_pipe, tmp_path / "transformer", switch="step", switch_step=3)
    facts = session_of(cog_pipe).plugin_state[PLUGIN_KEY].renderer
    assert facts.scaling_factor is None and facts.alphas_cumprod is None


def test_renderer_folder_with_a_broken_vae_config(cog_pipe, renderer_2b, tmp_path):
    folder = tmp_path / "renderer"
    tiny_cogvideox_renderer_pipeline(renderer_2b).save_pretrained(folder)
    (folder / "vae" / "config.json").write_text('{"scaling_factor": -1}')
    with pytest.raises(ValueError, match=r"vae/config.json: scaling_factor=-1 is not a positive number"):
        srd.enable(cog_pipe, folder)
    assert not srd.is_enabled(cog_pipe)


def test_hub_renderer_supplies_its_parametrization(cog_pipe, renderer_2b, tmp_path, monkeypatch):
    """A hub repo id is read like a pipeline folder (vae/config.json, scheduler/scheduler_config.json).
    No network here: the download function and the transformer loading are stand-ins."""
    import huggingface_hub

    from srd_plugin.adapters import cogvideox

    folder = tmp_path / "snapshot"
    tiny_cogvideox_renderer_pipeline(renderer_2b).save_pretrained(folder)
    fetched = []

    def fake_download(repo_id, filename):
        fetched.append((repo_id, filename))
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(cogvideox.ADAPTER, "load_renderer", lambda source, pipe, config: renderer_2b)
    srd.enable(cog_pipe, "THUDM/CogVideoX-2b", switch="step", switch_step=3)
    facts = session_of(cog_pipe).plugin_state[PLUGIN_KEY].renderer
    assert facts.scaling_factor == COGVIDEOX_2B_SCALING_FACTOR
    assert facts.scaling_source == "THUDM/CogVideoX-2b/vae/config.json"
    assert torch.equal(facts.alphas_cumprod, make_cogvideox_scheduler(3.0).alphas_cumprod)
    assert sorted(fetched) == [
        ("THUDM/CogVideoX-2b", "scheduler/scheduler_config.json"),
        ("THUDM/CogVideoX-2b", "vae/config.json"),
    ]

    def offline(repo_id, filename):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ValueError, match="vae/config.json: could not be fetched.*renderer_scaling_factor"):
        srd.enable(cog_pipe, "THUDM/CogVideoX-2b")
    # explicit fields, or the naive swap, need nothing from the hub
    srd.enable(cog_pipe, "THUDM/CogVideoX-2b", **cogvideox_2b_alignment())
    assert session_of(cog_pipe).plugin_state[PLUGIN_KEY].renderer.scaling_factor == COGVIDEOX_2B_SCALING_FACTOR
    srd.enable(cog_pipe, "THUDM/CogVideoX-2b", align="none")
