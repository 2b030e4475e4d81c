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


def tiny_text_encoder(vocab_size: int, d_model: int = TEXT_DIM, seed: int = 0) -> Any:
    """A one-layer random UMT5 encoder whose output width is the transformer's `text_dim`."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()


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


def tiny_wan_transformer(size: WanSize = SKETCHER_SIZE, seed: int = 0, **overrides: Any) -> Any:
    """A random-weight WanTransformer3DModel of the given size (text width `TEXT_DIM`)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
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
    return WanTransformer3DModel(**kwargs).eval()


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
