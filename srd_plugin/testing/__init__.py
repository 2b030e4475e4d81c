"""Tiny offline components: Wan pipelines and sketcher/renderer pairs with random weights.

Used by the tests, the examples, the benchmarks and `srd demo`. Nothing here touches the
network: the tokenizer is a Unigram model built in memory (with `</s>` appended by a
TemplateProcessing post-processor, like T5's), the text encoder a randomly initialised
UMT5 encoder whose width equals the transformer's `text_dim`.

The renderer of a pair is smaller than its sketcher (fewer layers, fewer heads), shares
its latent channels, patch size and text width, and so can replace it in every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: words the in-memory tokenizer knows as whole pieces (anything else falls back to letters)
VOCABULARY = (
    "a an the of in on at with and is moving left right up down still red green blue yellow white black "
    "circle square triangle ball box cat dog bird car tree sky sea street city night day slowly quickly "
    "over under through big small bright dark video scene camera panning shot close view astronaut horse"
).split()

TEXT_DIM = 32
LATENT_CHANNELS = 4


@dataclass(frozen=True)
class WanSize:
    """Architecture knobs of a tiny WanTransformer3DModel."""

    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    ffn_dim: int


SKETCHER_SIZE = WanSize(num_layers=4, num_attention_heads=4, attention_head_dim=16, ffn_dim=128)
RENDERER_SIZE = WanSize(num_layers=2, num_attention_heads=2, attention_head_dim=16, ffn_dim=64)


def tiny_tokenizer(words: tuple[str, ...] = tuple(VOCABULARY)) -> Any:
    """A T5-style fast tokenizer built in memory: Unigram pieces, `</s>` appended, `<pad>` = 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,'-"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in words]
    vocab += [(c, -5.0) for c in letters] + [("\u2581" + c, -5.5) for c in letters]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _tiny_encoder_settings(vocab_size: int, d_model: int) -> dict[str, Any]:
    """The one-layer encoder shape both text encoders share (UMT5 for Wan, T5 for CogVideoX)."""
    return {
        "vocab_size": vocab_size,
        "d_model": d_model,
        "d_kv": 8,
        "d_ff": 2 * d_model,
        "num_layers": 1,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def tiny_text_encoder(vocab_size: int, d_model: int = TEXT_DIM, seed: int = 0) -> Any:
    """A one-layer random UMT5 encoder whose output width is the transformer's `text_dim`."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(**_tiny_encoder_settings(vocab_size, d_model))).eval()


def tiny_wan_vae(z_dim: int = LATENT_CHANNELS, seed: int = 0) -> Any:
    """A minimal AutoencoderKLWan: 8x spatial, 4x temporal compression, `z_dim` latent channels."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=3,
        z_dim=z_dim,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    ).eval()


def tiny_wan_config(size: WanSize = SKETCHER_SIZE, **overrides: Any) -> dict[str, Any]:
    """The config of a tiny Wan-architecture transformer (Wan, VACE and SkyReels-V2 classes share it)."""
    kwargs = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=size.num_attention_heads,
        attention_head_dim=size.attention_head_dim,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=size.ffn_dim,
        num_layers=size.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    kwargs.update(overrides)
    return kwargs


def tiny_wan_transformer(size: WanSize = SKETCHER_SIZE, seed: int = 0, **overrides: Any) -> Any:
    """A random-weight WanTransformer3DModel of the given size (text width `TEXT_DIM`)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**tiny_wan_config(size, **overrides)).eval()


def make_scheduler(kind: str = "unipc", shift: float = 3.0) -> Any:
    """One of the two schedulers Wan uses: "unipc" (flow prediction) or "euler" (flow-match Euler)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if kind == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    if kind == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=shift)
    raise ValueError(f"scheduler kind {kind!r}: choose 'unipc' or 'euler'")


def tiny_wan_pipeline(scheduler: str = "unipc", seed: int = 0, transformer: Any = None, **pipeline_kwargs: Any) -> Any:
    """A complete offline WanPipeline with a tiny sketcher (or the given transformer)."""
    from diffusers import WanPipeline

    tokenizer = tiny_tokenizer()
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(len(tokenizer), seed=seed),
        vae=tiny_wan_vae(seed=seed),
        scheduler=make_scheduler(scheduler),
        transformer=transformer if transformer is not None else tiny_wan_transformer(SKETCHER_SIZE, seed=seed),
        **pipeline_kwargs,
    )


