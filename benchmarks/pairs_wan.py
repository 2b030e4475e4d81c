"""Pairs of issue 17: Wan2.1 VACE 14B -> 1.3B, SkyReels-V2 14B -> 1.3B (540P), Wan2.2 A14B -> Wan2.1 1.3B.

Every published config below is copied from diffusers' own conversion scripts, which wrote the
`-diffusers` checkpoints' `transformer/config.json` (the hub files themselves were not
reachable here):
  * Wan2.1 VACE 14B / 1.3B and Wan2.2 T2V A14B: `scripts/convert_wan_to_diffusers.py`
    (`get_transformer_config`, model types "Wan-VACE-14B", "Wan-VACE-1.3B", "Wan2.2-T2V-A14B";
    Wan2.2 A14B: both experts this config, `boundary_ratio=0.875`), Wan2.1 T2V 1.3B: same script
    ("Wan-T2V-1.3B");
  * SkyReels-V2 14B / 1.3B at 540P: `scripts/convert_skyreelsv2_to_diffusers.py`, model types
    "SkyReels-V2-DF-14B-540P" and "SkyReels-V2-DF-1.3B-540P" (the diffusion-forcing checkpoints;
    the script names no T2V config, and the SkyReels-V2 T2V 14B / 1.3B configs were not found:
    they are Wan2.1 14B / 1.3B by the model card, which these DF configs match).
Default sizes are those of the diffusers 0.42 pipelines' `__call__` signatures (Wan: 480x832,
81 frames, 50 steps; SkyReels-V2: 544x960, 97 frames, 50 steps).
"""

from __future__ import annotations

import torch

from benchmarks.pair_spec import PairSpec

DIFFUSERS_SCRIPTS = "https://github.com/huggingface/diffusers/blob/main/scripts"

_WAN_COMMON = dict(
    added_kv_proj_dim=None,
    attention_head_dim=128,
    cross_attn_norm=True,
    eps=1e-06,
    freq_dim=256,
    in_channels=16,
    out_channels=16,
    patch_size=[1, 2, 2],
    qk_norm="rms_norm_across_heads",
    text_dim=4096,
)
WAN_14B = dict(_WAN_COMMON, ffn_dim=13824, num_attention_heads=40, num_layers=40)  # Wan2.2 T2V A14B: each expert
WAN_1_3B = dict(_WAN_COMMON, ffn_dim=8960, num_attention_heads=12, num_layers=30)
VACE_14B = dict(WAN_14B, vace_layers=[0, 5, 10, 15, 20, 25, 30, 35], vace_in_channels=96)
VACE_1_3B = dict(WAN_1_3B, vace_layers=[0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28], vace_in_channels=96)
SKYREELS_14B = dict(WAN_14B, inject_sample_info=False)
SKYREELS_1_3B = dict(WAN_1_3B, inject_sample_info=True)

_TINY = dict(
    _WAN_COMMON, attention_head_dim=16, freq_dim=32, in_channels=4, out_channels=4, text_dim=32, rope_max_seq_len=32
)
TINY_S = dict(_TINY, ffn_dim=128, num_attention_heads=4, num_layers=4)
TINY_R = dict(_TINY, ffn_dim=64, num_attention_heads=2, num_layers=2)
TINY_VACE_S = dict(TINY_S, vace_layers=[0, 2], vace_in_channels=72)
TINY_VACE_R = dict(TINY_R, vace_layers=[0], vace_in_channels=72)

WAN_TEXT_TOKENS = 512  # the pipelines' max_sequence_length: umT5 embeddings padded to 512


