"""Tiny offline LTX-Video pipelines: a 13B-like sketcher and 2B-like renderers with random weights.

The shapes follow the real pair (LTX-Video 0.9.7 13B: 48 layers, 32 heads x 128; 2B: 28 layers,
32 heads x 64; both 128 latent channels, patch 1x1, caption width 4096, cross-attention width =
model width) scaled down: the renderer is narrower and shallower, shares latent channels, patch
sizes and the caption width. The VAE is diffusers' own test miniature of AutoencoderKLLTXVideo
(8 latent channels; two scaling stages, so 4x spatial and 4x temporal compression where the real
VAE has 32x and 8x).
"""

from __future__ import annotations

from typing import Any

import torch

from . import tiny_t5_encoder, tiny_tokenizer

LTX_LATENT_CHANNELS = 8
LTX_CAPTION_DIM = 32
LTX_TEXT_LENGTH = 16
LTX_STEPS = 6


def ltx_transformer_config(num_layers: int = 2, heads: int = 4, head_dim: int = 8, **overrides: Any) -> dict[str, Any]:
    """Constructor arguments of a tiny LTXVideoTransformer3DModel (cross-attention width = model width, as in LTX)."""
    kwargs: dict[str, Any] = dict(
        in_channels=LTX_LATENT_CHANNELS,
        out_channels=LTX_LATENT_CHANNELS,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        cross_attention_dim=heads * head_dim,
        num_layers=num_layers,
        caption_channels=LTX_CAPTION_DIM,
        qk_norm="rms_norm_across_heads",
    )
    kwargs.update(overrides)
    return kwargs


def tiny_ltx_transformer(seed: int = 0, **config: Any) -> Any:
    """A random-weight LTXVideoTransformer3DModel, 13B-like by default (2 layers, 4 heads x 8)."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    return LTXVideoTransformer3DModel(**ltx_transformer_config(**config)).eval()


def tiny_ltx_renderer(seed: int = 1, **config: Any) -> Any:
    """A 2B-like renderer: one layer, 2 heads x 8 (narrower and shallower than the sketcher)."""
    return tiny_ltx_transformer(seed=seed, **{"num_layers": 1, "heads": 2, "head_dim": 8, **config})


def tiny_ltx_vae(seed: int = 0) -> Any:
    """diffusers' test miniature of AutoencoderKLLTXVideo (4x spatial, 4x temporal compression)."""
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=LTX_LATENT_CHANNELS,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    ).eval()
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return vae


def ltx_scheduler(dynamic: bool = True) -> Any:
    """LTX's scheduler: flow matching with the resolution-dependent (dynamic) shift of the 0.9.x config.
    `LTXConditionPipeline` passes its own timesteps and no `mu`, so it needs `dynamic=False`."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=dynamic,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )


def tiny_ltx_pipeline(kind: str = "t2v", transformer: Any = None, seed: int = 0) -> Any:
    """An offline LTX pipeline: "t2v" (LTXPipeline), "i2v" (LTXImageToVideoPipeline), "condition"."""
    from diffusers import LTXConditionPipeline, LTXImageToVideoPipeline, LTXPipeline

    classes = {"t2v": LTXPipeline, "i2v": LTXImageToVideoPipeline, "condition": LTXConditionPipeline}
    if kind not in classes:
        raise ValueError(f"LTX pipeline kind {kind!r}: choose one of {', '.join(classes)}")
    tokenizer = tiny_tokenizer()
    pipe = classes[kind](
        scheduler=ltx_scheduler(dynamic=kind != "condition"),
        vae=tiny_ltx_vae(seed),
        text_encoder=tiny_t5_encoder(len(tokenizer), d_model=LTX_CAPTION_DIM, seed=seed),
        tokenizer=tokenizer,
        transformer=transformer if transformer is not None else tiny_ltx_transformer(seed=seed),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_ltx_image(seed: int = 0) -> torch.Tensor:
    """A conditioning image: [1, 3, 32, 32] in [0, 1]."""
    return torch.rand((1, 3, 32, 32), generator=torch.Generator().manual_seed(seed + 100))


def tiny_ltx_call_kwargs(
    kind: str = "t2v", num_inference_steps: int = LTX_STEPS, seed: int = 0, **overrides: Any
) -> dict:
    """Arguments for one quick call (32x32, 9 frames, latent output) of a tiny LTX pipeline of `kind`."""
    kwargs: dict[str, Any] = dict(
        prompt="a red circle moving left",
        negative_prompt="blurry",
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=num_inference_steps,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        max_sequence_length=LTX_TEXT_LENGTH,
    )
    if kind == "i2v":
        kwargs["image"] = tiny_ltx_image(seed)
    if kind == "condition":
        from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

        kwargs["conditions"] = [LTXVideoCondition(image=tiny_ltx_image(seed), frame_index=0)]
    kwargs.update(overrides)
    return kwargs


def delta_oracle_ltx(target: torch.Tensor, seed: int = 0) -> Any:
    """An LTX transformer whose forward is the exact flow velocity for data equal to `target`.

    If every data latent is x*, then x_t = (1 - sigma) x* + sigma eps and the exact velocity is
    v = eps - x* = (x_t - x*) / sigma (0 where sigma = 0: conditioning tokens). Any correct x0
    rule then returns x* on every token being denoised, whatever the step, the shift or the
    per-token timesteps. `target` broadcasts against the packed latents [B, seq, C] (a
    per-channel vector of shape [C] does for every LTX layout).
    """
    from diffusers import LTXVideoTransformer3DModel
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    class DeltaOracleLTX(LTXVideoTransformer3DModel):
        def forward(
            self,
            hidden_states: torch.Tensor,
            encoder_hidden_states: Any,
            timestep: torch.Tensor,
            *args: Any,
            return_dict: bool = True,
            **kwargs: Any,
        ) -> Any:
            x = hidden_states.double()
            sigma = timestep.double() / 1000.0
            sigma = sigma.reshape(sigma.shape[0], -1, 1)  # [B] -> [B, 1, 1]; [B, seq] -> [B, seq, 1]
            safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
            v = torch.where(sigma > 0, (x - self.oracle_target) / safe, torch.zeros_like(x)).to(hidden_states.dtype)
            return Transformer2DModelOutput(sample=v) if return_dict else (v,)

    torch.manual_seed(seed)
    model = DeltaOracleLTX(**ltx_transformer_config(num_layers=1)).eval()
    model.register_buffer("oracle_target", target.double(), persistent=False)
    return model
