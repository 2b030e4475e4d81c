"""Adapter for diffusers' Kandinsky 5.0 Video pipelines (Kandinsky5T2VPipeline, Kandinsky5I2VPipeline):
Pro (19B) sketches, Lite (2B) renders.

Both sizes share the HunyuanVideo VAE (16 latent channels), the Qwen2.5-VL (3584) and CLIP
(768) text encoders, the patch size and the `visual_cond` latent layout (channel-last latents
carrying 2C + 1 channels: the latent, the conditioning latent and its mask). The pipeline reads
`visual_cond` and the sparse-attention (NABLA) settings from the sketcher before its loop and
passes `sparse_params` to every call, so those must agree too: two dense models (`attention_type
"regular"`) or two NABLA models with equal settings. Each model computes its rotary tables from
its own `axes_dims` inside `forward`, so widths and head sizes may differ. The renderer is
called as the sketcher is, with `return_dict=True`, and its `Transformer2DModelOutput` is
returned as that object (the pipeline reads `.sample`).

CFG: the host calls the model twice per step (prompt first, then the negative prompt, when
`guidance_scale > 1`) without diffusers' cache contexts, and mixes `uncond + g * (cond - uncond)`;
`render_guidance="off"` recognises the negative call as the second of its step.

x0: `scheduler.step` acts on the latent channels (`latents[..., :C]`; I2V: frames after the
first) with a scalar flow-matching timestep, so x0 = x_t - sigma v at the scheduler's own index.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import TWO_CALLS, CFGLayout, FamilyAdapter, dit_macs

KANDINSKY5_MUST_MATCH = {
    "in_visual_dim": "latent channels",
    "out_visual_dim": "output channels",
    "patch_size": "patch size (the pipeline's sparse-attention geometry is the sketcher's)",
    "in_text_dim": "Qwen2.5-VL text embedding width",
    "in_text_dim2": "CLIP pooled text embedding width",
    "visual_cond": "visual conditioning channels (the pipeline lays out the latents for the sketcher)",
    "attention_type": "attention type (the pipeline builds sparse_params from the sketcher's)",
    "attention_P": "NABLA threshold P",
    "attention_wT": "NABLA temporal window",
    "attention_wH": "NABLA height window",
    "attention_wW": "NABLA width window",
    "attention_add_sta": "NABLA sliding-tile attention",
    "attention_method": "NABLA method",
}


class Kandinsky5Adapter(FamilyAdapter):
    name = "kandinsky5"
    pipeline_classes = ("Kandinsky5T2VPipeline", "Kandinsky5I2VPipeline")
    transformer_class_name = "Kandinsky5Transformer3DModel"
    must_match = KANDINSKY5_MUST_MATCH
    renderer_example = "kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers"
    #: no cache contexts: the negative-prompt call is the second model call of a step
    cfg_layout = CFGLayout(calls=TWO_CALLS, cond_context=None, uncond_context=None)

    def flops_per_call(self, model: torch.nn.Module, arguments: dict[str, Any]) -> float | None:
        """Channel-last latents [B, T, H, W, C] patched by (t, h, w): the visual blocks (self-attention,
        cross-attention to the text, MLP of `ff_dim`) plus the text blocks over the text tokens."""
        config = model.config
        batch, frames, height, width = arguments["hidden_states"].shape[:4]
        pt, ph, pw = config.patch_size
        tokens = (frames // pt) * (height // ph) * (width // pw)
        text_tokens = arguments["encoder_hidden_states"].shape[-2]
        dim, ffn = config.model_dim, config.ff_dim
        visual = dit_macs(config.num_visual_blocks, dim, ffn, tokens, text_tokens, joint=False, batch=batch)
        return visual + dit_macs(config.num_text_blocks, dim, ffn, text_tokens, 0, joint=True, batch=batch)


ADAPTER = Kandinsky5Adapter()
srd_get_adapter = ADAPTER.srd_get_adapter
srd_supported_pipelines = ADAPTER.srd_supported_pipelines
srd_check_setup = ADAPTER.srd_check_setup
