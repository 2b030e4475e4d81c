"""Does a trained second-world transformer remove all the noise? The check behind `models2`'s width rule.

    python benchmarks/latent_reach.py --work runs/m3 --clips 4

A `WanTransformer3DModel` ends in one linear layer from its width to a token (latent channels x
patch cells). Where the width is smaller than the token, the velocity it predicts lies in a
fixed subspace, and the sampler never touches the starting noise outside it. This script measures
that directly, for the sketcher and the renderer of a `train2` work folder:

* the rank of `proj_out` next to the token's dimension;
* the power of latents in the *minor* subspace of the true validation latents (the principal
  directions past those holding 99% of their power, per token): true latents hold 1% there by
  construction, Gaussian noise holds the subspace's share of its dimensions, and a sampler that
  removed its noise lands near the true figure.

Generated latents are taken before decoding (`output_type="latent"`), 30 steps, the validation
prompts of `train2.validation_set`, seeds 1000 and up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from srd_plugin.miniature import train2  # noqa: E402
from srd_plugin.miniature.models2 import PATCH_SIZE, call_kwargs, load_second_pipeline  # noqa: E402


def tokens(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) latents as rows of one token each, in the order of Wan's `proj_out` features."""
    b, c, t, h, w = latents.shape
    pt, ph, pw = PATCH_SIZE
    x = latents.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(-1, pt * ph * pw * c)


def minor_basis(true_tokens: torch.Tensor, share: float = 0.99) -> torch.Tensor:
    """Orthonormal columns spanning the true tokens' principal directions past `share` of their power."""
    _, s, vh = torch.linalg.svd(true_tokens - true_tokens.mean(0), full_matrices=True)
    power = (s**2).cumsum(0) / (s**2).sum()
    major = int((power < share).sum()) + 1
    return vh[major:].T


def minor_power(rows: torch.Tensor, basis: torch.Tensor) -> float:
    """Mean power per token dimension of `rows` inside the subspace `basis` spans."""
    return float((rows @ basis).pow(2).sum(1).mean() / rows.shape[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a train2 work folder (latents.pt and result/)")
    parser.add_argument("--clips", type=int, default=4, help="validation prompts to generate")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    latents_file, result = args.work / "latents.pt", args.work / "result"
    if not latents_file.exists():
        parser.error(f"{latents_file} is missing: run train2 --work {args.work} up to the latents stage first")
    true_tokens = tokens(torch.load(latents_file, mmap=True)["validation_latents"].float())
    basis = minor_basis(true_tokens)
    pipe, others = load_second_pipeline(result)
    models = {"sketcher": pipe.transformer, **{k: v for k, v in others.items() if k == "renderer"}}
    noise = torch.randn(len(true_tokens), true_tokens.shape[1], generator=torch.Generator().manual_seed(0))
    print(f"token dimension {true_tokens.shape[1]}, minor subspace {basis.shape[1]} dims (past 99% of the power)")
    print("| latents | proj_out rank | power per dimension in the minor subspace |")
    print("|---|---:|---:|")
    print(f"| true (validation) | - | {minor_power(true_tokens - true_tokens.mean(0), basis):.4f} |")
    print(f"| Gaussian noise | - | {minor_power(noise, basis):.4f} |")
    for role, model in models.items():
        pipe.transformer = model
        rank = int(torch.linalg.matrix_rank(model.proj_out.weight.detach().float()))
        generated = []
        for prompt, seed in train2.validation_set(args.clips):
            kwargs = call_kwargs(prompt.text, seed=seed, num_inference_steps=args.steps, output_type="latent")
            generated.append(pipe(**kwargs).frames.float())
        rows = tokens(torch.cat(generated))
        print(f"| {role} only, {args.steps} steps | {rank} | {minor_power(rows - true_tokens.mean(0), basis):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
