"""GPU benchmark at the real model shapes, with random bf16 weights created on the device.

    python benchmarks/gpu.py --out results/gpu.md        # H100/H200, about 5 minutes
    python benchmarks/gpu.py --tiny                      # the same code paths on the CPU in seconds

No checkpoint is needed to measure time: the architectures are the real ones (Wan2.1-T2V-14B
and 1.3B at 832x480, 81 frames; CogVideoX-5B and 2B at 720x480, 49 frames), the weights are
random. It measures:

* per-step time of each model with CFG as its pipeline runs it (Wan: two calls per step;
  CogVideoX: one call with a doubled batch), median of several steps after a warm-up;
* the projected 50-step SRD speedup S(k) = 50 T_s / (k T_s + (50 - k) T_r) at k = 5, 10, 15, 20;
* a short end-to-end SRD run through the real WanPipeline path with a fixed switch, against
  its prediction k T_s + (N - k) T_r;
* peak GPU memory of each model's steps;
* stacking (issue 19, section `stacking`, about 3 minutes on an H200: run it alone with
  `--sections stacking`): Wan2.1 14B -> 1.3B step times with CFG (two calls) and the renderer's
  conditional call alone (what `render_guidance="off"` leaves), S(10) at N = 50 with the host's
  guidance and without it in the render phase, and short end-to-end SRD runs through the real
  WanPipeline (N = 12, switch at 3): SRD alone, + guidance-free rendering, + TeaCache on the
  renderer with a fixed skip pattern (random weights have no realistic dynamics), each as its
  speedup over N sketcher steps at the measured sketcher step time, against its prediction.

Timings use CUDA events around each step; every figure is the median of the repeats.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import srd_plugin as srd  # noqa: E402
from benchmarks.shapes import (  # noqa: E402
    COG_2B_SIZE,
    COG_5B_SIZE,
    COG_COMMON,
    WAN_1_3B_SIZE,
    WAN_14B_SIZE,
    WAN_COMMON,
)

# -- the architectures ------------------------------------------------------------------------
WAN_14B = dict(WAN_COMMON, **WAN_14B_SIZE)
WAN_1_3B = dict(WAN_COMMON, **WAN_1_3B_SIZE)
WAN_TINY_S = dict(
    WAN_COMMON,
    attention_head_dim=16,
    text_dim=64,
    freq_dim=32,
    rope_max_seq_len=32,
    num_attention_heads=4,
    ffn_dim=128,
    num_layers=4,
)
WAN_TINY_R = dict(WAN_TINY_S, num_attention_heads=2, ffn_dim=64, num_layers=2)

COG_5B = dict(COG_COMMON, **COG_5B_SIZE)
COG_2B = dict(COG_COMMON, **COG_2B_SIZE)
COG_TINY_S = dict(
    COG_COMMON,
    attention_head_dim=16,
    time_embed_dim=32,
    text_embed_dim=64,
    sample_width=8,
    sample_height=8,
    sample_frames=9,
    max_text_seq_length=8,
    num_attention_heads=4,
    num_layers=2,
    use_rotary_positional_embeddings=True,
)
COG_TINY_R = dict(COG_TINY_S, num_attention_heads=2, num_layers=1, use_rotary_positional_embeddings=False)


@dataclass
class Shapes:
    """Sizes of one benchmark setting (real or tiny)."""

    wan: tuple[dict, dict]
    wan_video: tuple[int, int, int]  # height, width, frames
    wan_text: tuple[int, int]  # tokens, width
    cog: tuple[dict, dict]
    cog_video: tuple[int, int, int]
    cog_text: tuple[int, int]
    repeats: int
    e2e_steps: int
    e2e_switch: int
    stack_steps: int = 12
    stack_switch: int = 3


REAL = Shapes(
    wan=(WAN_14B, WAN_1_3B),
    wan_video=(480, 832, 81),
    wan_text=(512, 4096),
    cog=(COG_5B, COG_2B),
    cog_video=(480, 720, 49),
    cog_text=(226, 4096),
    repeats=3,
    e2e_steps=6,
    e2e_switch=2,
)
TINY = Shapes(
    wan=(WAN_TINY_S, WAN_TINY_R),
    wan_video=(32, 32, 9),
    wan_text=(16, 64),
    cog=(COG_TINY_S, COG_TINY_R),
    cog_video=(64, 64, 9),
    cog_text=(8, 64),
    repeats=2,
    e2e_steps=4,
    e2e_switch=1,
    stack_steps=6,
    stack_switch=2,
)


@dataclass
class Results:
    device: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, **row: Any) -> None:
        self.rows.append(row)
        print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k != "table"), flush=True)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -- measuring ---------------------------------------------------------------------------------
class Timer:
    """Wall time of a region: CUDA events on the GPU, perf_counter (with no async work) on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin


