"""Wan2.1 14B sketches, 1.3B renders, both split across GPUs by diffusers' context parallelism.

One node, 4 GPUs (Ulysses degree 4: each GPU holds a quarter of the tokens and of the heads):

    torchrun --nproc-per-node 4 examples/multi_gpu_wan.py --prompt "an astronaut riding a horse"

The same code on 2 CPU processes with the tiny random-weight pair (gloo, no downloads):

    torchrun --nproc-per-node 2 examples/multi_gpu_wan.py --tiny

Every process loads the whole pipeline and both transformers (context parallelism splits
the tokens, not the weights), encodes the prompt, then moves the text encoder off the GPU.
Every process must use the same prompt and seed: the pipeline draws the initial noise on
each process, and the split assumes identical inputs everywhere. The first rank writes the
video and the trace; at the end all ranks compare their traces and outputs. See
docs/multi_gpu.md for several nodes and for the memory each process needs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from diffusers import (
    AutoencoderKLWan,
    ContextParallelConfig,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)

import srd_plugin as srd
from srd_plugin.parallel import cpu_device_count_shim


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sketcher", default="Wan-AI/Wan2.1-T2V-14B-Diffusers", help="pipeline folder or hub id")
    parser.add_argument("--renderer", default="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", help="pipeline folder or hub id")
    parser.add_argument("--ulysses", type=int, default=None, help="Ulysses degree (default: 4, or 2 with --tiny)")
    parser.add_argument("--ring", type=int, default=1, help="ring-attention degree (default: 1)")
    parser.add_argument(
        "--attention-backend",
        default=None,
        help="diffusers attention backend for both models, e.g. _native_cudnn (needed for --ring > 1)",
    )
    parser.add_argument("--prompt", default="an astronaut riding a horse on the moon, slowly panning camera")
    parser.add_argument("--negative-prompt", default="blurry, low quality, static")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: 50, or 10 with --tiny)")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--flow-shift", type=float, default=None, help="default: 5.0 from 720p up, else 3.0")
    parser.add_argument("--threshold", type=float, default=0.01, help="adaptive switch threshold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="srd-multi-gpu", help="output folder (written by the first rank)")
    parser.add_argument("--tiny", action="store_true", help="tiny random-weight pair on CPU processes (gloo)")
    args = parser.parse_args(argv)
    if args.ulysses is None:
        args.ulysses = 2 if args.tiny else 4
    if args.steps is None:
        args.steps = 10 if args.tiny else 50
    if args.tiny:
        args.height, args.width, args.frames = 32, 32, 9
    return args


def init_distributed() -> torch.device:
    """Join the torchrun group (once per process) and pick this process's device."""
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)  # NCCL collectives (and srd's decision broadcast) use it
        return device
    return torch.device("cpu")


def load(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any]:
    """The sketcher pipeline on `device` and the renderer transformer (srd.enable moves it beside the sketcher)."""
    if args.tiny:
        from srd_plugin.testing import tiny_wan_pair

        pipe, renderer = tiny_wan_pair()
    else:
        # diffusers' recommended Wan set-up: the VAE in float32, the rest in bfloat16
        vae = AutoencoderKLWan.from_pretrained(args.sketcher, subfolder="vae", dtype=torch.float32)
        pipe = WanPipeline.from_pretrained(args.sketcher, vae=vae, dtype=torch.bfloat16).to(device)
        flow_shift = args.flow_shift if args.flow_shift is not None else (5.0 if args.height >= 720 else 3.0)
        pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=flow_shift)
        renderer = WanTransformer3DModel.from_pretrained(args.renderer, subfolder="transformer", dtype=torch.bfloat16)
    if args.attention_backend is not None:  # ring attention needs one that returns the log-sum-exp
        for model in (pipe.transformer, renderer):
            model.set_attention_backend(args.attention_backend)
    return pipe, renderer


def encode_then_free_text_encoder(pipe: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Prompt embeddings computed once; the umT5-xxl encoder (~11 GB in bf16) then leaves the GPU."""
    prompt_embeds, negative_embeds = pipe.encode_prompt(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        do_classifier_free_guidance=args.guidance > 1.0,
        max_sequence_length=16 if args.tiny else 512,
        device=device,
    )
    pipe.text_encoder.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds)


def digest(value: Any) -> str:
    array = value.float().cpu().numpy() if isinstance(value, torch.Tensor) else value
    return hashlib.sha256(array.tobytes()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    pipe, renderer = load(args, device)
    pipe.set_progress_bar_config(disable=rank != 0)
    embeds = encode_then_free_text_encoder(pipe, args, device)

    parallel_config = ContextParallelConfig(ulysses_degree=args.ulysses, ring_degree=args.ring)
    with cpu_device_count_shim():  # a no-op on GPUs; lets diffusers split models on CPU processes
        srd.enable(pipe, renderer, parallel_config=parallel_config, threshold=args.threshold)

    output = pipe(
        **embeds,
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=torch.Generator().manual_seed(args.seed),  # the same noise on every rank
        output_type="latent" if args.tiny else "np",
    ).frames
    trace = srd.last_trace(pipe)

    # every rank must have followed the same switch and produced the same output
    traces: list[Any] = [None] * world
    digests: list[Any] = [None] * world
    dist.all_gather_object(traces, trace.to_json())
    dist.all_gather_object(digests, digest(output))
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    memories: list[Any] = [None] * world
    dist.all_gather_object(memories, memory)

    if rank == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        trace.save(out / "trace.json")
        if args.tiny:
            torch.save(output, out / "latents.pt")
        else:
            from srd_plugin.video import write_video

            write_video(output[0], out / "srd.mp4", fps=16)
        print(trace.summary())
        print(f"traces identical on all {world} ranks: {len(set(traces)) == 1}")
        print(f"outputs identical on all {world} ranks: {len(set(digests)) == 1}")
        if memory is not None:
            print("peak GPU memory per rank (GiB): " + ", ".join(f"{m:.1f}" for m in memories))
        print(f"wrote {out}")
    srd.disable(pipe)
    return 0 if len(set(traces)) == 1 and len(set(digests)) == 1 else 1


if __name__ == "__main__":
    code = main()
    dist.destroy_process_group()
    sys.exit(code)
