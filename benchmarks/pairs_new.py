"""Pairs of issue 18: LTX-Video 13B -> 2B, Kandinsky 5.0 Video Pro -> Lite, Cosmos Predict2 14B -> 2B.

Every published config below is copied from the source named in its `source` field; the
default sizes are those of the diffusers 0.42 pipelines' `__call__` signatures.
"""

from __future__ import annotations

import torch

from benchmarks.pair_spec import PairSpec

DIFFUSERS_SCRIPTS = "https://github.com/huggingface/diffusers/blob/main/scripts"


def _randn(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, device=device, dtype=dtype)


# -- LTX-Video ----------------------------------------------------------------------------------
_LTX_COMMON = dict(
    in_channels=128,
    out_channels=128,
    patch_size=1,
    patch_size_t=1,
    activation_fn="gelu-approximate",
    qk_norm="rms_norm_across_heads",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    caption_channels=4096,
    attention_bias=True,
    attention_out_bias=True,
)
LTX_13B = dict(_LTX_COMMON, num_attention_heads=32, attention_head_dim=128, cross_attention_dim=4096, num_layers=48)
LTX_2B = dict(_LTX_COMMON, num_attention_heads=32, attention_head_dim=64, cross_attention_dim=2048, num_layers=28)
_LTX_TINY = dict(_LTX_COMMON, in_channels=8, out_channels=8, caption_channels=32)
#: as in the real pair, cross_attention_dim equals the model width (heads x head dim)
LTX_TINY_S = dict(_LTX_TINY, num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32, num_layers=2)
LTX_TINY_R = dict(_LTX_TINY, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, num_layers=1)


def ltx_inputs(config: dict, tiny: bool, device: torch.device, dtype: torch.dtype) -> dict:
    """LTXPipeline's call: 512x704, 161 frames (latent 21x16x22 with the 32x/8x VAE), 128 T5 tokens,
    CFG batched (batch 2), rope_interpolation_scale = (8 / frame rate 25, 32, 32)."""
    frames, height, width, tokens = (2, 4, 4, 8) if tiny else ((161 - 1) // 8 + 1, 512 // 32, 704 // 32, 128)
    return dict(
        hidden_states=_randn((2, frames * height * width, config["in_channels"]), device, dtype),
        encoder_hidden_states=_randn((2, tokens, config["caption_channels"]), device, dtype),
        timestep=torch.full((2,), 500.0, device=device),
        encoder_attention_mask=torch.ones((2, tokens), device=device, dtype=dtype),
        num_frames=frames,
        height=height,
        width=width,
        rope_interpolation_scale=(8 / 25, 32, 32),
        return_dict=False,
    )


# -- Kandinsky 5.0 Video -----------------------------------------------------------------------
_K5_COMMON = dict(
    in_visual_dim=16, out_visual_dim=16, in_text_dim=3584, in_text_dim2=768, patch_size=(1, 2, 2), visual_cond=True
)
K5_PRO = dict(
    _K5_COMMON,
    time_dim=1024,
    model_dim=4096,
    ff_dim=16384,
    num_text_blocks=4,
    num_visual_blocks=60,
    axes_dims=(32, 48, 48),
)
K5_LITE = dict(
    _K5_COMMON,
    time_dim=512,
    model_dim=1792,
    ff_dim=7168,
    num_text_blocks=2,
    num_visual_blocks=32,
    axes_dims=(16, 24, 24),
)
_K5_TINY = dict(_K5_COMMON, in_visual_dim=4, out_visual_dim=4, in_text_dim=32, in_text_dim2=16)
K5_TINY_S = dict(
    _K5_TINY, time_dim=16, model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6)
)
K5_TINY_R = dict(
    _K5_TINY, time_dim=16, model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=1, axes_dims=(2, 2, 4)
)


