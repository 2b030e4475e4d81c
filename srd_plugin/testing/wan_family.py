"""Tiny offline builders for the rest of the Wan family and CogVideoX's other pipelines.

Wan2.1 video-to-video, Wan2.2 A14B (two experts), VACE, image-to-video, SkyReels-V2 and
CogVideoX video-to-video / image-to-video, each with random-weight components built in
code (the helpers of `srd_plugin.testing`), so the tests run offline on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from . import (
    LATENT_CHANNELS,
    RENDERER_SIZE,
    SKETCHER_SIZE,
    WanSize,
    make_cogvideox_scheduler,
    make_scheduler,
    tiny_call_kwargs,
    tiny_cogvideox_transformer,
    tiny_cogvideox_vae,
    tiny_t5_encoder,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_wan_config,
    tiny_wan_transformer,
    tiny_wan_vae,
)

#: VACE control channels for the tiny VAE: inactive + reactive latents (2 x z) and the 8x8 mask (64)
VACE_IN_CHANNELS = 2 * LATENT_CHANNELS + 64
#: Wan I2V input channels for the tiny VAE: noisy latent (z) + image-condition latent (z) + 4 mask channels
I2V_IN_CHANNELS = 2 * LATENT_CHANNELS + 4


def tiny_frames(count: int = 9, size: int = 32, seed: int = 0) -> list[Any]:
    """A short random RGB video as PIL images (what the video-to-video and VACE pipelines take)."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(count, size, size, 3, generator=generator) * 255).to(torch.uint8).numpy()
    return [Image.fromarray(frame) for frame in pixels]


def _wan_text_parts(seed: int) -> dict[str, Any]:
    tokenizer = tiny_tokenizer()
    return {"tokenizer": tokenizer, "text_encoder": tiny_text_encoder(len(tokenizer), seed=seed)}


