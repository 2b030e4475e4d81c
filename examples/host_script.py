"""A host script that knows nothing about SRD: it builds a WanPipeline and generates latents.

It stands for a team's own generation script. The tiny random-weight pipeline from
`srd_plugin.testing` stands in for `WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-14B-Diffusers")`
so that it runs offline on a CPU; nothing else here refers to SRD. Run it as it is, or under
the launcher with SRD switched on by a config file:

    python examples/host_script.py --out plain.pt
    srd-run --config examples/srd.toml python examples/host_script.py --out srd.pt
    SRD_ENABLE=0 srd-run --config examples/srd.toml python examples/host_script.py --out off.pt

`SRD_TRACE_DIR=traces` makes the launcher write each call's trace there as JSON.
"""

from __future__ import annotations

import argparse

import torch

from srd_plugin.testing import tiny_call_kwargs, tiny_wan_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="latents.pt", help="where to save the generated latents (torch.save)")
    parser.add_argument("--steps", type=int, default=12, help="denoising steps (default: 12)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pipe = tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    latents = pipe(**tiny_call_kwargs(args.steps, seed=args.seed)).frames
    torch.save(latents, args.out)
    print(f"wrote {args.out}: latents of shape {tuple(latents.shape)}")


if __name__ == "__main__":
    main()
