"""SDPA against the installed SageAttention kernel at the real attention shapes (is it the kernel or the wrapper?).

    python benchmarks/attention_kernels.py          # on a CUDA GPU with sageattention installed

Times one self-attention call at the shapes of Wan2.1 (480p, 81 frames: 32,760 tokens,
head dim 128; 14B: 40 heads, 1.3B: 12 heads) and CogVideoX (17,776 tokens, head dim 64;
5B: 48 heads, 2B: 30 heads; batch 2 for CFG): PyTorch's SDPA, the raw `sageattn` kernel, and
the kernel as `srd_plugin.hooks.sageattention` calls it (key smoothed out of place).
CUDA events, median of 10 calls after 3 warm-ups.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "Wan 14B self-attn": (1, 40, 32760, 128),
    "Wan 1.3B self-attn": (1, 12, 32760, 128),
    "CogVideoX 5B attn": (2, 48, 17776, 64),
    "CogVideoX 2B attn": (2, 30, 17776, 64),
}


def median_ms(fn, repeats: int = 10) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def row(name: str, shape: tuple[int, ...], sageattn, wrapped) -> str:
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    sdpa = median_ms(lambda: F.scaled_dot_product_attention(q, k, v))
    raw = median_ms(lambda: sageattn(q, k, v, tensor_layout="HND", is_causal=False))
    route = median_ms(lambda: wrapped(q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v).float()
    error = ((wrapped(q, k, v).float() - ref).norm() / ref.norm()).item()
    return f"| {name} {shape} | {sdpa:.2f} | {raw:.2f} | {route:.2f} | {sdpa / raw:.2f}x | {error:.4f} |"


def main() -> int:
    from sageattention import sageattn

    from srd_plugin.hooks.sageattention import make_sage_kernel

    wrapped = make_sage_kernel(sageattn).fn
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| shape | SDPA ms | sageattn ms | srd_plugin route ms | sageattn speedup | rel. error |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, shape in SHAPES.items():
        print(row(name, shape, sageattn, wrapped), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