def _quiet(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- Wan2.1 video-to-video ----------------------------------------------------------------------
def tiny_wan_v2v_pipeline(transformer: Any = None, scheduler: str = "unipc", seed: int = 0) -> Any:
    """A WanVideoToVideoPipeline with a tiny sketcher (or the given transformer)."""
    from diffusers import WanVideoToVideoPipeline

    return _quiet(
        WanVideoToVideoPipeline(
            **_wan_text_parts(seed),
            vae=tiny_wan_vae(seed=seed),
            scheduler=make_scheduler(scheduler),
            transformer=transformer if transformer is not None else tiny_wan_transformer(SKETCHER_SIZE, seed=seed),
        )
    )


def tiny_wan_v2v_call_kwargs(num_inference_steps: int = 10, strength: float = 0.6, seed: int = 0, **overrides: Any):
    """One quick video-to-video call: 9 frames of 32x32, latent output."""
    kwargs: dict[str, Any] = dict(
        video=tiny_frames(seed=seed),
        prompt="a red circle moving left",
        negative_prompt="blurry",
        height=32,
        width=32,
        num_inference_steps=num_inference_steps,
        strength=strength,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        max_sequence_length=16,
    )
    kwargs.update(overrides)
    return kwargs


# -- Wan2.2 A14B: two experts ---------------------------------------------------------------------
WAN22_BOUNDARY_RATIO = 0.875  # Wan2.2 T2V A14B (diffusers' conversion script)


def tiny_wan22_pipeline(boundary_ratio: float = WAN22_BOUNDARY_RATIO, scheduler: str = "unipc", seed: int = 0) -> Any:
    """A WanPipeline with a high-noise `transformer` and a low-noise `transformer_2` of the same size."""
    from diffusers import WanPipeline

    return _quiet(
        WanPipeline(
            **_wan_text_parts(seed),
            vae=tiny_wan_vae(seed=seed),
            scheduler=make_scheduler(scheduler),
            transformer=tiny_wan_transformer(SKETCHER_SIZE, seed=seed),
            transformer_2=tiny_wan_transformer(SKETCHER_SIZE, seed=seed + 7),
            boundary_ratio=boundary_ratio,
        )
    )


# -- VACE ------------------------------------------------------------------------------------------
def tiny_vace_transformer(
    size: WanSize = SKETCHER_SIZE, vace_layers: tuple[int, ...] = (0, 2), seed: int = 0, **overrides: Any
) -> Any:
    """A random-weight WanVACETransformer3DModel (the tiny Wan shape plus VACE layers)."""
    from diffusers import WanVACETransformer3DModel

    torch.manual_seed(seed)
    kwargs = tiny_wan_config(size, vace_layers=list(vace_layers), vace_in_channels=VACE_IN_CHANNELS)
    kwargs.update(overrides)
    return WanVACETransformer3DModel(**kwargs).eval()


def tiny_vace_renderer(vace_layers: tuple[int, ...] = (0,), seed: int = 1, **overrides: Any) -> Any:
    """A VACE renderer: half the layers and heads; by default one VACE layer to the sketcher's two."""
    return tiny_vace_transformer(RENDERER_SIZE, vace_layers=vace_layers, seed=seed, **overrides)


def tiny_vace_pipeline(transformer: Any = None, scheduler: str = "unipc", seed: int = 0) -> Any:
    """A WanVACEPipeline with a tiny VACE sketcher (or the given transformer)."""
    from diffusers import WanVACEPipeline

    return _quiet(
        WanVACEPipeline(
            **_wan_text_parts(seed),
            vae=tiny_wan_vae(seed=seed),
            scheduler=make_scheduler(scheduler),
            transformer=transformer if transformer is not None else tiny_vace_transformer(seed=seed),
        )
    )


def tiny_vace_call_kwargs(num_inference_steps: int = 8, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """One quick VACE call: a control video and a mask (right half edited), 9 frames of 32x32."""
    from PIL import Image

    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (16, 0, 32, 32))
    kwargs: dict[str, Any] = dict(
        prompt="a red circle moving left",
        negative_prompt="blurry",
        video=tiny_frames(seed=seed),
        mask=[mask] * 9,
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=num_inference_steps,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        max_sequence_length=16,
    )
    kwargs.update(overrides)
    return kwargs


# -- image-to-video ----------------------------------------------------------------------------------
def tiny_wan_i2v_transformer(size: WanSize = SKETCHER_SIZE, seed: int = 0, **overrides: Any) -> Any:
    """A Wan I2V transformer without CLIP image embedding (the Wan2.2 I2V layout: image condition in the channels)."""
    return tiny_wan_transformer(size, seed=seed, in_channels=I2V_IN_CHANNELS, **overrides)


def tiny_wan_i2v_pipeline(transformer: Any = None, scheduler: str = "unipc", seed: int = 0, clip: bool = False) -> Any:
    """A WanImageToVideoPipeline with a tiny I2V sketcher: Wan2.2 layout (image condition in the channels
    only) by default, Wan2.1 layout (plus a CLIP image embedding, `tiny_clip_image_encoder`) with `clip`."""
    from diffusers import WanImageToVideoPipeline

    parts: dict[str, Any] = {}
    if clip:
        parts["image_encoder"], parts["image_processor"] = tiny_clip_image_encoder(seed)
        if transformer is None:
            transformer = tiny_wan_i2v_clip_transformer(seed=seed)
    return _quiet(
        WanImageToVideoPipeline(
            **_wan_text_parts(seed),
            **parts,
            vae=tiny_wan_vae(seed=seed),
            scheduler=make_scheduler(scheduler),
            transformer=transformer if transformer is not None else tiny_wan_i2v_transformer(seed=seed),
        )
    )


def tiny_wan_i2v_clip_transformer(size: WanSize = SKETCHER_SIZE, seed: int = 0) -> Any:
    """A Wan2.1-style I2V transformer: image condition in the channels and a cross-attended CLIP embedding."""
    inner = size.num_attention_heads * size.attention_head_dim
    return tiny_wan_i2v_transformer(size, seed=seed, image_dim=CLIP_DIM, added_kv_proj_dim=inner)


def tiny_i2v_call_kwargs(num_inference_steps: int = 8, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """One quick image-to-video call from a random 32x32 image (the text-to-video call plus the image)."""
    return tiny_call_kwargs(num_inference_steps, seed, image=tiny_frames(count=1, seed=seed)[0], **overrides)


# -- CogVideoX video-to-video / image-to-video -------------------------------------------------------
def tiny_cogvideox_v2v_pipeline(transformer: Any = None, scheduler: str = "ddim", seed: int = 0) -> Any:
    """A CogVideoXVideoToVideoPipeline, 5B-like by default (rotary, VAE scaling 0.7)."""
    from diffusers import CogVideoXVideoToVideoPipeline

    tokenizer = tiny_tokenizer()
    return _quiet(
        CogVideoXVideoToVideoPipeline(
            tokenizer=tokenizer,
            text_encoder=tiny_t5_encoder(len(tokenizer), seed=seed),
            vae=tiny_cogvideox_vae(seed=seed),
            transformer=transformer if transformer is not None else tiny_cogvideox_transformer(seed=seed),
            scheduler=make_cogvideox_scheduler(kind=scheduler),
        )
    )


def tiny_cogvideox_v2v_call_kwargs(num_inference_steps: int = 10, strength: float = 0.6, seed: int = 0, **overrides):
    """One quick CogVideoX video-to-video call: 9 frames of 32x32, latent output."""
    from . import COGVIDEOX_TEXT_LENGTH

    kwargs: dict[str, Any] = dict(
        video=tiny_frames(seed=seed),
        prompt="a red circle moving left",
        negative_prompt="blurry",
        height=32,
        width=32,
        num_inference_steps=num_inference_steps,
        strength=strength,
        guidance_scale=6.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        max_sequence_length=COGVIDEOX_TEXT_LENGTH,
    )
    kwargs.update(overrides)
    return kwargs


# -- the exactness oracle -------------------------------------------------------------------------------
def tiny_cogvideox_i2v_transformer(seed: int = 0, **overrides: Any) -> Any:
    """A 5B-I2V-like CogVideoX transformer: rotary, noisy latent and image latent side by side (2 x channels)."""
    from . import COGVIDEOX_5B_LIKE

    return tiny_cogvideox_transformer(COGVIDEOX_5B_LIKE, seed=seed, in_channels=2 * LATENT_CHANNELS, **overrides)


def tiny_cogvideox_i2v_pipeline(transformer: Any = None, seed: int = 0) -> Any:
    """A CogVideoXImageToVideoPipeline with a tiny I2V sketcher (VAE scaling 0.7)."""
    from diffusers import CogVideoXImageToVideoPipeline

    tokenizer = tiny_tokenizer()
    return _quiet(
        CogVideoXImageToVideoPipeline(
            tokenizer=tokenizer,
            text_encoder=tiny_t5_encoder(len(tokenizer), seed=seed),
            vae=tiny_cogvideox_vae(seed=seed),
            transformer=transformer if transformer is not None else tiny_cogvideox_i2v_transformer(seed=seed),
            scheduler=make_cogvideox_scheduler(),
        )
    )


def tiny_cogvideox_i2v_call_kwargs(num_inference_steps: int = 8, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """One quick CogVideoX image-to-video call from a random 32x32 image."""
    from . import COGVIDEOX_TEXT_LENGTH

    kwargs: dict[str, Any] = dict(
        image=tiny_frames(count=1, seed=seed)[0],
        prompt="a red circle moving left",
        negative_prompt="blurry",
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=num_inference_steps,
        guidance_scale=6.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        max_sequence_length=COGVIDEOX_TEXT_LENGTH,
    )
    kwargs.update(overrides)
    return kwargs


# -- SkyReels-V2 ----------------------------------------------------------------------------------------------
#: CLIP width of the tiny image encoder (SkyReels-V2 / Wan2.1 I2V use 1280)
CLIP_DIM = 32


def tiny_skyreels_transformer(size: WanSize = SKETCHER_SIZE, seed: int = 0, **overrides: Any) -> Any:
    """A random-weight SkyReelsV2Transformer3DModel of the tiny Wan shape."""
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(seed)
    kwargs = tiny_wan_config(size, **overrides)
    return SkyReelsV2Transformer3DModel(**kwargs).eval()


def tiny_skyreels_i2v_transformer(size: WanSize = SKETCHER_SIZE, seed: int = 0, **overrides: Any) -> Any:
    """A SkyReels-V2 I2V transformer: image condition in the channels, CLIP image embedding cross-attended."""
    inner = size.num_attention_heads * size.attention_head_dim
    kwargs = dict(in_channels=I2V_IN_CHANNELS, image_dim=CLIP_DIM, added_kv_proj_dim=inner)
    kwargs.update(overrides)
    return tiny_skyreels_transformer(size, seed=seed, **kwargs)


def tiny_clip_image_encoder(seed: int = 0) -> tuple[Any, Any]:
    """(a one-layer random CLIP vision model of width `CLIP_DIM`, its image processor at 32x32)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=CLIP_DIM,
        intermediate_size=2 * CLIP_DIM,
        projection_dim=CLIP_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    processor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    return CLIPVisionModelWithProjection(config).eval(), processor


def tiny_skyreels_pipeline(transformer: Any = None, scheduler: str = "unipc", seed: int = 0) -> Any:
    """A SkyReelsV2Pipeline (text-to-video) with a tiny sketcher (or the given transformer)."""
    from diffusers import SkyReelsV2Pipeline

    return _quiet(
        SkyReelsV2Pipeline(
            **_wan_text_parts(seed),
            vae=tiny_wan_vae(seed=seed),
            scheduler=make_scheduler(scheduler),
            transformer=transformer if transformer is not None else tiny_skyreels_transformer(seed=seed),
        )
    )


def tiny_skyreels_i2v_pipeline(transformer: Any = None, seed: int = 0) -> Any:
    """A SkyReelsV2ImageToVideoPipeline with a tiny I2V sketcher and a tiny CLIP image encoder."""
    from diffusers import SkyReelsV2ImageToVideoPipeline

    encoder, processor = tiny_clip_image_encoder(seed)
    return _quiet(
        SkyReelsV2ImageToVideoPipeline(
            **_wan_text_parts(seed),
            image_encoder=encoder,
            image_processor=processor,
            vae=tiny_wan_vae(seed=seed),
            scheduler=make_scheduler(),
            transformer=transformer if transformer is not None else tiny_skyreels_i2v_transformer(seed=seed),
        )
    )


def tiny_skyreels_df_pipeline(seed: int = 0) -> Any:
    """A SkyReelsV2DiffusionForcingPipeline (refused by SRD; built to test the refusal)."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    return _quiet(
        SkyReelsV2DiffusionForcingPipeline(
            **_wan_text_parts(seed),
            vae=tiny_wan_vae(seed=seed),
            scheduler=make_scheduler(),
            transformer=tiny_skyreels_transformer(seed=seed),
        )
    )
