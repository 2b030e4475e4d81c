"""A host program for the toy sampler: `python -m srd_toy_loop.demo --out result.pt`.

Like examples/host_script.py it knows nothing about SRD; run it under `srd-run` to sketch
with `tiny_sketcher` and render with the renderer the config file names.
"""

from __future__ import annotations

import argparse

import torch

from .host import ToyFlowSampler
from .models import tiny_sketcher


def main() -> None:
    parser = argparse.ArgumentParser(description="generate with the toy flow-matching sampler")
    parser.add_argument("--out", default="toy-latents.pt")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sampler = ToyFlowSampler(tiny_sketcher())
    latents = sampler(num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed))
    torch.save(latents, args.out)
    print(f"wrote {args.out}: latents of shape {tuple(latents.shape)}")


if __name__ == "__main__":
    main()
