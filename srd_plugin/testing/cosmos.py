"""Tiny offline Cosmos Predict2 pipelines (Text2Image, Video2World): a 14B-like sketcher, 2B-like renderers.

The real pair (diffusers' convert_cosmos_to_diffusers.py): 14B 36 layers x 40 heads, 2B 28 x 16,
both head dim 128, T5-11B text width 1024, Wan2.1 VAE (16 latent channels), patch (1, 2, 2),
Video2World with one extra input channel (the conditioning mask). Scaled down here; the VAE is
diffusers' test miniature of AutoencoderKLWan.

Two stand-ins, neither replacing any of the model's or the pipeline's arithmetic:

* the safety checker (`cosmos_guardrail`, a large model the pipelines refuse to run without):
  a no-op that passes text and video through, as diffusers' own tests do;
* torchvision's NEAREST `resize`, which the transformer applies to its all-zero padding mask:
  torchvision's PyPI wheel does not import with the CPU torch here, so
  `srd_plugin.testing.torchvision_resize.install()` gives diffusers' Cosmos module the same
  tensor code path (see that module).
"""

from __future__ import annotations

from typing import Any

import torch

from . import tiny_t5_encoder, tiny_tokenizer
from .torchvision_resize import install as install_torchvision_resize

COSMOS_LATENT_CHANNELS = 16
COSMOS_TEXT_DIM = 32
COSMOS_TEXT_LENGTH = 16
COSMOS_STEPS = 6


def _safety_checker_class() -> type:
    from diffusers.configuration_utils import ConfigMixin
    from diffusers.models.modeling_utils import ModelMixin

    class PassThroughSafetyChecker(ModelMixin, ConfigMixin):
        """Stands in for Cosmos Guardrail: every prompt and video passes unchanged."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("_device_tracker", torch.zeros(1), persistent=False)

        def check_text_safety(self, prompt: str) -> bool:
            return True

        def check_video_safety(self, frames: Any) -> Any:
            return frames

    return PassThroughSafetyChecker


def cosmos_transformer_config(video: bool = False, num_layers: int = 2, heads: int = 4, **overrides: Any) -> dict:
    """Constructor arguments of a tiny CosmosTransformer3DModel (Video2World: one mask channel more)."""
    kwargs: dict[str, Any] = dict(
        in_channels=COSMOS_LATENT_CHANNELS + (1 if video else 0),
        out_channels=COSMOS_LATENT_CHANNELS,
        num_attention_heads=heads,
        attention_head_dim=16,
        num_layers=num_layers,
        mlp_ratio=2.0,
        text_embed_dim=COSMOS_TEXT_DIM,
        adaln_lora_dim=4,
        max_size=(4, 32, 32),
        patch_size=(1, 2, 2),
        rope_scale=(1.0, 3.0, 3.0) if video else (1.0, 4.0, 4.0),
        concat_padding_mask=True,
        extra_pos_embed_type=None,
    )
    kwargs.update(overrides)
    return kwargs


def tiny_cosmos_transformer(video: bool = False, seed: int = 0, **config: Any) -> Any:
    """A random-weight CosmosTransformer3DModel, 14B-like by default (2 layers, 4 heads)."""
    from diffusers import CosmosTransformer3DModel

    install_torchvision_resize()
    torch.manual_seed(seed)
    return CosmosTransformer3DModel(**cosmos_transformer_config(video, **config)).eval()


def tiny_cosmos_renderer(video: bool = False, seed: int = 1, **config: Any) -> Any:
    """A 2B-like renderer: one layer, two heads, its own rope scale (as the real 2B Video2World has)."""
    return tiny_cosmos_transformer(video, seed=seed, **{"num_layers": 1, "heads": 2, **config})


def tiny_cosmos_vae(seed: int = 0) -> Any:
    """diffusers' test miniature of the Wan2.1 VAE (16 latent channels, 8x spatial, 4x temporal)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=3,
        z_dim=COSMOS_LATENT_CHANNELS,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()


