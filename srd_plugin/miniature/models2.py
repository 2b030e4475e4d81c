"""Architectures of the second miniature world's models (see `world2` and docs/miniature.md).

Everything is a real diffusers component, as in the first world: an `AutoencoderKLWan` of the
Wan2.1 kind (no pixel patches) that compresses 17x64x64 pixels 4x in space and 4x in time to
5x16x16 latents of 8 channels (48, folded to 8), and `WanTransformer3DModel`s with patch (1, 4, 4): 5x4x4 = 80
video tokens, each 16x16 pixels of 4 frames, as in the first design.

One rule ties the two together: a transformer's width must be at least its token's dimension
(latent channels x patch volume; Wan2.1 has 64 -> 1536 or 5120). Its last layer maps the width
to the token linearly, so a narrower model can only move the latents inside a subspace of that
width, and the noise outside it is never removed: the first transformers of this design (width
64, 48 channels, 768 numbers a token) ended every generation with 0.92 of the starting noise's
power still in the 704 dimensions they could not reach (true latents hold 0.036 there). Eight
channels keep what the 48 carried (their top 8 principal components held 96% of the power) and
make the token 128 wide, the transformers' width. The VAE is trained with 48 channels and then
folded onto its latents' top 8 principal components (`fold`): one trained with 8 from the start
lost objects and patterns.

A first VAE of the Wan2.2 kind (8x in space, 48 channels) kept the layout and lost every pattern
(docs/miniature.md, "Second design"): a latent cell of 8x8 pixels is wider than the patterns'
period, and the decoder must then synthesise the grating inside it; a 4x4 cell only has to
interpolate it. The renderer has the sketcher's width and a quarter of its blocks; the low-noise
specialist has the renderer's size and sees only the noise levels it serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..testing import WanSize, tiny_wan_transformer
from .models import GUIDANCE_SCALE, MAX_SEQUENCE_LENGTH
from .world2 import HEIGHT, NUM_FRAMES, WIDTH

#: the latents the transformers see: the folded VAE's (`fold`), a token of 8 x 16 = 128 numbers
LATENT_CHANNELS = 8
#: the VAE is trained with 48 channels (Wan2.2's count), then folded onto its top 8 principal components
TRAINED_CHANNELS = 48
SPATIAL_FACTOR = 4
TEMPORAL_FACTOR = 4
#: the transformers' patch: 4x4 latent cells (16x16 pixels) per token keeps the token count at 80
PATCH_SIZE = (1, 4, 4)
#: the second world is sampled with more steps than the first: its detail needs them
DEFAULT_STEPS = 30

#: width 128 = 8 channels x 16 latent cells: every latent direction is within the model's reach
SKETCHER_SIZE = WanSize(num_layers=8, num_attention_heads=2, attention_head_dim=64, ffn_dim=256)
RENDERER_SIZE = WanSize(num_layers=2, num_attention_heads=2, attention_head_dim=64, ffn_dim=256)
SPECIALIST_SIZE = RENDERER_SIZE


def build_vae(base_dim: int = 24, seed: int = 0) -> Any:
    """A tiny Wan2.1-style AutoencoderKLWan, as trained: 17x64x64 pixels -> 5x16x16 latents of 48 channels
    (`train2` folds it to `LATENT_CHANNELS` afterwards).

    It is fully convolutional (and causal in time), so it trains on small crops (`train2` uses 9
    frames of 16x16: a period of the patterns fits, and three latent frames show the decoder its
    steady causal state; 5-frame crops left every frame after the fifth miscoloured)
    and encodes whole clips at the same cost per pixel.
    """
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=base_dim,
        z_dim=TRAINED_CHANNELS,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[True, True],
        is_residual=False,
        patch_size=None,
        in_channels=3,
        out_channels=3,
        scale_factor_spatial=SPATIAL_FACTOR,
        scale_factor_temporal=TEMPORAL_FACTOR,
        latents_mean=[0.0] * TRAINED_CHANNELS,
        latents_std=[1.0] * TRAINED_CHANNELS,
    )


def token_dimension() -> int:
    """How many numbers one video token carries: latent channels x the patch's latent cells."""
    return LATENT_CHANNELS * PATCH_SIZE[0] * PATCH_SIZE[1] * PATCH_SIZE[2]


def build_transformer(size: WanSize, seed: int = 0) -> Any:
    """A freshly initialised transformer of the second world, in training mode.

    Refuses a width below `token_dimension()`: such a model cannot remove the noise outside the
    subspace its last layer spans (the module docstring gives the measurement).
    """
    width = size.num_attention_heads * size.attention_head_dim
    if width < token_dimension():
        raise ValueError(
            f"a second-world transformer needs a width (heads x head dim) of at least {token_dimension()} "
            f"({LATENT_CHANNELS} latent channels x {PATCH_SIZE} patch), got {width}: widen it or shrink the patch"
        )
    return tiny_wan_transformer(
        size,
        seed=seed,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        patch_size=PATCH_SIZE,
        freq_dim=64,
    ).train()


def load_second_pipeline(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(WanPipeline with the sketcher, {"renderer": ..., "specialist": ...}) from a folder `train2` wrote.

    Nothing of the second world ships in the package yet (docs/miniature.md says why), so `path`
    is required: the `result/` folder of a `train2` work folder.
    """
    from diffusers import WanPipeline, WanTransformer3DModel

    root = Path(path)
    if not (root / "pipeline" / "model_index.json").exists():
        raise FileNotFoundError(
            f"no second-world pipeline in {root}: expected pipeline/model_index.json "
            "(train one with `python -m srd_plugin.miniature.train2 --work DIR`, then pass DIR/result)"
        )
    pipe = WanPipeline.from_pretrained(root / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    others = {
        role: WanTransformer3DModel.from_pretrained(root / role).eval()
        for role in ("renderer", "specialist")
        if (root / role / "config.json").exists()
    }
    return pipe, others


def call_kwargs(
    prompt: str, seed: int = 0, num_inference_steps: int = DEFAULT_STEPS, output_type: str = "np"
) -> dict[str, Any]:
    """The arguments of one generation in the second world (the size and text length it is trained for)."""
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
