"""A tiny offline CogVideoXPipeline for the accelerator tests (random weights, CPU, no downloads).

Kept with these tests: the CogVideoX SRD adapter brings its own test kit; TeaCache and
SageAttention only need a plain pipeline and transformer here.
"""

from __future__ import annotations

from typing import Any

import torch

from srd_plugin.testing import tiny_tokenizer

TEXT_DIM = 32
MAX_TEXT_TOKENS = 16


def tiny_cogvideox_transformer(num_layers: int = 2, heads: int = 2, head_dim: int = 16, seed: int = 0) -> Any:
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=TEXT_DIM,
        num_layers=num_layers,
        sample_width=2,
        sample_height=2,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=MAX_TEXT_TOKENS,
        use_rotary_positional_embeddings=True,
    ).eval()


def tiny_cogvideox_pipeline(seed: int = 0, transformer: Any = None) -> Any:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    ).eval()
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    ).eval()
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer if transformer is not None else tiny_cogvideox_transformer(seed=seed),
        scheduler=CogVideoXDDIMScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cogvideox_call_kwargs(num_inference_steps: int = 8, seed: int = 0) -> dict[str, Any]:
    return dict(
        prompt="a red circle moving left",
        negative_prompt="blurry",
        height=16,
        width=16,
        num_frames=9,
        num_inference_steps=num_inference_steps,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        max_sequence_length=MAX_TEXT_TOKENS,
    )
