"""Adapter for diffusers' WanPipeline (Wan2.1 text-to-video: 14B sketches, 1.3B renders).

Wan 14B and 1.3B share the VAE, the umT5 text encoder and the flow-matching
parametrization, so the renderer takes the host's arguments unchanged and its velocity
prediction is used as is. Each model computes its own rotary embeddings from its own
config inside `forward`, so head counts and head dims may differ freely.

CFG: the pipeline calls the transformer twice per step (cond, uncond) under
`cache_context("cond")` / `cache_context("uncond")`; the runtime keeps both calls of a
step on one model, and with `render_guidance="off"` serves the uncond call of a render step
with the cond call's output (`cfg_layout`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UnsupportedPipelineError
from ..hookspecs import hookimpl
from .base import TWO_CALLS, Adapter, CFGLayout, config_mismatches, dit_macs

#: config entries that must agree between sketcher and renderer, with what they mean
WAN_MUST_MATCH = {
    "in_channels": "latent channels",
    "out_channels": "output channels",
    "patch_size": "patch size",
    "text_dim": "text embedding width",
    "image_dim": "image embedding width (I2V models)",
    "added_kv_proj_dim": "image key/value projection (I2V models)",
}


class WanAdapter(Adapter):
    name = "wan"
    pipeline_classes = ("WanPipeline",)
    cfg_layout = CFGLayout(calls=TWO_CALLS, cond_context="cond", uncond_context="uncond")

    def check_pipeline(self, pipe: Any) -> None:
        if getattr(pipe, "transformer_2", None) is not None:
            raise UnsupportedPipelineError(
                pipe,
                list(self.pipeline_classes),
                reason=(
                    "this WanPipeline already has a transformer_2 (a Wan2.2 mixture of experts, switched by "
                    "boundary_ratio); SRD serves single-transformer Wan2.1 pipelines. Load the pipeline without "
                    "transformer_2, or use diffusers' own boundary_ratio switch"
                ),
            )
        if getattr(pipe, "transformer", None) is None:
            raise UnsupportedPipelineError(pipe, list(self.pipeline_classes), reason="the pipeline has no transformer")

    def compatibility_problems(self, sketcher: torch.nn.Module, renderer: torch.nn.Module) -> list[str]:
        from diffusers import WanTransformer3DModel

        if not isinstance(renderer, WanTransformer3DModel):
            return [
                f"model family: the sketcher is a WanTransformer3DModel, the renderer a {type(renderer).__name__}; "
                "pass a Wan2.1 transformer (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)"
            ]
        return config_mismatches(sketcher, renderer, WAN_MUST_MATCH)

    def flops_per_call(self, model: torch.nn.Module, arguments: dict[str, Any]) -> float | None:
        """Video tokens after the (t, h, w) patch, text tokens of `encoder_hidden_states`."""
        return wan_macs(model.config, arguments["hidden_states"].shape, arguments["encoder_hidden_states"].shape[1])


def wan_macs(config: Any, latent_shape: tuple[int, ...], text_tokens: int) -> float:
    """Multiply-adds of one WanTransformer3DModel call on latents [B, C, F, H, W]."""
    batch, _, frames, height, width = latent_shape
    pt, ph, pw = config.patch_size
    tokens = (frames // pt) * (height // ph) * (width // pw)
    dim = config.num_attention_heads * config.attention_head_dim
    return dit_macs(config.num_layers, dim, config.ffn_dim, tokens, text_tokens, joint=False, batch=batch)


_ADAPTER = WanAdapter()


@hookimpl
def srd_get_adapter(pipe: Any) -> Adapter | None:
    from diffusers import WanPipeline

    return _ADAPTER if isinstance(pipe, WanPipeline) else None


@hookimpl
def srd_supported_pipelines() -> list[str]:
    return list(WanAdapter.pipeline_classes)


@hookimpl
def srd_check_setup(session: Any) -> list[str] | None:
    """Refuse the alignment fields: Wan 14B and 1.3B share one VAE and one flow parametrization,
    so there is nothing to align, and a value given here would silently do nothing.
    (`align` is accepted either way: for Wan both "auto" and "none" are the identity.)"""
    if session.adapter is not _ADAPTER:
        return None
    return [
        f"SRDConfig.{name}={getattr(session.config, name)!r} applies to models with different latent "
        "parametrizations (CogVideoX); Wan2.1 14B and 1.3B share the VAE and the flow schedule, so drop it"
        for name in ("renderer_scaling_factor", "renderer_scheduler_config")
        if getattr(session.config, name) is not None
    ]
