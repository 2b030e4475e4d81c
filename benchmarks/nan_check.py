"""Cost of the renderer's NaN/Inf check (`all_finite`) at the output sizes of real models.

    python benchmarks/nan_check.py           # Wan2.1 latent outputs, on cuda if present, else cpu
    python benchmarks/nan_check.py --tiny    # a small tensor, a second on the CPU (what the tests run)

Every renderer call is followed by `all_finite(output)`: one `isfinite` + `all` over the
output (the size of the latents, not of the activations) and, on a GPU, one host sync to
read the answer. The script reports the median time of that check, and on CUDA also the
kernel time alone (no sync), per call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srd_plugin.adapters.base import all_finite  # noqa: E402

#: Wan2.1 transformer outputs [B, C, F, H, W] (latents of 832x480 / 1280x720, 81 frames)
SHAPES = {
    "wan 480p 81f": (1, 16, 21, 60, 104),
    "wan 720p 81f": (1, 16, 21, 90, 160),
}
TINY_SHAPES = {"tiny": (1, 4, 3, 4, 4)}


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(shapes: dict[str, tuple[int, ...]], device: str, repeats: int) -> list[str]:
    lines = [f"all_finite on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'cpu'})"]
    for name, shape in shapes.items():
        for dtype in (torch.bfloat16, torch.float32):
            output = (torch.randn(shape, device=device).to(dtype),)
            check = median_ms(lambda output=output: all_finite(output), repeats)
            line = f"  {name:<14}{str(dtype):<16}{check:9.3f} ms per call"
            if device == "cuda":  # the check above includes the host sync that reads the answer
                kernel = median_ms(lambda output=output: torch.isfinite(output[0]).all(), repeats)  # queued, no sync
                line += f", {kernel:.3f} ms to launch without it"
            lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a small tensor on the CPU")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    lines = measure(TINY_SHAPES if args.tiny else SHAPES, device, 3 if args.tiny else args.repeats)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
