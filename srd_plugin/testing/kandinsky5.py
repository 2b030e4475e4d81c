"""Tiny offline Kandinsky 5.0 Video pipelines (T2V, I2V): a Pro-like sketcher and Lite-like renderers.

The real pair (kandinskylab/kandinsky-5 configs): Pro 60 visual blocks, width 4096 (32 heads x
128), time width 1024; Lite 32 blocks, width 1792 (28 x 64), time width 512; both 16 latent
channels (HunyuanVideo VAE), patch (1, 2, 2), Qwen2.5-VL 3584 + CLIP 768 text widths,
`visual_cond=True`. Scaled down here; the VAE is diffusers' test miniature of
AutoencoderKLHunyuanVideo.

The text encoders are not built: Qwen2.5-VL's processor cannot be made offline, so calls pass
the prompt embeddings (`prompt_embeds_qwen`, `prompt_embeds_clip`, `prompt_cu_seqlens` and the
negative ones), exactly what the pipeline would hand its transformer after encoding.
"""

from __future__ import annotations

from typing import Any

import torch

K5_LATENT_CHANNELS = 16
K5_QWEN_DIM = 32
K5_CLIP_DIM = 16
K5_TEXT_LENGTH = 6
K5_STEPS = 6


def kandinsky5_transformer_config(
    model_dim: int = 32, axes_dims: tuple[int, int, int] = (4, 6, 6), blocks: int = 2, **overrides: Any
) -> dict[str, Any]:
    """Constructor arguments of a tiny Kandinsky5Transformer3DModel (head dim = sum(axes_dims))."""
    kwargs: dict[str, Any] = dict(
        in_visual_dim=K5_LATENT_CHANNELS,
        out_visual_dim=K5_LATENT_CHANNELS,
        in_text_dim=K5_QWEN_DIM,
        in_text_dim2=K5_CLIP_DIM,
        time_dim=16,
        patch_size=(1, 2, 2),
        model_dim=model_dim,
        ff_dim=2 * model_dim,
        num_text_blocks=1,
        num_visual_blocks=blocks,
        axes_dims=axes_dims,
        visual_cond=True,
        attention_type="regular",
    )
    kwargs.update(overrides)
    return kwargs


def tiny_kandinsky5_transformer(seed: int = 0, **config: Any) -> Any:
    """A random-weight Kandinsky5Transformer3DModel, Pro-like by default (2 blocks, 2 heads x 16)."""
    from diffusers import Kandinsky5Transformer3DModel

    torch.manual_seed(seed)
    return Kandinsky5Transformer3DModel(**kandinsky5_transformer_config(**config)).eval()


def tiny_kandinsky5_renderer(seed: int = 1, **config: Any) -> Any:
    """A Lite-like renderer: one block, width 16 (2 heads x 8), other rotary axes."""
    return tiny_kandinsky5_transformer(seed=seed, **{"model_dim": 16, "axes_dims": (2, 2, 4), "blocks": 1, **config})


def tiny_hunyuan_vae(seed: int = 0) -> Any:
    """diffusers' test miniature of AutoencoderKLHunyuanVideo (16 latent channels, 8x spatial, 4x temporal)."""
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(seed)
    return AutoencoderKLHunyuanVideo(
        act_fn="silu",
        block_out_channels=[8, 8, 8, 8],  # four blocks: the real 8x spatial, 4x temporal compression
        down_block_types=["HunyuanVideoDownBlock3D"] * 4,
        in_channels=3,
        latent_channels=K5_LATENT_CHANNELS,
        layers_per_block=1,
        mid_block_add_attention=False,
        norm_num_groups=4,
        out_channels=3,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        up_block_types=["HunyuanVideoUpBlock3D"] * 4,
    ).eval()


def tiny_kandinsky5_pipeline(kind: str = "t2v", transformer: Any = None, seed: int = 0) -> Any:
    """An offline Kandinsky5T2VPipeline ("t2v") or Kandinsky5I2VPipeline ("i2v"), without text encoders."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5I2VPipeline, Kandinsky5T2VPipeline

    classes = {"t2v": Kandinsky5T2VPipeline, "i2v": Kandinsky5I2VPipeline}
    if kind not in classes:
        raise ValueError(f"Kandinsky 5 pipeline kind {kind!r}: choose one of {', '.join(classes)}")
    pipe = classes[kind](
        transformer=transformer if transformer is not None else tiny_kandinsky5_transformer(seed=seed),
        vae=tiny_hunyuan_vae(seed),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_kandinsky5_call_kwargs(
    kind: str = "t2v", num_inference_steps: int = K5_STEPS, seed: int = 0, **overrides: Any
) -> dict[str, Any]:
    """One quick call (32x32, 5 frames; I2V 21; latent output), prompt embeddings in place of the encoders."""
    generator = torch.Generator().manual_seed(seed + 1000)
    lengths = torch.tensor([0, K5_TEXT_LENGTH], dtype=torch.int32)
    kwargs: dict[str, Any] = dict(
        prompt_embeds_qwen=torch.randn((1, K5_TEXT_LENGTH, K5_QWEN_DIM), generator=generator),
        prompt_embeds_clip=torch.randn((1, K5_CLIP_DIM), generator=generator),
        prompt_cu_seqlens=lengths,
        negative_prompt_embeds_qwen=torch.randn((1, K5_TEXT_LENGTH, K5_QWEN_DIM), generator=generator),
        negative_prompt_embeds_clip=torch.randn((1, K5_CLIP_DIM), generator=generator),
        negative_prompt_cu_seqlens=lengths,
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=num_inference_steps,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )
    if kind == "i2v":
        kwargs["image"] = torch.rand((1, 3, 32, 32), generator=torch.Generator().manual_seed(seed + 100))
        # the I2V post-processing normalises the first 4 latent frames by the following ones: 6 latent frames
        kwargs["num_frames"] = 21
    kwargs.update(overrides)
    return kwargs


def delta_oracle_kandinsky5(target: torch.Tensor, seed: int = 0) -> Any:
    """A Kandinsky 5 transformer whose output is the exact flow velocity for data equal to `target`:
    v = (x_t - x*) / sigma on the latent channels (the first `in_visual_dim` of the channel-last
    input; the rest are the conditioning channels), sigma = timestep / 1000. `target` broadcasts
    against [B, T, H, W, C] (a per-channel vector [C] does)."""
    from diffusers import Kandinsky5Transformer3DModel
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    class DeltaOracleKandinsky5(Kandinsky5Transformer3DModel):
        def forward(
            self,
            hidden_states: torch.Tensor,
            encoder_hidden_states: Any,
            timestep: torch.Tensor,
            *args: Any,
            return_dict: bool = True,
            **kwargs: Any,
        ) -> Any:
            x = hidden_states[..., : self.config.in_visual_dim].double()
            sigma = timestep.double().reshape(-1, 1, 1, 1, 1) / 1000.0
            v = ((x - self.oracle_target) / sigma).to(hidden_states.dtype)
            return Transformer2DModelOutput(sample=v) if return_dict else v

    torch.manual_seed(seed)
    model = DeltaOracleKandinsky5(**kandinsky5_transformer_config(blocks=1)).eval()
    model.register_buffer("oracle_target", target.double(), persistent=False)
    return model
