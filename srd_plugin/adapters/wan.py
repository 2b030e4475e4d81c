"""Adapter for diffusers' Wan pipelines: Wan2.1 / Wan2.2 text-to-video, video-to-video, VACE and image-to-video.

Wan 14B and 1.3B share the VAE, the umT5 text encoder and the flow-matching
parametrization, so the renderer takes the host's arguments unchanged and its velocity
prediction is used as is. Each model computes its own rotary embeddings from its own
config inside `forward`, so head counts and head dims may differ freely.

CFG: the pipelines call the transformer twice per step (cond, uncond) under
`cache_context("cond")` / `cache_context("uncond")`; the runtime keeps both calls of a
step on one model, and with `render_guidance="off"` serves the uncond call of a render step
with the cond call's output (`cfg_layout`).

What each pipeline adds (see docs/adapters.md):

* **WanVideoToVideoPipeline**: `strength` runs only the tail of the schedule; the runtime sizes
  the run by the loop's first timestep (`Adapter.loop_timestep`), so switch steps, the trace
  and x0 follow the steps the loop really runs.
* **Wan2.2 A14B** (`transformer_2` with `boundary_ratio`): the host's own expert switch stays
  as it is; the renderer replaces *both* experts from its switch step on (the router sits on
  both, `routed_modules`). The adaptive policy observes and may switch only from the
  boundary on, on the low-noise expert's predictions (`first_observed_step`): before it the
  x0 predictions come from another model, and a switch there would skip the low-noise expert
  on the strength of the high-noise expert's settling.
* **WanVACEPipeline**: control video, masks and reference images reach the renderer as
  `control_hidden_states`; the renderer must be a VACE transformer with the same control
  channels. `control_hidden_states_scale` has one entry per VACE layer of the sketcher; a
  renderer with another number of VACE layers gets, for each of its VACE layers, the scale
  of the sketcher's VACE layer nearest in relative depth (a single `conditioning_scale`, the
  usual case, stays that value everywhere).
* **WanImageToVideoPipeline**: a renderer must take the same input channels (latent + mask +
  image condition) and the same image embedding (CLIP width, Wan2.1), else it is refused
  with each mismatch named. No small Wan I2V checkpoint is published today.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import UnsupportedPipelineError
from .base import TWO_CALLS, CFGLayout, FamilyAdapter, config_mismatches, dit_macs

if TYPE_CHECKING:  # pragma: no cover - types only
    from ..runtime import Session

#: config entries that must agree between sketcher and renderer, with what they mean
WAN_MUST_MATCH = {
    "in_channels": "latent channels",
    "out_channels": "output channels",
    "patch_size": "patch size",
    "text_dim": "text embedding width",
    "image_dim": "image embedding width (I2V models)",
    "pos_embed_seq_len": "image embedding positions (first-last-frame models)",
}

#: VACE entries that must agree as well
VACE_MUST_MATCH = {"vace_in_channels": "VACE control channels (vace_in_channels)"}

PIPELINE_CLASSES = ("WanPipeline", "WanVideoToVideoPipeline", "WanVACEPipeline", "WanImageToVideoPipeline")


class WanAdapter(FamilyAdapter):
    name = "wan"
    pipeline_classes = PIPELINE_CLASSES
    transformer_class_name = "WanTransformer3DModel"
    must_match = WAN_MUST_MATCH
    renderer_example = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    cfg_layout = CFGLayout(calls=TWO_CALLS, cond_context="cond", uncond_context="uncond")

    def check_pipeline(self, pipe: Any) -> None:
        if getattr(pipe, "transformer", None) is None:
            reason = "the pipeline has no transformer"
            if getattr(pipe, "transformer_2", None) is not None:
                reason += " (only transformer_2): SRD sketches with `transformer`, the high-noise expert; load it too"
            raise UnsupportedPipelineError(pipe, list(self.pipeline_classes), reason=reason)

    def routed_modules(self, pipe: Any) -> tuple[torch.nn.Module, ...]:
        """Both Wan2.2 experts: from the switch step on the renderer takes whichever one the host calls."""
        second = getattr(pipe, "transformer_2", None)
        return (pipe.transformer,) if second is None else (pipe.transformer, second)

    def first_observed_step(self, pipe: Any, timesteps: list[float], num_train_timesteps: int) -> int:
        """Wan2.2: the first step of the low-noise expert (the host's own rule, t < boundary_ratio x T)."""
        if getattr(pipe, "transformer_2", None) is None or pipe.config.get("boundary_ratio") is None:
            return 0
        boundary = pipe.config.boundary_ratio * num_train_timesteps
        return next((i for i, t in enumerate(timesteps) if t < boundary), len(timesteps))

    def compatibility_problems(self, sketcher: torch.nn.Module, renderer: torch.nn.Module) -> list[str]:
        """A VACE sketcher (another class) needs a VACE renderer with the same control channels."""
        from diffusers import WanVACETransformer3DModel

        if not isinstance(sketcher, WanVACETransformer3DModel):
            return super().compatibility_problems(sketcher, renderer)
        if not isinstance(renderer, WanVACETransformer3DModel):
            return [
                f"model family: the sketcher is a WanVACETransformer3DModel (it takes the control video), the "
                f"renderer a {type(renderer).__name__}; pass a VACE transformer "
                "(e.g. Wan-AI/Wan2.1-VACE-1.3B-diffusers)"
            ]
        must_match = {**self.must_match, **VACE_MUST_MATCH}
        return config_mismatches(sketcher, renderer, must_match) + self.extra_problems(sketcher, renderer)

    def extra_problems(self, sketcher: torch.nn.Module, renderer: torch.nn.Module) -> list[str]:
        """The image key/value projection present in both or neither (its width is each model's own
        inner width, so only its presence must match)."""
        ours, theirs = sketcher.config.added_kv_proj_dim is not None, renderer.config.added_kv_proj_dim is not None
        if ours == theirs:
            return []
        return [
            "image key/value projection (added_kv_proj_dim): the sketcher "
            f"{'has' if ours else 'has none'}, the renderer {'has' if theirs else 'has none'}; the renderer must "
            "attend to the image embedding exactly when the sketcher does"
        ]

    def render(self, session: Session, call: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        scale = kwargs.get("control_hidden_states_scale")
        if isinstance(scale, torch.Tensor):
            scale = vace_scale_for(session.sketcher, session.renderer, scale)
            kwargs = {**kwargs, "control_hidden_states_scale": scale}
        return super().render(session, call, args, kwargs)

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


def vace_scale_for(sketcher: torch.nn.Module, renderer: torch.nn.Module, scale: torch.Tensor) -> torch.Tensor:
    """The host's per-VACE-layer scale (sized for the sketcher) resized for the renderer's VACE layers.

    Same number of layers: unchanged. Otherwise each renderer VACE layer takes the scale of the
    sketcher VACE layer nearest in relative depth (layer index / number of layers); ties go to
    the shallower one. A uniform scale stays uniform.
    """
    ours, theirs = list(sketcher.config.vace_layers), list(renderer.config.vace_layers)
    if len(theirs) == len(ours) or scale.numel() != len(ours):
        return scale
    depth_ours = [layer / sketcher.config.num_layers for layer in ours]
    picks = [
        min(range(len(ours)), key=lambda j, d=layer / renderer.config.num_layers: (abs(depth_ours[j] - d), j))
        for layer in theirs
    ]
    return scale[torch.tensor(picks, device=scale.device)]


ADAPTER = WanAdapter()
srd_get_adapter = ADAPTER.srd_get_adapter
srd_supported_pipelines = ADAPTER.srd_supported_pipelines
srd_check_setup = ADAPTER.srd_check_setup
