"""The pipelines the diffusers-client suite (`test_diffusers_clients.py`) runs every behaviour on.

A supported pipeline family joins the suite by adding one `CompatCase` to `CASES`: how to build a
fresh plain pipeline (the same weights every time), a renderer with *other* weights that can take
the sketcher's place, and the call arguments. Everything else the suite derives from these.

Two renderer modes are run for each case:

* ``"same"``: a separate module with the sketcher's weights (a deep copy taken before `enable`),
  so the router really routes to another module, yet the output must equal the plain pipeline's;
* ``"other"``: the case's different renderer; the output differs from the plain pipeline's, and
  must equal the universal oracle: the plain pipeline whose `callback_on_step_end` puts the
  renderer in `pipe.transformer` after step k-1.

The different renderer must therefore be a plain swap for its pipeline (no latent alignment, and
for CogVideoX a renderer with rotary embeddings, since the pipeline computes the rotary tables once
from the first transformer's config; for VACE as many VACE layers as the sketcher, since the host
sizes the control scale by it): the swap oracle cannot express an alignment.

A host with several denoisers (Wan2.2: `transformer`, `transformer_2`) names them in `denoisers`:
the oracle swaps them all, as SRD routes them all. Where diffusers itself cannot do a behaviour
for a pipeline, the case declares it in `unsupported` with the plain pipeline's error; the suite
tries the behaviour on the plain pipeline, checks that error, and only then skips it.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from srd_plugin.testing import (
    COGVIDEOX_5B_LIKE,
    RENDERER_SIZE,
    cogvideox_2b_alignment,
    make_cogvideox_scheduler,
    make_scheduler,
    tiny_cogvideox_pipeline,
    tiny_cogvideox_renderer,
    tiny_cogvideox_transformer,
    tiny_wan_pipeline,
    tiny_wan_renderer,
)
from srd_plugin.testing.cosmos import tiny_cosmos_pipeline, tiny_cosmos_renderer
from srd_plugin.testing.kandinsky5 import tiny_kandinsky5_pipeline, tiny_kandinsky5_renderer
from srd_plugin.testing.ltx import ltx_scheduler, tiny_ltx_pipeline, tiny_ltx_renderer
from srd_plugin.testing.wan_family import (
    tiny_cogvideox_v2v_pipeline,
    tiny_skyreels_pipeline,
    tiny_skyreels_transformer,
    tiny_vace_pipeline,
    tiny_vace_renderer,
    tiny_wan22_pipeline,
    tiny_wan_i2v_pipeline,
    tiny_wan_i2v_transformer,
    tiny_wan_v2v_pipeline,
)

MODES = ("same", "other")
CACHES = ("FirstBlockCache", "FasterCache", "PyramidAttentionBroadcast", "MagCache", "TaylorSeer")

#: the behaviours a case may declare unsupported (`CompatCase.unsupported`); the suite checks, for each
#: one declared, that the plain pipeline really fails or lacks it, then skips it for that case
BEHAVIOURS = (
    "save_pretrained",
    "prompt_batch",
    "num_videos_per_prompt",
    "from_pipe",
    "pickle",
    "encode_prompt",
    "vae_tiling",
    "fused_qkv",
    "FirstBlockCache",
    "FasterCache",
    "PyramidAttentionBroadcast",
    "MagCache",
    "TaylorSeer",
)
assert set(CACHES) <= set(BEHAVIOURS)


@dataclass(frozen=True)
class Unsupported:
    """A behaviour the plain pipeline itself does not support, as a case declares it.

    Attributes:
        reason: why diffusers (or the tiny stand-in the case runs on) cannot do it.
        error: a regex the plain pipeline's error must match when the suite tries the behaviour without
            SRD; the suite skips the behaviour for the case only after seeing that error, so a
            declaration cannot hide an SRD defect.
    """

    reason: str
    error: str


@dataclass(frozen=True)
class CompatCase:
    """One supported pipeline family, as the client suite needs it.

    Attributes:
        name: the test id.
        build_pipe: a fresh plain pipeline with seeded weights (two calls give equal weights),
            progress bar off.
        build_other_renderer: a fresh renderer with other weights that the pipeline can use by a
            plain swap of `pipe.transformer`.
        call_kwargs_factory: "module:function" of `f(num_inference_steps, seed=0, **overrides)` giving
            the call arguments (latent output); a reference so that programs run under `srd-run` can
            import it too.
        enable_vae_tiling: turns tiling on with tiles small enough that the tiny VAE really tiles.
        latent_format: the latent layout, as diffusers' FasterCache names it ("BCFHW", "BFCHW").
        batched_cfg: True when the conditional and unconditional branches are one batched call.
        block_pattern: a regex matching the transformer blocks (for TaylorSeer's identifiers).
        schedulers: schedulers the host pipeline runs with, by name, covering each parametrization it
            accepts ("ddim_epsilon" marks a pipeline that takes diffusers' DDIMScheduler).
        aligned_renderer: for a family whose real renderer has another parametrization, a fresh such
            renderer and the `SRDConfig` fields that describe it (the swap oracle cannot express the
            alignment, so these are checked for consistency with SRD itself); None if not needed.
        output_attribute: the output object's field holding the result ("images" for text-to-image).
        per_prompt_argument: the call argument for several outputs per prompt ("num_images_per_prompt").
        denoisers: the pipeline attributes the host calls as its denoiser; the renderer replaces them all.
        same_weights_from: the denoiser a "same" renderer copies: the one the plain host runs at every
            step from the switch on.
        call_overrides: arguments every call of the suite passes on top of the factory's (also under
            `srd-run`, so JSON values only).
        unsupported: behaviour (one of `BEHAVIOURS`) -> why and how the plain pipeline fails at it.
    """

    name: str
    build_pipe: Callable[[], Any]
    build_other_renderer: Callable[[], torch.nn.Module]
    call_kwargs_factory: str
    enable_vae_tiling: Callable[[Any], None]
    latent_format: str
    batched_cfg: bool
    block_pattern: str
    schedulers: dict[str, Callable[[], Any]]
    aligned_renderer: Callable[[], tuple[torch.nn.Module, dict[str, Any]]] | None = None
    output_attribute: str = "frames"
    per_prompt_argument: str = "num_videos_per_prompt"
    denoisers: tuple[str, ...] = ("transformer",)
    same_weights_from: str = "transformer"
    call_overrides: Mapping[str, Any] = field(default_factory=dict)
    unsupported: Mapping[str, Unsupported] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.unsupported) - set(BEHAVIOURS))
        if unknown:
            raise ValueError(f"case {self.name!r}: unknown behaviours {unknown}; choose among {BEHAVIOURS}")

    def call_kwargs(self, steps: int, seed: int = 0, **overrides: Any) -> dict[str, Any]:
        """The factory's arguments (by keyword: the LTX, Cosmos and Kandinsky factories take a `kind` first)."""
        factory = load_reference(self.call_kwargs_factory)
        return factory(num_inference_steps=steps, seed=seed, **{**self.call_overrides, **overrides})

    def output(self, result: Any) -> torch.Tensor:
        """The generated tensor of a pipeline's output object (`frames`, or `images` for an image pipeline)."""
        return getattr(result, self.output_attribute)

    def renderer(self, mode: str, pipe: Any) -> torch.nn.Module:
        """The renderer for `mode`; call it before `enable` (a copy of an enabled sketcher is not wanted)."""
        if mode == "same":
            return copy.deepcopy(getattr(pipe, self.same_weights_from))
        if mode == "other":
            return self.build_other_renderer()
        raise ValueError(f"mode {mode!r}: choose one of {MODES}")


def load_reference(spec: str) -> Callable[..., Any]:
    """The object a "package.module:function" string names."""
    module_name, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _quiet(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _wan_tiling(vae: Any) -> None:
    vae.enable_tiling(
        tile_sample_min_height=16, tile_sample_min_width=16, tile_sample_stride_height=8, tile_sample_stride_width=8
    )


def _cogvideox_v2v_tiling(vae: Any) -> None:
    """Tiles that the input video's tiled encoding fits too (with a quarter overlap its latents come out one
    column wider than the noise)."""
    vae.enable_tiling(
        tile_sample_min_height=16,
        tile_sample_min_width=16,
        tile_overlap_factor_height=0.5,
        tile_overlap_factor_width=0.5,
    )


def _tiles_of_16(vae: Any) -> None:
    """Tiles of 16x16 pixels every 8 (the VAEs of LTX, Kandinsky 5 (HunyuanVideo) and Cosmos (Wan) take these)."""
    vae.enable_tiling(
        tile_sample_min_height=16, tile_sample_min_width=16, tile_sample_stride_height=8, tile_sample_stride_width=8
    )


def _cogvideox_tiling(vae: Any) -> None:
    vae.enable_tiling(
        tile_sample_min_height=16,
        tile_sample_min_width=16,
        tile_overlap_factor_height=0.25,
        tile_overlap_factor_width=0.25,
    )


def _flow() -> dict[str, Callable[[], Any]]:
    """The flow scheduler the Wan-family pipelines run with (UniPC, flow prediction), for the adaptive x0 test."""
    return {"unipc_flow": lambda: make_scheduler("unipc")}


CASES = [
    CompatCase(
        name="wan",
        build_pipe=lambda: _quiet(tiny_wan_pipeline()),
        build_other_renderer=lambda: tiny_wan_renderer(seed=1),
        call_kwargs_factory="srd_plugin.testing:tiny_call_kwargs",
        enable_vae_tiling=_wan_tiling,
        latent_format="BCFHW",
        batched_cfg=False,
        block_pattern=r"blocks\.\d+",
        schedulers={"unipc_flow": lambda: make_scheduler("unipc"), "flow_match_euler": lambda: make_scheduler("euler")},
    ),
    CompatCase(
        name="cogvideox",
        build_pipe=lambda: _quiet(tiny_cogvideox_pipeline()),
        # rotary like the sketcher (the pipeline's rotary tables fit it), half the heads, other weights; two
        # layers, since diffusers' FirstBlockCache needs a first and a last block
        build_other_renderer=lambda: tiny_cogvideox_transformer(COGVIDEOX_5B_LIKE, seed=1, num_attention_heads=2),
        call_kwargs_factory="srd_plugin.testing:tiny_cogvideox_call_kwargs",
        enable_vae_tiling=_cogvideox_tiling,
        latent_format="BFCHW",
        batched_cfg=True,
        block_pattern=r"transformer_blocks\.\d+",
        schedulers={
            "cogvideox_ddim": make_cogvideox_scheduler,
            "ddim_epsilon": lambda: DDIMScheduler(clip_sample=False),
            "ddim_v_prediction": lambda: DDIMScheduler(prediction_type="v_prediction", clip_sample=False),
            "unipc_flow": lambda: make_scheduler("unipc"),
        },
        aligned_renderer=lambda: (tiny_cogvideox_renderer(), cogvideox_2b_alignment()),
    ),
    CompatCase(
        name="wan22",
        build_pipe=tiny_wan22_pipeline,
        build_other_renderer=lambda: tiny_wan_renderer(seed=1),
        call_kwargs_factory="srd_plugin.testing:tiny_call_kwargs",
        enable_vae_tiling=_wan_tiling,
        latent_format="BCFHW",
        batched_cfg=False,
        block_pattern=r"blocks\.\d+",
        schedulers=_flow(),
        denoisers=("transformer", "transformer_2"),
        # the steps from the switch on are all below the boundary (t < 875): the plain host runs the low-noise
        # expert there, so the renderer with the sketcher's weights is a copy of that expert
        same_weights_from="transformer_2",
    ),
    CompatCase(
        name="wan_v2v",
        build_pipe=tiny_wan_v2v_pipeline,
        build_other_renderer=lambda: tiny_wan_renderer(seed=1),
        call_kwargs_factory="srd_plugin.testing.wan_family:tiny_wan_v2v_call_kwargs",
        enable_vae_tiling=_wan_tiling,
        latent_format="BCFHW",
        batched_cfg=False,
        block_pattern=r"blocks\.\d+",
        schedulers=_flow(),
        call_overrides={"strength": 1.0},  # every step runs, so the suite's step counts hold
        unsupported={
            "FirstBlockCache": Unsupported(
                "WanVideoToVideoPipeline calls its transformer outside any `cache_context`, which this cache needs",
                "No cache context is set",
            ),
            "TaylorSeer": Unsupported(
                "WanVideoToVideoPipeline calls its transformer outside any `cache_context`, which this cache needs",
                "No cache context is set",
            ),
        },
    ),
    CompatCase(
        name="wan_vace",
        build_pipe=tiny_vace_pipeline,
        # as many VACE layers as the sketcher: the host sizes the control scale by the sketcher (a plain swap)
        build_other_renderer=lambda: tiny_vace_renderer(vace_layers=(0, 1)),
        call_kwargs_factory="srd_plugin.testing.wan_family:tiny_vace_call_kwargs",
        enable_vae_tiling=_wan_tiling,
        latent_format="BCFHW",
        batched_cfg=False,
        block_pattern=r"blocks\.\d+",
        schedulers=_flow(),
        unsupported={
            "prompt_batch": Unsupported(
                "WanVACEPipeline takes one prompt per call", "list of prompts is not yet supported"
            ),
            "num_videos_per_prompt": Unsupported(
                "WanVACEPipeline makes one video per prompt", "multiple videos per prompt is not yet supported"
            ),
        },
    ),
    CompatCase(
        name="wan_i2v",
        build_pipe=tiny_wan_i2v_pipeline,
        build_other_renderer=lambda: tiny_wan_i2v_transformer(RENDERER_SIZE, seed=1),
        call_kwargs_factory="srd_plugin.testing.wan_family:tiny_i2v_call_kwargs",
        enable_vae_tiling=_wan_tiling,
        latent_format="BCFHW",
        batched_cfg=False,
        block_pattern=r"blocks\.\d+",
        schedulers=_flow(),
    ),
    CompatCase(
        name="skyreels",
        build_pipe=tiny_skyreels_pipeline,
        build_other_renderer=lambda: tiny_skyreels_transformer(RENDERER_SIZE, seed=1),
        call_kwargs_factory="srd_plugin.testing:tiny_call_kwargs",
        enable_vae_tiling=_wan_tiling,
        latent_format="BCFHW",
        batched_cfg=False,
        block_pattern=r"blocks\.\d+",
        schedulers=_flow(),
        unsupported={
            "FirstBlockCache": Unsupported(
                "diffusers registers no SkyReelsV2TransformerBlock for block-level caches",
                "SkyReelsV2TransformerBlock.*not registered",
            ),
            "MagCache": Unsupported(
                "diffusers registers no SkyReelsV2TransformerBlock for block-level caches",
                "SkyReelsV2TransformerBlock.*not registered",
            ),
        },
    ),
    CompatCase(
        name="cogvideox_v2v",
        build_pipe=tiny_cogvideox_v2v_pipeline,
        build_other_renderer=lambda: tiny_cogvideox_transformer(COGVIDEOX_5B_LIKE, seed=1, num_attention_heads=2),
        call_kwargs_factory="srd_plugin.testing.wan_family:tiny_cogvideox_v2v_call_kwargs",
        enable_vae_tiling=_cogvideox_v2v_tiling,
        latent_format="BFCHW",
        batched_cfg=True,
        block_pattern=r"transformer_blocks\.\d+",
        schedulers={"cogvideox_ddim": make_cogvideox_scheduler},
        call_overrides={"strength": 1.0},
        unsupported={
            "prompt_batch": Unsupported(
                "CogVideoXVideoToVideoPipeline encodes one video per call; two prompts index a second video",
                "index 1 is out of bounds",
            ),
        },
    ),
    CompatCase(
        name="ltx",
        build_pipe=tiny_ltx_pipeline,
        # two layers, as diffusers' FirstBlockCache needs a first and a last block; half the heads, other weights
        build_other_renderer=lambda: tiny_ltx_renderer(num_layers=2),
        call_kwargs_factory="srd_plugin.testing.ltx:tiny_ltx_call_kwargs",
        enable_vae_tiling=_tiles_of_16,
        latent_format="BCFHW",
        batched_cfg=True,
        block_pattern=r"transformer_blocks\.\d+",
        schedulers={"flow_match_dynamic": ltx_scheduler},
        unsupported={
            "FasterCache": Unsupported(
                "LTX packs its latents to [batch, tokens, channels]; FasterCache needs a 5-D layout",
                "number of dimensions in the tensor input does not match",
            )
        },
    ),
    CompatCase(
        name="cosmos2_t2i",
        build_pipe=tiny_cosmos_pipeline,
        build_other_renderer=tiny_cosmos_renderer,
        call_kwargs_factory="srd_plugin.testing.cosmos:tiny_cosmos_call_kwargs",
        enable_vae_tiling=_tiles_of_16,
        latent_format="BCFHW",
        batched_cfg=False,
        block_pattern=r"transformer_blocks\.\d+",
        # the scheduler as the pipeline configures it (EDM sigma range, registered by its `__init__`)
        schedulers={"flow_match_karras": lambda: tiny_cosmos_pipeline().scheduler},
        output_attribute="images",
        per_prompt_argument="num_images_per_prompt",
        unsupported={
            "save_pretrained": Unsupported(
                "the stand-in safety checker is a local class that `from_pretrained` cannot import",
                "has no class `PassThroughSafetyChecker`",
            ),
            "encode_prompt": Unsupported(
                "the Cosmos pipelines refuse to be built without their safety checker (`cosmos_guardrail`)",
                "cosmos_guardrail",
            ),
            "from_pipe": Unsupported(
                "the Cosmos pipelines refuse to be built without their safety checker (`cosmos_guardrail`)",
                "cosmos_guardrail",
            ),
            "pickle": Unsupported("the stand-in safety checker is a local class", "Can't pickle local object"),
            "fused_qkv": Unsupported(
                "CosmosTransformer3DModel has no `fuse_qkv_projections`", "no attribute 'fuse_qkv_projections'"
            ),
            **{
                cache: Unsupported("CosmosTransformer3DModel has no `enable_cache` (not a CacheMixin)", "enable_cache")
                for cache in CACHES
            },
        },
    ),
    CompatCase(
        name="kandinsky5_t2v",
        build_pipe=tiny_kandinsky5_pipeline,
        build_other_renderer=tiny_kandinsky5_renderer,
        call_kwargs_factory="srd_plugin.testing.kandinsky5:tiny_kandinsky5_call_kwargs",
        enable_vae_tiling=_tiles_of_16,
        latent_format="BCFHW",
        batched_cfg=False,
        block_pattern=r"visual_transformer_blocks\.\d+",
        schedulers={"flow_match_euler": lambda: FlowMatchEulerDiscreteScheduler(shift=5.0)},
        unsupported={
            "save_pretrained": Unsupported(
                "the tiny pipeline has no text encoders (Qwen2.5-VL's processor cannot be built offline), "
                "and `from_pretrained` requires them",
                "expected .* but only",
            ),
            "encode_prompt": Unsupported(
                "the tiny pipeline has no text encoders (Qwen2.5-VL's processor cannot be built offline)",
                "'NoneType' object has no attribute 'dtype'",
            ),
            "fused_qkv": Unsupported(
                "Kandinsky5Attention has separate projections without `to_q`/`to_k`/`to_v`", "has no attribute 'to_q'"
            ),
            "FasterCache": Unsupported(
                "Kandinsky5T2VPipeline has no `current_timestep` for the cache's timestep callback",
                "no attribute 'current_timestep'",
            ),
            "FirstBlockCache": Unsupported(
                "diffusers registers no Kandinsky 5 block for block-level caches", "hidden_states"
            ),
            "MagCache": Unsupported(
                "diffusers' MagCache finds no Kandinsky 5 block to skip: the plain output is unchanged",
                "skipped nothing",
            ),
            "TaylorSeer": Unsupported(
                "Kandinsky5T2VPipeline calls its transformer outside any `cache_context`", "No cache context is set"
            ),
            "PyramidAttentionBroadcast": Unsupported(
                "Kandinsky5T2VPipeline has no `current_timestep` for the cache's timestep callback",
                "no attribute 'current_timestep'",
            ),
        },
    ),
]
