"""Architectures of the miniature pair and the loader of the shipped weights.

The sketcher and the renderer are both `WanTransformer3DModel`s in the same latent space
(16 channels, patch (1, 2, 2): 5x4x4 = 80 video tokens) with the same text width, so
`srd_plugin.enable` accepts the pair like Wan2.1 14B / 1.3B. The renderer has the
sketcher's width but two blocks instead of twelve: two cross-attention layers are all the
text conditioning it gets, and a step costs about a quarter (the tiny models' fixed per-call
costs keep the ratio below the 6x of their block counts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..testing import TEXT_DIM, WanSize, tiny_text_encoder, tiny_tokenizer, tiny_wan_transformer
from .dataset import HEIGHT, NUM_FRAMES, WIDTH

LATENT_CHANNELS = 16
FLOW_SHIFT = 3.0
MAX_SEQUENCE_LENGTH = 16
GUIDANCE_SCALE = 5.0
DEFAULT_STEPS = 20

SKETCHER_SIZE = WanSize(num_layers=12, num_attention_heads=2, attention_head_dim=32, ffn_dim=256)
RENDERER_SIZE = WanSize(num_layers=2, num_attention_heads=2, attention_head_dim=32, ffn_dim=256)

#: where the trained pair ships inside the package: `pipeline/` (a WanPipeline folder) and `renderer/`
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def build_tokenizer() -> Any:
    """The in-memory T5-style tokenizer of `srd_plugin.testing` (it knows every word of the world)."""
    return tiny_tokenizer()


def build_text_encoder(vocab_size: int, seed: int = 0) -> Any:
    """The frozen random one-layer UMT5 encoder (never trained: the transformers learn to read it)."""
    return tiny_text_encoder(vocab_size, d_model=TEXT_DIM, seed=seed)


def build_vae(seed: int = 0) -> Any:
    """A tiny AutoencoderKLWan of the Wan2.2 kind: 2x2 pixel patches, residual (space-to-depth) shortcuts,
    one 2x spatial and 2x temporal downsampling, 16 channels: 9x32x32 pixels -> 5x8x8 latents."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=16,
        z_dim=LATENT_CHANNELS,
        dim_mult=[2, 2],
        num_res_blocks=1,
        temperal_downsample=[True],
        is_residual=True,
        patch_size=2,
        in_channels=12,
        out_channels=12,
        scale_factor_spatial=4,
        scale_factor_temporal=2,
        latents_mean=[0.0] * LATENT_CHANNELS,
        latents_std=[1.0] * LATENT_CHANNELS,
    )


def build_transformer(size: WanSize, seed: int = 0) -> Any:
    """A freshly initialised miniature transformer, in training mode: the test kit's Wan block layout
    on the miniature's latent channels, with a 64-wide timestep embedding."""
    return tiny_wan_transformer(
        size, seed=seed, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, freq_dim=64
    ).train()


def make_scheduler() -> Any:
    """Wan's own sampler: UniPC in flow-prediction mode with a shift of 3 (as for Wan at 480p)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT)


def load_miniature_pipeline(path: str | Path | None = None) -> tuple[Any, Any]:
    """(WanPipeline with the sketcher, renderer) of the trained miniature pair, on the CPU in float32.

    Both come through the ordinary `from_pretrained` code path from the package's data
    folder (or `path`, a folder with `pipeline/` and `renderer/` as `train.py` writes it).
    Call the pipeline with `miniature_call_kwargs(...)`: the models were trained for
    32x32 pixels, 9 frames and 16 text tokens.
    """
    from diffusers import WanPipeline, WanTransformer3DModel

    root = Path(path) if path is not None else WEIGHTS_DIR
    if not (root / "pipeline" / "model_index.json").exists() or not (root / "renderer" / "config.json").exists():
        raise FileNotFoundError(
            f"no miniature pair in {root}: expected pipeline/model_index.json and renderer/config.json "
            "(train one with `python -m srd_plugin.miniature.train --work DIR --export`)"
        )
    pipe = WanPipeline.from_pretrained(root / "pipeline")
    renderer = WanTransformer3DModel.from_pretrained(root / "renderer").eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe, renderer


def miniature_call_kwargs(
    prompt: str, seed: int = 0, num_inference_steps: int = DEFAULT_STEPS, output_type: str = "np"
) -> dict[str, Any]:
    """The arguments of one generation with the miniature pair (the size and text length it was trained for)."""
    return dict(
        prompt=prompt,
        negative_prompt="",
        height=HEIGHT,
        width=WIDTH,
        num_frames=NUM_FRAMES,
        num_inference_steps=num_inference_steps,
        guidance_scale=GUIDANCE_SCALE,
        generator=torch.Generator().manual_seed(seed),
        output_type=output_type,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