def kandinsky5_inputs(config: dict, tiny: bool, device: torch.device, dtype: torch.dtype) -> dict:
    """Kandinsky5T2VPipeline's call: 512x768, 121 frames (latent 31x64x96, channel-last, 2C+1 channels
    with visual_cond), 256 Qwen tokens (the original config's max_length), scale factor (1, 2, 2)."""
    frames, height, width, tokens = (2, 4, 4, 8) if tiny else ((121 - 1) // 4 + 1, 512 // 8, 768 // 8, 256)
    channels = 2 * config["in_visual_dim"] + 1 if config["visual_cond"] else config["in_visual_dim"]
    return dict(
        hidden_states=_randn((1, frames, height, width, channels), device, dtype),
        encoder_hidden_states=_randn((1, tokens, config["in_text_dim"]), device, dtype),
        timestep=torch.full((1,), 500.0, device=device, dtype=dtype),
        pooled_projections=_randn((1, config["in_text_dim2"]), device, dtype),
        visual_rope_pos=[torch.arange(n, device=device) for n in (frames, height // 2, width // 2)],
        text_rope_pos=torch.arange(tokens, device=device),
        scale_factor=(1, 2, 2),
        sparse_params=None,
        return_dict=True,
    )


# -- Cosmos Predict2 ---------------------------------------------------------------------------
_COSMOS_COMMON = dict(
    out_channels=16,
    attention_head_dim=128,
    mlp_ratio=4.0,
    text_embed_dim=1024,
    adaln_lora_dim=256,
    max_size=(128, 240, 240),
    patch_size=(1, 2, 2),
    concat_padding_mask=True,
    extra_pos_embed_type=None,
)
COSMOS_T2I_14B = dict(_COSMOS_COMMON, in_channels=16, num_attention_heads=40, num_layers=36, rope_scale=(1.0, 4.0, 4.0))
COSMOS_T2I_2B = dict(_COSMOS_COMMON, in_channels=16, num_attention_heads=16, num_layers=28, rope_scale=(1.0, 4.0, 4.0))
COSMOS_V2W_14B = dict(
    _COSMOS_COMMON, in_channels=17, num_attention_heads=40, num_layers=36, rope_scale=(20 / 24, 2.0, 2.0)
)
COSMOS_V2W_2B = dict(_COSMOS_COMMON, in_channels=17, num_attention_heads=16, num_layers=28, rope_scale=(1.0, 3.0, 3.0))
_COSMOS25 = dict(use_crossattn_projection=True, crossattn_proj_in_channels=100352, encoder_hidden_states_channels=1024)
COSMOS25_14B = dict(
    _COSMOS_COMMON, in_channels=17, num_attention_heads=40, num_layers=36, rope_scale=(1.0, 3.0, 3.0), **_COSMOS25
)
COSMOS25_2B = dict(
    _COSMOS_COMMON, in_channels=17, num_attention_heads=16, num_layers=28, rope_scale=(1.0, 3.0, 3.0), **_COSMOS25
)
_COSMOS_TINY = dict(
    _COSMOS_COMMON, attention_head_dim=16, text_embed_dim=32, adaln_lora_dim=8, max_size=(8, 16, 16), out_channels=4
)
COSMOS_TINY_S = dict(_COSMOS_TINY, in_channels=5, num_attention_heads=4, num_layers=2, rope_scale=(1.0, 3.0, 3.0))
COSMOS_TINY_R = dict(_COSMOS_TINY, in_channels=5, num_attention_heads=2, num_layers=1, rope_scale=(1.0, 3.0, 3.0))


def _cosmos_prepare() -> None:
    from srd_plugin.testing.torchvision_resize import install

    install()


def _cosmos_inputs(frames: int, height: int, width: int, tokens: int, tiny_frames: int) -> object:
    def make(config: dict, tiny: bool, device: torch.device, dtype: torch.dtype) -> dict:
        f, h, w, n = (tiny_frames, 4, 4, 8) if tiny else (frames, height, width, tokens)
        latent = config["out_channels"]
        text_width = (
            config["crossattn_proj_in_channels"] if config.get("use_crossattn_projection") else config["text_embed_dim"]
        )
        inputs = dict(
            hidden_states=_randn((1, latent, f, h, w), device, dtype),
            timestep=torch.full((1, 1, f, 1, 1), 0.5, device=device, dtype=dtype),
            encoder_hidden_states=_randn((1, n, text_width), device, dtype),
            padding_mask=torch.zeros((1, 1, h, w), device=device, dtype=dtype),
            return_dict=False,
        )
        if config["in_channels"] == latent + 1:  # Video2World: the conditioning-frame mask channel
            inputs["condition_mask"] = torch.zeros((1, 1, f, h, w), device=device, dtype=dtype)
            inputs["fps"] = 16 if not config.get("use_crossattn_projection") else None
        return inputs

    return make


#: Cosmos2TextToImagePipeline: 768x1360 (latent 1x96x170), 512 T5 tokens; two calls per step
cosmos_t2i_inputs = _cosmos_inputs(1, 768 // 8, 1360 // 8, 512, tiny_frames=1)
#: Cosmos2VideoToWorldPipeline: 704x1280, 93 frames (latent 24x88x160), 512 T5 tokens; two calls per step
cosmos_v2w_inputs = _cosmos_inputs((93 - 1) // 4 + 1, 704 // 8, 1280 // 8, 512, tiny_frames=2)

PAIRS: list[PairSpec] = [
    PairSpec(
        name="LTX-Video 13B -> 2B (512x704, 161 frames)",
        model_class="LTXVideoTransformer3DModel",
        sketcher=LTX_13B,
        renderer=LTX_2B,
        tiny_sketcher=LTX_TINY_S,
        tiny_renderer=LTX_TINY_R,
        make_inputs=ltx_inputs,
        calls_per_step=1,
        steps=50,
        source=f"{DIFFUSERS_SCRIPTS}/convert_ltx_to_diffusers.py get_transformer_config (0.9.7 13B / 2B); "
        "sizes: LTXPipeline.__call__ defaults",
    ),
    PairSpec(
        name="Kandinsky 5.0 Video Pro -> Lite (512x768, 121 frames)",
        model_class="Kandinsky5Transformer3DModel",
        sketcher=K5_PRO,
        renderer=K5_LITE,
        tiny_sketcher=K5_TINY_S,
        tiny_renderer=K5_TINY_R,
        make_inputs=kandinsky5_inputs,
        calls_per_step=2,
        steps=50,
        source="https://github.com/kandinskylab/kandinsky-5 configs/k5_pro_t2v_5s_sft_sd.yaml and "
        "https://github.com/ai-forever/Kandinsky-5 configs/config_5s_sft.yaml (dit_params); "
        "sizes: Kandinsky5T2VPipeline.__call__ defaults",
    ),
    PairSpec(
        name="Cosmos Predict2 Text2Image 14B -> 2B (768x1360)",
        model_class="CosmosTransformer3DModel",
        sketcher=COSMOS_T2I_14B,
        renderer=COSMOS_T2I_2B,
        tiny_sketcher=dict(COSMOS_TINY_S, in_channels=4),
        tiny_renderer=dict(COSMOS_TINY_R, in_channels=4),
        make_inputs=cosmos_t2i_inputs,
        calls_per_step=2,
        steps=35,
        source=f"{DIFFUSERS_SCRIPTS}/convert_cosmos_to_diffusers.py TRANSFORMER_CONFIGS "
        "(Cosmos-2.0-Diffusion-14B/2B-Text2Image); sizes: Cosmos2TextToImagePipeline.__call__ defaults",
        prepare=_cosmos_prepare,
    ),
    PairSpec(
        name="Cosmos Predict2 Video2World 14B -> 2B (704x1280, 93 frames)",
        model_class="CosmosTransformer3DModel",
        sketcher=COSMOS_V2W_14B,
        renderer=COSMOS_V2W_2B,
        tiny_sketcher=COSMOS_TINY_S,
        tiny_renderer=COSMOS_TINY_R,
        make_inputs=cosmos_v2w_inputs,
        calls_per_step=2,
        steps=35,
        source=f"{DIFFUSERS_SCRIPTS}/convert_cosmos_to_diffusers.py TRANSFORMER_CONFIGS "
        "(Cosmos-2.0-Diffusion-14B/2B-Video2World); sizes: Cosmos2VideoToWorldPipeline.__call__ defaults",
        prepare=_cosmos_prepare,
    ),
    PairSpec(
        name="Cosmos Predict2.5 14B -> 2B (704x1280, 93 frames)",
        model_class="CosmosTransformer3DModel",
        sketcher=COSMOS25_14B,
        renderer=COSMOS25_2B,
        tiny_sketcher=dict(
            COSMOS_TINY_S,
            use_crossattn_projection=True,
            crossattn_proj_in_channels=48,
            encoder_hidden_states_channels=32,
        ),
        tiny_renderer=dict(
            COSMOS_TINY_R,
            use_crossattn_projection=True,
            crossattn_proj_in_channels=48,
            encoder_hidden_states_channels=32,
        ),
        make_inputs=cosmos_v2w_inputs,
        calls_per_step=2,
        steps=36,
        source=f"{DIFFUSERS_SCRIPTS}/convert_cosmos_to_diffusers.py TRANSFORMER_CONFIGS "
        "(Cosmos-2.5-Predict-Base-14B/2B); sizes: Cosmos2_5_PredictBasePipeline.__call__ defaults (512 text tokens)",
        prepare=_cosmos_prepare,
    ),
]