def _latent(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Wan2.1 VAE: 4x temporal (first frame kept), 8x spatial."""
    return (frames - 1) // 4 + 1, height // 8, width // 8


def _wan_call(config: dict, tiny: bool, device: torch.device, dtype: torch.dtype, size: tuple[int, int, int]) -> dict:
    """One CFG half of a Wan-architecture step: batch 1 (cond and uncond are separate calls)."""
    frames, height, width = (3, 4, 4) if tiny else _latent(*size)
    tokens = 8 if tiny else WAN_TEXT_TOKENS
    inputs = dict(
        hidden_states=torch.randn((1, config["in_channels"], frames, height, width), device=device, dtype=dtype),
        timestep=torch.full((1,), 500.0, device=device),
        encoder_hidden_states=torch.randn((1, tokens, config["text_dim"]), device=device, dtype=dtype),
        return_dict=False,
    )
    if "vace_layers" in config:  # WanVACEPipeline: the control video and its per-layer scale
        shape = (1, config["vace_in_channels"], frames, height, width)
        inputs["control_hidden_states"] = torch.randn(shape, device=device, dtype=dtype)
        inputs["control_hidden_states_scale"] = torch.ones(len(config["vace_layers"]), device=device, dtype=dtype)
    if config.get("inject_sample_info"):  # the DF pipelines' fps embedding index (24 fps -> 1)
        inputs["fps"] = [1]
    return inputs


def wan_480p_inputs(config: dict, tiny: bool, device: torch.device, dtype: torch.dtype) -> dict:
    """WanPipeline / WanVACEPipeline defaults: 480x832, 81 frames (latent 21x60x104, 32,760 tokens)."""
    return _wan_call(config, tiny, device, dtype, (81, 480, 832))


def skyreels_540p_inputs(config: dict, tiny: bool, device: torch.device, dtype: torch.dtype) -> dict:
    """SkyReelsV2Pipeline defaults: 544x960, 97 frames (latent 25x68x120, 51,000 tokens)."""
    return _wan_call(config, tiny, device, dtype, (97, 544, 960))


PAIRS: list[PairSpec] = [
    PairSpec(
        name="Wan2.1 VACE 14B -> VACE 1.3B (480x832, 81 frames)",
        model_class="WanVACETransformer3DModel",
        sketcher=VACE_14B,
        renderer=VACE_1_3B,
        tiny_sketcher=TINY_VACE_S,
        tiny_renderer=TINY_VACE_R,
        make_inputs=wan_480p_inputs,
        calls_per_step=2,
        steps=50,
        source=f"{DIFFUSERS_SCRIPTS}/convert_wan_to_diffusers.py get_transformer_config (Wan-VACE-14B, "
        "Wan-VACE-1.3B); sizes: WanVACEPipeline.__call__ defaults",
    ),
    PairSpec(
        name="SkyReels-V2 14B -> 1.3B (540P, 97 frames)",
        model_class="SkyReelsV2Transformer3DModel",
        sketcher=SKYREELS_14B,
        renderer=SKYREELS_1_3B,
        tiny_sketcher=dict(TINY_S, inject_sample_info=False),
        tiny_renderer=dict(TINY_R, inject_sample_info=True),
        make_inputs=skyreels_540p_inputs,
        calls_per_step=2,
        steps=50,
        source=f"{DIFFUSERS_SCRIPTS}/convert_skyreelsv2_to_diffusers.py get_transformer_config "
        "(SkyReels-V2-DF-14B-540P, SkyReels-V2-DF-1.3B-540P; no T2V config found); sizes: "
        "SkyReelsV2Pipeline.__call__ defaults",
    ),
    PairSpec(
        name="Wan2.2 T2V A14B experts -> Wan2.1 1.3B (480x832, 81 frames)",
        model_class="WanTransformer3DModel",
        sketcher=WAN_14B,
        renderer=WAN_1_3B,
        tiny_sketcher=TINY_S,
        tiny_renderer=TINY_R,
        make_inputs=wan_480p_inputs,
        calls_per_step=2,
        steps=50,
        source=f"{DIFFUSERS_SCRIPTS}/convert_wan_to_diffusers.py get_transformer_config (Wan2.2-T2V-A14B: "
        "high_noise_model and low_noise_model, boundary_ratio 0.875; Wan-T2V-1.3B); sizes: WanPipeline.__call__ "
        "defaults. Both experts have this config, so one timing serves both",
        sketcher_calls_scale=1.0,
    ),
]
