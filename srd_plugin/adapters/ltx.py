"""Adapter for diffusers' LTX-Video pipelines (13B sketches, 2B renders).

What the host loops do, and why the renderer needs nothing of its own:

* Latents are packed `[B, seq, 128]` tokens; the pipeline reads the patch sizes from the
  sketcher when it is built, so the renderer must have the same `patch_size` /
  `patch_size_t` (and latent channels, and T5-XXL caption width 4096). Widths, depths and head
  sizes may differ: each model computes its rotary table inside `forward` from the
  `num_frames` / `height` / `width` / `rope_interpolation_scale` (or `video_coords`) arguments,
  which depend only on the latent grid.
* CFG is one call on a doubled batch [uncond, cond] under `cache_context("cond_uncond")`: the
  renderer gets the same batch (the runtime mirrors the context onto it). The doubled arguments
  are the latents, the prompt embeddings and their attention mask, the timestep (per token in
  the image-to-video and condition pipelines) and, in `LTXConditionPipeline`, `video_coords`
  (`cfg_layout`: `render_guidance="off"` gives the renderer their conditional half).
* Flow matching (`FlowMatchEulerDiscreteScheduler`, resolution-dependent shift): x0 = x_t -
  sigma v at the scheduler's own index. `LTXImageToVideoPipeline` steps only the tokens after
  frame 0 with a scalar timestep (the same rule on that slice). `LTXConditionPipeline` steps
  `-noise_pred` with `per_token_timesteps`: the scheduler then uses sigma = t_token / 1000 per
  token, so x0 = x_t + sigma_token * model_output (conditioning tokens, sigma 0, give x_t);
  with `denoise_strength` < 1 it runs only the tail of its schedule, which the scheduler's
  own index (not the run's step count) locates.

Only checkpoints sharing the VAE form a pair. diffusers' conversion script
(scripts/convert_ltx_to_diffusers.py) has one VAE config for 0.9.5 and 0.9.7 (and none of its own
for 0.9.8), and other ones for 0.9.0 and 0.9.1: so the 0.9.7 / 0.9.8 13B pairs with a 2B of 0.9.5
or later, never with a 0.9.0 / 0.9.1 2B (equal configs, not checked weights). A renderer given as a
pipeline folder whose VAE config differs from the host's is refused.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import BATCHED, CFGLayout, FamilyAdapter, dit_macs

LTX_MUST_MATCH = {
    "in_channels": "latent channels",
    "out_channels": "output channels",
    "patch_size": "spatial patch size (the pipeline packs latents with the sketcher's)",
    "patch_size_t": "temporal patch size (the pipeline packs latents with the sketcher's)",
    "caption_channels": "text embedding width (T5-XXL: 4096)",
}


class LTXAdapter(FamilyAdapter):
    name = "ltx"
    pipeline_classes = ("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline")
    transformer_class_name = "LTXVideoTransformer3DModel"
    must_match = LTX_MUST_MATCH
    renderer_example = "Lightricks/LTX-Video-0.9.5 (a 2B with the 13B's VAE)"
    cfg_layout = CFGLayout(
        calls=BATCHED,
        batch_arguments=(
            "hidden_states",
            "encoder_hidden_states",
            "timestep",
            "encoder_attention_mask",
            "video_coords",
        ),
        cond_half=1,
    )

    def flops_per_call(self, model: torch.nn.Module, arguments: dict[str, Any]) -> float | None:
        """Packed latents [B, tokens, C]: self-attention over the video tokens, cross-attention to the
        caption (projected to the model width), a 4x MLP (diffusers' FeedForward default)."""
        config = model.config
        batch, tokens = arguments["hidden_states"].shape[:2]
        dim = config.num_attention_heads * config.attention_head_dim
        text_tokens = arguments["encoder_hidden_states"].shape[1]
        return dit_macs(config.num_layers, dim, 4 * dim, tokens, text_tokens, joint=False, batch=batch)

    def predict_x0_from_step(self, scheduler: Any, arguments: dict[str, Any], step_index: int) -> torch.Tensor:
        per_token = arguments.get("per_token_timesteps")
        if per_token is None:
            return super().predict_x0_from_step(scheduler, arguments, step_index)
        # FlowMatchEulerDiscreteScheduler.step with per_token_timesteps: sigma per token, and
        # prev = x + (sigma - sigma_next) * model_output, so model_output = -v and x0 = x + sigma * model_output
        sigma = per_token.double() / scheduler.config.num_train_timesteps
        sample, model_output = arguments["sample"], arguments["model_output"]
        return (sample.double() + sigma[..., None] * model_output.double()).float()


ADAPTER = LTXAdapter()
srd_get_adapter = ADAPTER.srd_get_adapter
srd_supported_pipelines = ADAPTER.srd_supported_pipelines
srd_check_setup = ADAPTER.srd_check_setup