def tiny_wan_renderer(seed: int = 1) -> Any:
    """A renderer for `tiny_wan_pipeline`: half the layers and heads of the sketcher."""
    return tiny_wan_transformer(RENDERER_SIZE, seed=seed)


def tiny_wan_pair(scheduler: str = "unipc", seed: int = 0) -> tuple[Any, Any]:
    """(pipeline with the sketcher, renderer) ready for `srd_plugin.enable`."""
    return tiny_wan_pipeline(scheduler=scheduler, seed=seed), tiny_wan_renderer(seed=seed + 1)


def tiny_call_kwargs(num_inference_steps: int = 10, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """Arguments for one quick call of a tiny Wan pipeline (32x32, 9 frames, latent output)."""
    kwargs: dict[str, Any] = dict(
        prompt="a red circle moving left",
        negative_prompt="blurry",
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


# -- CogVideoX -------------------------------------------------------------------------------
#: the real parametrizations (see FACTS.md): VAE scaling factor and scheduler snr_shift_scale
COGVIDEOX_5B_SCALING_FACTOR = 0.7
COGVIDEOX_2B_SCALING_FACTOR = 1.15258426
COGVIDEOX_5B_SNR_SHIFT_SCALE = 1.0
COGVIDEOX_2B_SNR_SHIFT_SCALE = 3.0
#: text tokens of the tiny CogVideoX models; a renderer without rotary embeddings needs exactly this many
COGVIDEOX_TEXT_LENGTH = 16


@dataclass(frozen=True)
class CogVideoXSize:
    """Architecture knobs of a tiny CogVideoXTransformer3DModel (rotary needs head dims that are multiples of 16)."""

    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    rotary: bool


#: like CogVideoX-5B: rotary position embeddings
COGVIDEOX_5B_LIKE = CogVideoXSize(num_layers=2, num_attention_heads=4, attention_head_dim=16, rotary=True)
#: like CogVideoX-2B: fewer layers and heads, sin-cos positions instead of rotary embeddings
COGVIDEOX_2B_LIKE = CogVideoXSize(num_layers=1, num_attention_heads=2, attention_head_dim=16, rotary=False)


def cogvideox_scheduler_config(snr_shift_scale: float = COGVIDEOX_5B_SNR_SHIFT_SCALE) -> dict[str, Any]:
    """The real CogVideoX `scheduler_config.json` (5B: snr_shift_scale 1.0, 2B: 3.0)."""
    return {
        "_class_name": "CogVideoXDDIMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "sample_max_value": 1.0,
        "set_alpha_to_one": True,
        "snr_shift_scale": snr_shift_scale,
        "steps_offset": 0,
        "timestep_spacing": "trailing",
    }


def make_cogvideox_scheduler(snr_shift_scale: float = COGVIDEOX_5B_SNR_SHIFT_SCALE, kind: str = "ddim") -> Any:
    """One of CogVideoX's schedulers with the real config: "ddim" or "dpm" (stochastic DPM-Solver++)."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    classes = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}
    if kind not in classes:
        raise ValueError(f"scheduler kind {kind!r}: choose 'ddim' or 'dpm'")
    config = {k: v for k, v in cogvideox_scheduler_config(snr_shift_scale).items() if k != "_class_name"}
    return classes[kind].from_config(config)


def tiny_t5_encoder(vocab_size: int, d_model: int = TEXT_DIM, seed: int = 0) -> Any:
    """A one-layer random T5 encoder (CogVideoX's text encoder family) of width `d_model`."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(**_tiny_encoder_settings(vocab_size, d_model))).eval()


def tiny_cogvideox_vae(scaling_factor: float = COGVIDEOX_5B_SCALING_FACTOR, seed: int = 0) -> Any:
    """A minimal AutoencoderKLCogVideoX: 8x spatial, 4x temporal compression, 4 latent channels."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    return AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
        scaling_factor=scaling_factor,
    ).eval()


def cogvideox_transformer_config(size: CogVideoXSize = COGVIDEOX_5B_LIKE, **overrides: Any) -> dict[str, Any]:
    """Constructor arguments of a tiny CogVideoXTransformer3DModel (sample size: 32x32 pixels, 9 frames)."""
    kwargs: dict[str, Any] = dict(
        num_attention_heads=size.num_attention_heads,
        attention_head_dim=size.attention_head_dim,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        time_embed_dim=16,
        text_embed_dim=TEXT_DIM,
        num_layers=size.num_layers,
        sample_width=4,
        sample_height=4,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=COGVIDEOX_TEXT_LENGTH,
        use_rotary_positional_embeddings=size.rotary,
    )
    kwargs.update(overrides)
    return kwargs


def tiny_cogvideox_transformer(size: CogVideoXSize = COGVIDEOX_5B_LIKE, seed: int = 0, **overrides: Any) -> Any:
    """A random-weight CogVideoXTransformer3DModel of the given size (text width `TEXT_DIM`)."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(**cogvideox_transformer_config(size, **overrides)).eval()


def tiny_cogvideox_pipeline(
    transformer: Any = None,
    scaling_factor: float = COGVIDEOX_5B_SCALING_FACTOR,
    snr_shift_scale: float = COGVIDEOX_5B_SNR_SHIFT_SCALE,
    scheduler: str = "ddim",
    seed: int = 0,
) -> Any:
    """A complete offline CogVideoXPipeline; by default 5B-like (rotary, VAE scaling 0.7, snr_shift_scale 1.0)."""
    from diffusers import CogVideoXPipeline

    tokenizer = tiny_tokenizer()
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=tiny_t5_encoder(len(tokenizer), seed=seed),
        vae=tiny_cogvideox_vae(scaling_factor, seed=seed),
        transformer=transformer if transformer is not None else tiny_cogvideox_transformer(seed=seed),
        scheduler=make_cogvideox_scheduler(snr_shift_scale, scheduler),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_cogvideox_renderer(size: CogVideoXSize = COGVIDEOX_2B_LIKE, seed: int = 1) -> Any:
    """A renderer for `tiny_cogvideox_pipeline`: 2B-like by default (one layer, two heads, no rotary)."""
    return tiny_cogvideox_transformer(size, seed=seed)


def cogvideox_2b_alignment() -> dict[str, Any]:
    """The `SRDConfig` fields that describe a CogVideoX-2B renderer's parametrization."""
    return dict(
        renderer_scaling_factor=COGVIDEOX_2B_SCALING_FACTOR,
        renderer_scheduler_config=cogvideox_scheduler_config(COGVIDEOX_2B_SNR_SHIFT_SCALE),
    )


def tiny_cogvideox_pair(scheduler: str = "ddim", seed: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    """(5B-like pipeline, 2B-like renderer, the renderer's parametrization as `SRDConfig` fields)."""
    pipe = tiny_cogvideox_pipeline(scheduler=scheduler, seed=seed)
    return pipe, tiny_cogvideox_renderer(seed=seed + 1), cogvideox_2b_alignment()


def tiny_cogvideox_renderer_pipeline(renderer: Any = None, seed: int = 1) -> Any:
    """A 2B-like pipeline around a renderer (VAE scaling 1.15258426, snr_shift_scale 3.0), e.g. to save as a folder."""
    return tiny_cogvideox_pipeline(
        transformer=renderer if renderer is not None else tiny_cogvideox_renderer(seed=seed),
        scaling_factor=COGVIDEOX_2B_SCALING_FACTOR,
        snr_shift_scale=COGVIDEOX_2B_SNR_SHIFT_SCALE,
        seed=seed,
    )


def tiny_cogvideox_call_kwargs(num_inference_steps: int = 8, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """Arguments for one quick call of a tiny CogVideoX pipeline (32x32, 9 frames, latent output)."""
    kwargs: dict[str, Any] = dict(
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


# -- the universal oracle ----------------------------------------------------------------------
def swap_oracle(
    pipe: Any, renderer: Any, k: int, call: dict[str, Any], attributes: tuple[str, ...] = ("transformer",)
) -> Any:
    """The plain pipeline whose `callback_on_step_end` replaces the host's denoiser(s) by the renderer
    after step k-1 (k = 0: before the call): the reference for "sketch k steps, then render" on any
    diffusers pipeline, since every one looks `self.transformer` (and `self.transformer_2`) up at
    each step and calls the callback after it.

    Returns the call's frames (`.frames`, or the first element of a `return_dict=False` tuple);
    the pipeline's own modules are put back afterwards.
    """
    originals = {name: getattr(pipe, name) for name in attributes}

    def swap(target: Any) -> None:
        for name in attributes:
            setattr(target, name, renderer)

    def callback(target: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if index == k - 1:
            swap(target)
        return {}

    try:
        if k == 0:
            swap(pipe)
        output = pipe(**call, callback_on_step_end=callback)
        return output[0] if isinstance(output, tuple) else output.frames
    finally:
        for name, module in originals.items():
            setattr(pipe, name, module)