def median_step(timer: Timer, step: Callable[[], Any], repeats: int) -> float:
    step()  # warm-up: kernels selected, caches filled
    return statistics.median(timer(step) for _ in range(repeats))


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0


def build(cls: type, config: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Random weights created directly on the device in `dtype` (no float32 copy of a 14B model)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def free(*models: Any) -> None:
    for model in models:
        del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- Wan ---------------------------------------------------------------------------------------
def wan_inputs(shapes: Shapes, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    height, width, frames = shapes.wan_video
    tokens, text_width = shapes.wan_text
    latent = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    generator = torch.Generator(device).manual_seed(0)
    return dict(
        hidden_states=torch.randn(latent, generator=generator, device=device, dtype=dtype),
        cond=torch.randn((1, tokens, text_width), generator=generator, device=device, dtype=dtype),
        uncond=torch.randn((1, tokens, text_width), generator=generator, device=device, dtype=dtype),
    )


def wan_step(model: torch.nn.Module, inputs: dict[str, torch.Tensor], guidance: bool = True) -> Callable[[], Any]:
    """One Wan denoising step as WanPipeline runs it: a cond and an uncond call (the cond call
    alone with guidance=False: a render step under `render_guidance="off"`)."""
    timestep = torch.tensor([500.0], device=inputs["hidden_states"].device)
    calls = (("cond", inputs["cond"]), ("uncond", inputs["uncond"])) if guidance else (("cond", inputs["cond"]),)

    def step() -> None:
        with torch.no_grad():
            for context, embeds in calls:
                with model.cache_context(context):
                    model(
                        hidden_states=inputs["hidden_states"],
                        timestep=timestep,
                        encoder_hidden_states=embeds,
                        return_dict=False,
                    )

    return step


def projected(t_sketch: float, t_render: float, k: int, n: int = 50) -> float:
    return n * t_sketch / (k * t_sketch + (n - k) * t_render)


def bench_wan(shapes: Shapes, device: torch.device, dtype: torch.dtype, results: Results) -> dict[str, Any]:
    from diffusers import WanTransformer3DModel

    timer = Timer(device)
    inputs = wan_inputs(shapes, device, dtype)
    step_times = {}
    models = {}
    for role, config in zip(("sketch", "render"), shapes.wan):
        model = build(WanTransformer3DModel, config, device, dtype)
        models[role] = model
        reset_peak(device)
        step_times[role] = median_step(timer, wan_step(model, inputs), shapes.repeats)
        params = sum(p.numel() for p in model.parameters()) / 1e9
        name = f"Wan {'sketcher' if role == 'sketch' else 'renderer'} ({params:.2f}B)"
        results.add(
            table="per-step time (CFG as the pipeline runs it)",
            model=name,
            step_s=step_times[role],
            peak_gib=peak_gib(device),
        )
        accelerators(name, model, wan_step(model, inputs), step_times[role], timer, shapes, results)
    for k in (5, 10, 15, 20):
        results.add(
            table="projected 50-step speedup",
            pair="Wan 14B -> 1.3B",
            switch_step=k,
            speedup=projected(step_times["sketch"], step_times["render"], k),
        )
    e2e = wan_end_to_end(shapes, device, dtype, models, inputs, step_times, results)
    free(*models.values())
    return {"step_times": step_times, **e2e}


def timed_against_prediction(pipe, call, label, n, k, step_times, device, results) -> dict[str, Any]:
    """Time one SRD call of an enabled pipeline against k T_s + (N - k) T_r, then disable SRD."""
    seconds = Timer(device)(call)
    trace = srd.last_trace(pipe)
    srd.disable(pipe)
    predicted = k * step_times["sketch"] + (n - k) * step_times["render"]
    results.add(
        table="end-to-end SRD through the real pipeline vs prediction",
        pipeline=label,
        steps=n,
        switch_step=trace.switch_step,
        seconds=seconds,
        predicted=predicted,
        error=seconds / predicted - 1,
    )
    return {"e2e_seconds": seconds, "e2e_predicted": predicted, "e2e_roles": trace.roles}


def wan_pipeline(sketcher: torch.nn.Module) -> Any:
    """The real WanPipeline around `sketcher`, without text encoder or VAE (embeddings in, latents out)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
        transformer=sketcher,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_call(pipe: Any, shapes: Shapes, inputs: dict[str, torch.Tensor], steps: int, device: torch.device) -> Any:
    """One WanPipeline call with CFG (guidance 5.0) on the benchmark's embeddings, as a thunk."""
    height, width, frames = shapes.wan_video

    def call() -> None:
        pipe(
            prompt_embeds=inputs["cond"],
            negative_prompt_embeds=inputs["uncond"],
            height=height,
            width=width,
            num_frames=frames,
            num_inference_steps=steps,
            guidance_scale=5.0,
            output_type="latent",
            generator=torch.Generator(device).manual_seed(0),
        )

    return call


def wan_end_to_end(shapes, device, dtype, models, inputs, step_times, results) -> dict[str, Any]:
    """The real WanPipeline loop (no text encoder or VAE: embeddings in, latents out) with SRD at a fixed switch."""
    pipe = wan_pipeline(models["sketch"])
    srd.enable(pipe, models["render"], switch="step", switch_step=shapes.e2e_switch)
    n, k = shapes.e2e_steps, shapes.e2e_switch
    call = wan_call(pipe, shapes, inputs, n, device)
    return timed_against_prediction(pipe, call, "WanPipeline", n, k, step_times, device, results)


# -- stacking: guidance-free rendering and TeaCache on the renderer (issue 19) -------------------
#: TeaCache with a fixed skip pattern: a constant rescale polynomial adds 1 per call, so with
#: threshold 1.5 every other renderer call is computed (the first and last always are)
FIXED_SKIPS = dict(threshold=1.5, coefficients=(1.0,))


def bench_stacking(shapes: Shapes, device: torch.device, dtype: torch.dtype, results: Results) -> dict[str, Any]:
    """Wan2.1 14B -> 1.3B: step times with and without the renderer's guidance, S(10) at N = 50 both
    ways, and end-to-end SRD runs (alone, + guidance-free rendering, + TeaCache) against their predictions."""
    from diffusers import WanTransformer3DModel

    from srd_plugin import TeaCacheConfig
    from srd_plugin.hooks.teacache import srd_teacache_stats

    timer = Timer(device)
    inputs = wan_inputs(shapes, device, dtype)
    sketcher = build(WanTransformer3DModel, shapes.wan[0], device, dtype)
    renderer = build(WanTransformer3DModel, shapes.wan[1], device, dtype)
    steps = {
        "sketch": median_step(timer, wan_step(sketcher, inputs), shapes.repeats),
        "render": median_step(timer, wan_step(renderer, inputs), shapes.repeats),
        "render_cond": median_step(timer, wan_step(renderer, inputs, guidance=False), shapes.repeats),
    }
    for name, label in (
        ("sketch", "14B, CFG (2 calls)"),
        ("render", "1.3B, CFG (2 calls)"),
        ("render_cond", "1.3B, cond only (1 call)"),
    ):
        results.add(table="stacking: Wan step times", model=label, step_s=steps[name])
    for guidance, render in (("host", steps["render"]), ("off", steps["render_cond"])):
        results.add(
            table="stacking: projected 50-step speedup",
            render_guidance=guidance,
            renderer_step_s=render,
            **{f"S({k})": projected(steps["sketch"], render, k) for k in (5, 8, 10, 15)},
        )
    n, k = shapes.stack_steps, shapes.stack_switch
    pipe = wan_pipeline(sketcher)
    rows = {}
    runs = (
        ("SRD alone", dict(), steps["render"]),
        ("SRD + guidance-free rendering", dict(render_guidance="off"), steps["render_cond"]),
        (
            "SRD + guidance-free + TeaCache on the renderer (fixed skips)",
            dict(render_guidance="off", teacache_renderer=TeaCacheConfig(**FIXED_SKIPS)),
            steps["render_cond"],
        ),
    )
    for label, settings, render_step in runs:
        srd.enable(pipe, renderer, switch="step", switch_step=k, **settings)
        seconds = timer(wan_call(pipe, shapes, inputs, n, device))  # both models are warm from the step timings
        trace = srd.last_trace(pipe)
        computed = n - k
        stats = srd_teacache_stats(pipe).get("render")
        if stats is not None:
            computed = stats.computed_calls
        srd.disable(pipe)
        predicted = k * steps["sketch"] + computed * render_step
        rows[label] = dict(seconds=seconds, predicted=predicted, roles=trace.roles, saved=trace.guidance_calls_saved)
        results.add(
            table="stacking: end-to-end SRD through the real WanPipeline",
            run=label,
            steps=n,
            switch_step=trace.switch_step,
            renderer_calls_computed=computed,
            seconds=seconds,
            predicted=predicted,
            error=seconds / predicted - 1,
            speedup=n * steps["sketch"] / seconds,
            ideal_speedup=n * steps["sketch"] / predicted,
        )
    free(sketcher, renderer)
    s10 = projected(steps["sketch"], steps["render_cond"], 10)
    off = rows["SRD + guidance-free rendering"]
    error = off["seconds"] / off["predicted"] - 1
    results.notes.append(
        f"bar: projected S(10) at N = 50 with render_guidance='off' = {s10:.2f}x "
        f"({'meets' if s10 >= 3.5 else 'misses'} >= 3.5x)"
    )
    results.notes.append(
        f"bar: end-to-end SRD with render_guidance='off' {error:+.1%} from its prediction "
        f"({'meets' if abs(error) <= 0.05 else 'misses'} within 5%)"
    )
    return {"step_times": steps, "end_to_end": rows, "s10_off": s10}


# -- accelerators on one model -------------------------------------------------------------------
def accelerators(name, model, step, plain_seconds, timer, shapes, results) -> None:
    """TeaCache's saving per skipped step and SageAttention's per-step speedup, on the same inputs.

    Random weights have no realistic step-to-step dynamics, so TeaCache is forced to skip
    (identity polynomial, a huge threshold) and what is measured is what a skipped step
    costs against a computed one; how many steps a trained model skips is TeaCache's own
    figure. SageAttention runs the installed `sageattention` kernel (a CPU stand-in with
    --tiny); its output is compared with the SDPA path on the same inputs.
    """
    from srd_plugin.hooks.sageattention import (
        AttentionKernel,
        apply_sage_attention,
        remove_sage_attention,
        sage_attention_stats,
        sageattention_kernel,
    )
    from srd_plugin.hooks.teacache import (
        TeaCacheConfig,
        apply_teacache,
        remove_teacache,
        reset_teacache,
        teacache_stats,
    )

    apply_teacache(model, TeaCacheConfig(threshold=1e9, coefficients=(1.0, 0.0)))
    computed, skipped = [], []
    try:
        for _ in range(shapes.repeats + 1):  # the first round warms up the skip path
            reset_teacache(model, stats=False)  # fresh cache state, decisions kept for the check below
            computed.append(timer(step))
            skipped.append(timer(step))
        decisions = [c for *_, c in teacache_stats(model).decisions]
    finally:
        remove_teacache(model)
    calls = len(decisions) // (2 * (shapes.repeats + 1))
    expected = ([True] * calls + [False] * calls) * (shapes.repeats + 1)
    t_computed, t_skipped = statistics.median(computed[1:]), statistics.median(skipped[1:])
    results.add(
        table="TeaCache: a skipped step against a computed one (forced skips, random weights)",
        model=name,
        computed_step_s=t_computed,
        skipped_step_s=t_skipped,
        saving_per_skipped_step=1 - t_skipped / t_computed,
        decisions_as_forced=decisions == expected,
    )

    if shapes is TINY:  # a CPU stand-in with SDPA's arithmetic exercises the same route
        kernel = AttentionKernel(
            "sdpa-stand-in",
            torch.nn.functional.scaled_dot_product_attention,
            head_dims=(8, 16),
            device_types=("cpu",),
            dtypes=(torch.float32,),
        )
    else:
        kernel = sageattention_kernel()
    if kernel is None:
        results.notes.append(f"{name}: sageattention is not importable here; SageAttention not measured")
        return
    reference = _first_output(model, step)
    apply_sage_attention(model, kernel=kernel)
    try:
        sage_seconds = median_step(timer, step, shapes.repeats)
        routed = _first_output(model, step)
        route = dict(sage_attention_stats(model))
    finally:
        remove_sage_attention(model)
    error = ((routed.float() - reference.float()).norm() / reference.float().norm()).item()
    results.add(
        table="SageAttention per step (same inputs)",
        model=name,
        sdpa_step_s=plain_seconds,
        sage_step_s=sage_seconds,
        speedup=plain_seconds / sage_seconds,
        rel_error_vs_sdpa=error,
        route=" ".join(f"{k}:{v}" for k, v in sorted(route.items())),
    )


def _first_output(model: torch.nn.Module, step: Callable[[], Any]) -> torch.Tensor:
    """The output of the first model call of one step (captured with a forward hook)."""
    captured: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda module, args, output: captured.append(output[0].detach().clone()))
    try:
        step()
    finally:
        handle.remove()
    return captured[0]


# -- CogVideoX ---------------------------------------------------------------------------------
def cog_step(
    model: torch.nn.Module, shapes: Shapes, device: torch.device, dtype: torch.dtype, batch: int = 2
) -> Callable[[], Any]:
    """One CogVideoX step as CogVideoXPipeline runs it: one call with the CFG batch doubled (batch 1:
    the conditional half alone, what `render_guidance="off"` runs the renderer on)."""
    from diffusers import CogVideoXPipeline

    height, width, frames = shapes.cog_video
    tokens, text_width = shapes.cog_text
    latent_frames = (frames - 1) // 4 + 1
    generator = torch.Generator(device).manual_seed(0)
    hidden = torch.randn(
        (batch, latent_frames, 16, height // 8, width // 8), generator=generator, device=device, dtype=dtype
    )
    text = torch.randn((batch, tokens, text_width), generator=generator, device=device, dtype=dtype)
    rotary = None
    if model.config.use_rotary_positional_embeddings:
        host = SimpleNamespace(vae_scale_factor_spatial=8, transformer=model)
        rotary = CogVideoXPipeline._prepare_rotary_positional_embeddings(host, height, width, latent_frames, device)
    timestep = torch.tensor([500] * batch, device=device)

    def step() -> None:
        with torch.no_grad(), model.cache_context("cond_uncond"):
            model(
                hidden_states=hidden,
                encoder_hidden_states=text,
                timestep=timestep,
                image_rotary_emb=rotary,
                return_dict=False,
            )

    return step


def bench_cogvideox(shapes: Shapes, device: torch.device, dtype: torch.dtype, results: Results) -> dict[str, Any]:
    from diffusers import CogVideoXTransformer3DModel

    timer = Timer(device)
    step_times = {}
    models = {}
    for role, config in zip(("sketch", "render"), shapes.cog):
        model = build(CogVideoXTransformer3DModel, config, device, dtype)
        models[role] = model
        reset_peak(device)
        step = cog_step(model, shapes, device, dtype)
        step_times[role] = median_step(timer, step, shapes.repeats)
        params = sum(p.numel() for p in model.parameters()) / 1e9
        name = f"CogVideoX {'sketcher' if role == 'sketch' else 'renderer'} ({params:.2f}B)"
        results.add(
            table="per-step time (CFG as the pipeline runs it)",
            model=name,
            step_s=step_times[role],
            peak_gib=peak_gib(device),
        )
        accelerators(name, model, step, step_times[role], timer, shapes, results)
    for k in (5, 10, 15, 20):
        results.add(
            table="projected 50-step speedup",
            pair="CogVideoX 5B -> 2B",
            switch_step=k,
            speedup=projected(step_times["sketch"], step_times["render"], k),
        )
    e2e = cog_end_to_end(shapes, device, dtype, models, step_times, results)
    free(*models.values())
    return {"step_times": step_times, **e2e}


def bench_cog_guidance(shapes: Shapes, device: torch.device, dtype: torch.dtype, results: Results) -> dict[str, Any]:
    """CogVideoX 5B -> 2B with `render_guidance="off"`: the 2B's step on the conditional half alone
    (batch 1) against its CFG step (batch 2), and S(k) at N = 50 both ways."""
    from diffusers import CogVideoXTransformer3DModel

    timer = Timer(device)
    times = {}
    for role, config in zip(("sketch", "render"), shapes.cog):
        model = build(CogVideoXTransformer3DModel, config, device, dtype)
        times[role] = median_step(timer, cog_step(model, shapes, device, dtype), shapes.repeats)
        if role == "render":
            times["render_cond"] = median_step(timer, cog_step(model, shapes, device, dtype, batch=1), shapes.repeats)
        free(model)
    labels = {"sketch": "5B, CFG (batch 2)", "render": "2B, CFG (batch 2)", "render_cond": "2B, cond only"}
    for key, label in labels.items():
        results.add(table="CogVideoX guidance-free: step times", model=label, step_s=times[key])
    for guidance, key in (("host", "render"), ("off", "render_cond")):
        row = {f"S({k})": projected(times["sketch"], times[key], k) for k in (5, 8, 10, 15)}
        results.add(table="CogVideoX guidance-free: projected 50-step speedup", render_guidance=guidance, **row)
    return {"step_times": times}


#: the schedulers of the real CogVideoX-5B (DPM, snr_shift_scale 1.0) and 2B (DDIM, 3.0) checkpoints
COG_SCHEDULER = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    clip_sample=False,
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    set_alpha_to_one=True,
    steps_offset=0,
    timestep_spacing="trailing",
)


def cog_end_to_end(shapes, device, dtype, models, step_times, results) -> dict[str, Any]:
    """The real CogVideoXPipeline loop with SRD at a fixed switch and the 5B -> 2B latent alignment on."""
    from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline

    pipe = CogVideoXPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        transformer=models["sketch"],
        scheduler=CogVideoXDPMScheduler(**COG_SCHEDULER, snr_shift_scale=1.0),
    )
    pipe.set_progress_bar_config(disable=True)
    srd.enable(
        pipe,
        models["render"],
        switch="step",
        switch_step=shapes.e2e_switch,
        renderer_scaling_factor=1.15258426,
        renderer_scheduler_config=dict(COG_SCHEDULER, snr_shift_scale=3.0, _class_name="CogVideoXDDIMScheduler"),
    )
    height, width, frames = shapes.cog_video
    tokens, text_width = shapes.cog_text
    generator = torch.Generator(device).manual_seed(0)
    cond = torch.randn((1, tokens, text_width), generator=generator, device=device, dtype=dtype)
    uncond = torch.randn((1, tokens, text_width), generator=generator, device=device, dtype=dtype)
    n, k = shapes.e2e_steps, shapes.e2e_switch

    def call() -> None:
        pipe(
            prompt_embeds=cond,
            negative_prompt_embeds=uncond,
            height=height,
            width=width,
            num_frames=frames,
            num_inference_steps=n,
            guidance_scale=6.0,
            output_type="latent",
            generator=torch.Generator(device).manual_seed(0),
        )

    return timed_against_prediction(pipe, call, "CogVideoXPipeline (aligned)", n, k, step_times, device, results)


# -- report ------------------------------------------------------------------------------------
def markdown(results: Results, command: str) -> str:
    """One markdown table per kind of row (the `table` key), columns in order of appearance."""
    lines = [
        f"GPU benchmark, {datetime.date.today()}, {results.device}, torch {torch.__version__}",
        f"command: `{command}`",
    ]
    tables: dict[str, list[dict[str, Any]]] = {}
    for row in results.rows:
        tables.setdefault(row["table"], []).append(row)
    for name, rows in tables.items():
        keys: list[str] = []
        for row in rows:
            keys += [k for k in row if k not in keys and k != "table"]
        lines += ["", f"**{name}**", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |" for row in rows]
    if results.notes:
        lines += [""] + [f"- {note}" for note in results.notes]
    return "\n".join(lines)


SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "wan": bench_wan,
    "cogvideox": bench_cogvideox,
    "stacking": bench_stacking,
    "cog_guidance": bench_cog_guidance,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (seconds)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table (and a .json) here")
    args = parser.parse_args(argv)
    if args.tiny:
        device, dtype, shapes = torch.device("cpu"), torch.float32, TINY
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --tiny on the CPU")
        device, dtype, shapes = torch.device("cuda"), torch.bfloat16, REAL
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (tiny shapes)"
    results = Results(device=name)
    raw: dict[str, Any] = {}
    for section in args.sections.split(","):
        print(f"[{section}]", flush=True)
        start = time.perf_counter()
        raw[section] = SECTIONS[section](shapes, device, dtype, results)
        print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)
    command = "python benchmarks/gpu.py" + (" --tiny" if args.tiny else "") + f" --sections {args.sections}"
    text = markdown(results, command)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"rows": results.rows, "raw": raw}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
