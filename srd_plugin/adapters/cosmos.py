"""Adapter for diffusers' Cosmos Predict2 pipelines (Cosmos2TextToImagePipeline, Cosmos2VideoToWorldPipeline)
and Cosmos Predict2.5 (Cosmos2_5_PredictBasePipeline): 14B sketches, 2B renders.

Both sizes were trained with the same EDM preconditioning, and the pipeline applies it around
the call, not inside the model: the model gets c_in x at t = sigma / (sigma + 1) and its output
F is recombined into the denoiser D = c_skip x + c_out F, then handed to the scheduler as
(x - D) / sigma. So the renderer takes the host's arguments unchanged and its F is recombined
by the host exactly like the sketcher's. Video2World's conditioning frames (their own timestep
from `sigma_conditioning`, and for the negative call other latents and mask) are host-side
inputs as well. Each model computes its own rotary table from its own `rope_scale` (the real
14B and 2B Video2World differ there), so only the entries below must agree.

x0: the scheduler's model_output is (x - D) / sigma with the scheduler's own EDM sigma, so
x0 = x - sigma * model_output is D itself (conditioning frames give their conditioning latents),
which the default `predict_x0` (the scheduler's own flow sigma, `parametrization.py`) computes at the
scheduler's own index.

Cosmos Predict2.5 has no preconditioning: the model gets x at t = sigma (UniPC with flow sigmas)
and its velocity goes to the scheduler (conditioning frames replaced by their exact velocity), so
x0 = x - sigma v, the same rule. Both of its sizes project stacked Qwen2.5-VL states
(`use_crossattn_projection`, 100352 -> 1024).

CFG: the host calls the model twice per step, the prompt first and the negative prompt second,
without diffusers' cache contexts, and mixes `cond + g * (cond - uncond)` after its own
recombination (identical for both calls: Video2World's conditioning frames and mask are the same
for both), so `render_guidance="off"` recognises the negative call as the second of its step.

The two sizes share the Wan2.1 VAE and the text encoder (Predict2: T5-11B, width 1024); a renderer
folder with another VAE is refused.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import TWO_CALLS, CFGLayout, FamilyAdapter, dit_macs

COSMOS_MUST_MATCH = {
    "in_channels": "input channels (Video2World models have one more: the conditioning mask)",
    "out_channels": "latent channels",
    "patch_size": "patch size",
    "text_embed_dim": "text embedding width (T5-11B: 1024)",
    "use_crossattn_projection": "text projection (Cosmos 2.5 models)",
    "crossattn_proj_in_channels": "text projection input width (Cosmos 2.5 models)",
    "img_context_dim_in": "image context width (Cosmos Transfer models)",
}


class CosmosAdapter(FamilyAdapter):
    name = "cosmos"
    pipeline_classes = ("Cosmos2TextToImagePipeline", "Cosmos2VideoToWorldPipeline", "Cosmos2_5_PredictBasePipeline")
    transformer_class_name = "CosmosTransformer3DModel"
    must_match = COSMOS_MUST_MATCH
    renderer_example = "nvidia/Cosmos-Predict2-2B-Text2Image"
    cfg_layout = CFGLayout(calls=TWO_CALLS, cond_context=None, uncond_context=None)  # no cache contexts: by order

    def flops_per_call(self, model: torch.nn.Module, arguments: dict[str, Any]) -> float | None:
        """Video tokens after the (t, h, w) patch, cross-attention to the text tokens (their key/value
        projections counted at the model width, a small term); Predict2.5's text projection per text token."""
        config, (batch, _, frames, height, width) = model.config, arguments["hidden_states"].shape
        pt, ph, pw = config.patch_size
        tokens = (frames // pt) * (height // ph) * (width // pw)
        text_tokens = arguments["encoder_hidden_states"].shape[1]
        dim = config.num_attention_heads * config.attention_head_dim
        macs = dit_macs(config.num_layers, dim, int(config.mlp_ratio * dim), tokens, text_tokens, False, batch)
        if config.get("use_crossattn_projection"):
            macs += batch * text_tokens * config.crossattn_proj_in_channels * config.encoder_hidden_states_channels
        return macs


ADAPTER = CosmosAdapter()
srd_get_adapter = ADAPTER.srd_get_adapter
srd_supported_pipelines = ADAPTER.srd_supported_pipelines
srd_check_setup = ADAPTER.srd_check_setup
