"""What the benchmark scripts share: the real model configurations and the machine's name.

The Wan2.1 and CogVideoX numbers are those of the diffusers configs of the hub checkpoints
(Wan-AI/Wan2.1-T2V-14B-Diffusers, -1.3B-Diffusers; THUDM/CogVideoX-5b, -2b); see FACTS.md.
"""

from __future__ import annotations

import platform
from pathlib import Path

#: shared by both Wan2.1 T2V transformers
WAN_COMMON = dict(
    patch_size=(1, 2, 2),
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
WAN_14B_SIZE = dict(num_layers=40, num_attention_heads=40, attention_head_dim=128, ffn_dim=13824)
WAN_1_3B_SIZE = dict(num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960)

#: shared by both CogVideoX (1.0) transformers
COG_COMMON = dict(
    attention_head_dim=64,
    in_channels=16,
    out_channels=16,
    time_embed_dim=512,
    text_embed_dim=4096,
    sample_width=90,
    sample_height=60,
    sample_frames=49,
    patch_size=2,
    temporal_compression_ratio=4,
    max_text_seq_length=226,
)
COG_5B_SIZE = dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)
COG_2B_SIZE = dict(num_attention_heads=30, num_layers=30, use_rotary_positional_embeddings=False)


def cpu_name() -> str:
    """The CPU model, for the header of a benchmark table."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