def tiny_cosmos_pipeline(kind: str = "t2i", transformer: Any = None, seed: int = 0) -> Any:
    """An offline Cosmos2TextToImagePipeline ("t2i") or Cosmos2VideoToWorldPipeline ("v2w")."""
    from diffusers import Cosmos2TextToImagePipeline, Cosmos2VideoToWorldPipeline, FlowMatchEulerDiscreteScheduler

    classes = {"t2i": Cosmos2TextToImagePipeline, "v2w": Cosmos2VideoToWorldPipeline}
    if kind not in classes:
        raise ValueError(f"Cosmos pipeline kind {kind!r}: choose one of {', '.join(classes)}")
    install_torchvision_resize()
    tokenizer = tiny_tokenizer()
    pipe = classes[kind](
        text_encoder=tiny_t5_encoder(len(tokenizer), d_model=COSMOS_TEXT_DIM, seed=seed),
        tokenizer=tokenizer,
        transformer=transformer if transformer is not None else tiny_cosmos_transformer(kind == "v2w", seed=seed),
        vae=tiny_cosmos_vae(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True),
        safety_checker=_safety_checker_class()(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_cosmos_call_kwargs(
    kind: str = "t2i", num_inference_steps: int = COSMOS_STEPS, seed: int = 0, **overrides: Any
) -> dict:
    """Arguments for one quick call (32x32; Video2World: 9 frames from one image) with latent output."""
    kwargs: dict[str, Any] = dict(
        prompt="a red circle moving left",
        negative_prompt="blurry",
        height=32,
        width=32,
        num_inference_steps=num_inference_steps,
        guidance_scale=7.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        max_sequence_length=COSMOS_TEXT_LENGTH,
    )
    if kind == "v2w":
        kwargs.update(
            num_frames=9, image=torch.rand((1, 3, 32, 32), generator=torch.Generator().manual_seed(seed + 100))
        )
    kwargs.update(overrides)
    return kwargs


def delta_oracle_cosmos(target: torch.Tensor, video: bool = False, seed: int = 0, **config: Any) -> Any:
    """A Cosmos transformer whose output makes the pipeline's EDM-preconditioned denoiser exactly `target`.

    The pipelines call the model on c_in x at t = sigma / (sigma + 1) and form
    D = c_skip x + c_out F with c_in = c_skip = 1 - t, c_out = -t. F = (input - x*) / t gives
    D = x* at every sigma (the optimal denoiser for data equal to x*), so the scheduler sees
    (x - x*) / sigma and any correct x0 rule returns x* on every denoised frame. `target`
    broadcasts against [B, C, T, H, W] (a per-channel [C, 1, 1, 1] does).

    Cosmos Predict2.5 calls the model on x itself at t = sigma (flow sigmas) and steps on its
    velocity F directly: x0 = x - sigma F = x* again.
    """
    from diffusers import CosmosTransformer3DModel

    install_torchvision_resize()

    class DeltaOracleCosmos(CosmosTransformer3DModel):
        def forward(
            self,
            hidden_states: torch.Tensor,
            timestep: torch.Tensor,
            *args: Any,
            return_dict: bool = True,
            **kwargs: Any,
        ) -> Any:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            t = timestep.double()
            t = t.reshape(-1, 1, 1, 1, 1) if t.ndim == 1 else t  # [B] (Text2Image) or [B, 1, T, 1, 1]
            out = ((hidden_states.double() - self.oracle_target) / t).to(hidden_states.dtype)
            return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    torch.manual_seed(seed)
    model = DeltaOracleCosmos(**cosmos_transformer_config(video, **{"num_layers": 1, **config})).eval()
    model.register_buffer("oracle_target", target.double(), persistent=False)
    return model


COSMOS25_PROMPT_DIM = 48


def tiny_cosmos25_transformer(seed: int = 0, **config: Any) -> Any:
    """A Cosmos Predict2.5-like transformer: conditioning-mask channel and a text projection
    (the real one maps stacked Qwen2.5-VL hidden states, 100352 wide, to 1024)."""
    return tiny_cosmos_transformer(
        True,
        seed=seed,
        **{
            "use_crossattn_projection": True,
            "crossattn_proj_in_channels": COSMOS25_PROMPT_DIM,
            "encoder_hidden_states_channels": COSMOS_TEXT_DIM,
            **config,
        },
    )


def tiny_cosmos25_renderer(seed: int = 1, **config: Any) -> Any:
    """A 2B-like Predict2.5 renderer: one layer, two heads."""
    return tiny_cosmos25_transformer(seed=seed, **{"num_layers": 1, "heads": 2, **config})


def tiny_cosmos25_pipeline(transformer: Any = None, seed: int = 0) -> Any:
    """An offline Cosmos2_5_PredictBasePipeline with the real scheduler settings (UniPC, flow sigmas,
    Karras spacing, sigma 0.01..200) and no text encoder: calls pass `prompt_embeds`."""
    from diffusers import Cosmos2_5_PredictBasePipeline, UniPCMultistepScheduler

    install_torchvision_resize()
    pipe = Cosmos2_5_PredictBasePipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=transformer if transformer is not None else tiny_cosmos25_transformer(seed=seed),
        vae=tiny_cosmos_vae(seed),
        scheduler=UniPCMultistepScheduler(
            use_karras_sigmas=True,
            use_flow_sigmas=True,
            prediction_type="flow_prediction",
            sigma_max=200.0,
            sigma_min=0.01,
        ),
        safety_checker=_safety_checker_class()(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_cosmos25_call_kwargs(num_inference_steps: int = COSMOS_STEPS, seed: int = 0, **overrides: Any) -> dict:
    """Text2World at 32x32, 5 frames, with random prompt embeddings in place of Qwen2.5-VL's."""
    generator = torch.Generator().manual_seed(seed + 1000)
    kwargs: dict[str, Any] = dict(
        prompt_embeds=torch.randn((1, COSMOS_TEXT_LENGTH, COSMOS25_PROMPT_DIM), generator=generator),
        negative_prompt_embeds=torch.randn((1, COSMOS_TEXT_LENGTH, COSMOS25_PROMPT_DIM), generator=generator),
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=num_inference_steps,
        guidance_scale=7.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs
