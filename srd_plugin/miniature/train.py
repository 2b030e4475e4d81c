"""The training recipe of the miniature pair; reproduces the shipped weights.

    python -m srd_plugin.miniature.train --work runs/miniature            # all stages, resumable
    python -m srd_plugin.miniature.train --work runs/miniature --export   # ... then copy into the package

Stages, each checkpointed in the work folder and skipped or resumed when run again:

1. ``clips``: a bank of training clips (training prompts only), drawn from fixed seeds.
2. ``vae``: a tiny `AutoencoderKLWan` of the Wan2.2 kind (2x2 pixel patches, residual
   space-to-depth shortcuts; 4x spatial, 2x temporal compression to 16 channels) learns to
   reconstruct them from the posterior mean (MSE + L1, the object's pixels weighted 11x, + a small
   KL term); its learning rate decays to 0 over the last ``vae_decay_steps``.
3. ``latents``: the bank encoded (posterior mean); per-channel mean and std go into the VAE
   config (`latents_mean`, `latents_std`), which is how WanPipeline un-normalises latents.
   ``decoder``: the decoder alone goes on learning on these frozen latents, with an L1 loss on
   the spatial gradients added (sharper edges) and a cosine decay of its learning rate over the
   whole stage (the latent space does not move, so this can run beside stage 4).
4. ``sketcher`` and ``renderer``: two `WanTransformer3DModel`s learn flow matching on the
   normalised latents (x_t = (1 - s) x0 + s e, target e - x0, s from a shifted uniform that
   matches the inference schedule, 10% of prompts dropped to the empty prompt for CFG, the
   latent pixels under the object weighted 5x),
   conditioned on a frozen random UMT5 encoder through the in-memory tokenizer of
   `srd_plugin.testing`. Same data and recipe (learning rate 1e-3); only the size and the
   step count differ. An EMA of the weights is what gets saved.
5. ``pipeline``: a `WanPipeline` folder (save_pretrained) plus a ``renderer`` folder.

Every random draw of step k comes from a generator seeded with (seed, stage, k), so a
resumed run continues exactly where a straight run would be. The transformers' learning rates
are constant after a warm-up, so their step counts may be changed when resuming (to stop early
or go on); the VAE's step count may be changed until its final decay has begun. A finished
stage (its result folder exists) is reused as is.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import dataset
from .models import (
    FLOW_SHIFT,
    MAX_SEQUENCE_LENGTH,
    RENDERER_SIZE,
    SKETCHER_SIZE,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
    build_vae,
    make_scheduler,
)


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    clips_per_prompt: int = 48
    vae_steps: int = 3000
    vae_batch: int = 4
    vae_lr: float = 5e-4
    vae_kl_weight: float = 1e-6
    vae_object_weight: float = 10.0
    #: the VAE's learning rate follows a cosine from vae_lr down to 0 over its last this many steps
    vae_decay_steps: int = 600
    decoder_steps: int = 600
    sketcher_steps: int = 6600
    renderer_steps: int = 15850
    batch: int = 32
    sketcher_lr: float = 1e-3
    renderer_lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.995
    cfg_dropout: float = 0.1
    #: the flow loss on latent pixels under the object is weighted this much more (the object is what
    #: the prompt is about, and touches ~15% of the latent pixels)
    flow_object_weight: float = 4.0
    checkpoint_every: int = 50


def _generator(recipe: Recipe, stage: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(recipe.seed * 1_000_003 + stage * 100_003 + step)


def _vae_lr(recipe: Recipe, step: int, steps: int, decay_steps: int) -> float:
    """The VAE stages' learning rate: 50 warm-up steps, then `vae_lr`, then the final cosine decay."""
    return recipe.vae_lr * min(1.0, (step + 1) / 50) * _decay(step, steps, decay_steps)


def _decay(step: int, steps: int, decay_steps: int) -> float:
    """1 until the last `decay_steps` of `steps`, then a cosine down to 0 (fine detail needs a small step size)."""
    start = steps - decay_steps
    if decay_steps <= 0 or step < start:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - start) / decay_steps))


def _save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interrupted save never corrupts the checkpoint


def _resume(checkpoint: Path, **states: Any) -> int:
    """Load each named state (a module or an optimizer) from `checkpoint` if it exists; the step to go on from."""
    if not checkpoint.exists():
        return 0
    saved = torch.load(checkpoint)
    for name, target in states.items():
        target.load_state_dict(saved[name])
    return saved["step"]


def _checkpoint(checkpoint: Path, step: int, **states: Any) -> None:
    """Save each named state and the number of finished steps, atomically."""
    _save(checkpoint, {**{name: target.state_dict() for name, target in states.items()}, "step": step})


def _reconstruction_loss(recipe: Recipe, masks: torch.Tensor, decoded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MSE + 0.5 L1, the object's pixels (and one pixel around them) weighted `vae_object_weight` more.

    The object covers ~5% of the pixels: without the weight it is averaged away.
    """
    mask = torch.nn.functional.max_pool3d(masks[:, None].float(), (1, 3, 3), stride=1, padding=(0, 1, 1))
    weight = 1.0 + recipe.vae_object_weight * mask
    error = decoded - x
    return (weight * (error**2 + 0.5 * error.abs())).mean()


def _edge_loss(decoded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 distance of the spatial gradients: corners and edges are what tell a square from a circle."""
    return sum((torch.diff(decoded, dim=axis) - torch.diff(x, dim=axis)).abs().mean() for axis in (3, 4))


def _log(work: Path, message: str) -> None:
    with (work / "train.log").open("a") as handle:
        handle.write(f"{time.strftime('%H:%M:%S')} cpu {time.process_time():.0f}s {message}\n")


# -- stage 1: clips -----------------------------------------------------------------------
def stage_clips(work: Path, recipe: Recipe) -> dict[str, Any]:
    path = work / "clips.pt"
    if path.exists():
        return torch.load(path)
    prompts = dataset.prompts_of("train")
    clips, masks, labels = [], [], []
    for index, prompt in enumerate(tqdm(prompts, desc="clips")):
        for k in range(recipe.clips_per_prompt):
            params = dataset.sample_params(prompt, seed=recipe.seed * 100_000 + k)
            clips.append(dataset.to_model_range(dataset.render(params)))
            masks.append(dataset.coverage(params))
            labels.append(index)
    bank = {
        "clips": torch.from_numpy(np.stack(clips)).to(torch.float16),
        "masks": torch.from_numpy(np.stack(masks)).to(torch.float16),
        "labels": torch.tensor(labels),
        "prompts": [p.text for p in prompts],
    }
    _save(path, bank)
    return bank


# -- stage 2: VAE ---------------------------------------------------------------------------
def decode_unclamped(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """`vae.decode(z).sample` without the final clamp to [-1, 1] (it would zero the gradient of every
    pixel that overshoots): the same frame-by-frame causal decoding, then the 2x2 unpatchify."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for index in range(z.shape[2]):
        vae._conv_idx = [0]
        frames.append(
            vae.decoder(
                x[:, :, index : index + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=index == 0
            )
        )
    vae.clear_cache()
    out = torch.cat(frames, 2)
    return unpatchify(out, vae.config.patch_size) if vae.config.patch_size else out


def stage_vae(work: Path, recipe: Recipe, bank: dict[str, Any]) -> Any:
    final = work / "vae_final"
    if final.exists():
        from diffusers import AutoencoderKLWan

        return AutoencoderKLWan.from_pretrained(final).eval()
    vae = build_vae(seed=recipe.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    checkpoint = work / "vae.pt"
    start = _resume(checkpoint, model=vae, optimizer=optimizer)
    clips = bank["clips"]
    vae.train()
    progress = tqdm(range(start, recipe.vae_steps), desc="vae", initial=start, total=recipe.vae_steps)
    for step in progress:
        generator = _generator(recipe, 2, step)
        index = torch.randint(len(clips), (recipe.vae_batch,), generator=generator)
        x = clips[index].float()
        for group in optimizer.param_groups:
            group["lr"] = _vae_lr(recipe, step, recipe.vae_steps, recipe.vae_decay_steps)
        posterior = vae.encode(x).latent_dist
        # decode the posterior mean: with a few hundred steps there is no time to wait for the encoder
        # to shrink its initial unit variance, and the latents used later are the means anyway
        y = decode_unclamped(vae, posterior.mean)
        mse = ((y - x) ** 2).mean()
        loss = (
            _reconstruction_loss(recipe, bank["masks"][index], y, x)
            + _edge_loss(y, x)
            + recipe.vae_kl_weight * posterior.kl().mean()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.set_postfix(mse=f"{mse.item():.4f}")
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == recipe.vae_steps:
            _checkpoint(checkpoint, step + 1, model=vae, optimizer=optimizer)
            _log(work, f"vae step {step + 1} mse {mse.item():.5f}")
    vae.eval()
    vae.save_pretrained(final)
    return vae


# -- stage 3: latents -----------------------------------------------------------------------
@torch.no_grad()
def stage_latents(work: Path, recipe: Recipe, bank: dict[str, Any], vae: Any) -> dict[str, Any]:
    path = work / "latents.pt"
    if path.exists():
        return torch.load(path)
    means = []
    for chunk in tqdm(bank["clips"].split(16), desc="latents"):
        means.append(vae.encode(chunk.float()).latent_dist.mean)
    latents = torch.cat(means)
    channel_mean = latents.mean(dim=(0, 2, 3, 4))
    channel_std = latents.std(dim=(0, 2, 3, 4))
    shape = (1, -1, 1, 1, 1)
    normalised = (latents - channel_mean.view(shape)) / channel_std.view(shape)
    result = {
        "latents": normalised,
        "labels": bank["labels"],
        "prompts": bank["prompts"],
        "latents_mean": channel_mean.tolist(),
        "latents_std": channel_std.tolist(),
    }
    _save(path, result)
    _log(work, f"latents {tuple(latents.shape)} mean {channel_mean.tolist()} std {channel_std.tolist()}")
    return result


# -- stage 3b: decoder refinement -------------------------------------------------------------
def stage_decoder(work: Path, recipe: Recipe, bank: dict[str, Any], vae: Any, data: dict[str, Any]) -> Any:
    """Go on training the decoder alone, on the frozen latents of stage 3.

    The latent space stays exactly what the transformers learn on, so this stage can run
    beside them (in its own process) and still improve every decoded frame.
    """
    final = work / "vae_refined"
    if final.exists():
        from diffusers import AutoencoderKLWan

        return AutoencoderKLWan.from_pretrained(final).eval()
    vae = copy.deepcopy(vae)
    parameters = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=recipe.vae_lr, weight_decay=0.0)
    checkpoint = work / "decoder.pt"
    start = _resume(checkpoint, model=vae, optimizer=optimizer)
    shape = (1, -1, 1, 1, 1)
    raw = data["latents"] * torch.tensor(data["latents_std"]).view(shape) + torch.tensor(data["latents_mean"]).view(
        shape
    )
    vae.decoder.train()
    progress = tqdm(range(start, recipe.decoder_steps), desc="decoder", initial=start, total=recipe.decoder_steps)
    for step in progress:
        generator = _generator(recipe, 3, step)
        index = torch.randint(len(raw), (recipe.vae_batch,), generator=generator)
        x = bank["clips"][index].float()
        for group in optimizer.param_groups:
            group["lr"] = _vae_lr(recipe, step, recipe.decoder_steps, recipe.decoder_steps)
        y = decode_unclamped(vae, raw[index])
        loss = _reconstruction_loss(recipe, bank["masks"][index], y, x) + _edge_loss(y, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        mse = ((y - x) ** 2).mean()
        progress.set_postfix(mse=f"{mse.item():.4f}")
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == recipe.decoder_steps:
            _checkpoint(checkpoint, step + 1, model=vae, optimizer=optimizer)
            _log(work, f"decoder step {step + 1} mse {mse.item():.5f}")
    vae.eval()
    vae.save_pretrained(final)
    return vae


# -- stage 4: flow matching ----------------------------------------------------------------
@torch.no_grad()
def prompt_embeddings(tokenizer: Any, text_encoder: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings of each prompt, embedding of the empty prompt), exactly as WanPipeline computes them."""
    from diffusers import WanPipeline

    encoder_only = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=None, scheduler=None, transformer=None
    )
    positive, negative = encoder_only.encode_prompt(
        prompts, negative_prompt=[""] * len(prompts), max_sequence_length=MAX_SEQUENCE_LENGTH, device="cpu"
    )
    return positive, negative[:1]


def sample_sigmas(count: int, generator: torch.Generator) -> torch.Tensor:
    """Shifted uniform noise levels, s = shift u / (1 + (shift - 1) u): the density the sampler visits."""
    u = torch.rand(count, generator=generator)
    return FLOW_SHIFT * u / (1 + (FLOW_SHIFT - 1) * u)


def latent_masks(masks: torch.Tensor, temporal: int, spatial: int) -> torch.Tensor:
    """Pixel coverage (N, F, H, W) -> the latent pixels the object touches (N, 1, F', H', W'), 0 or 1.

    The causal VAE keeps frame 0 alone and folds each following `temporal` frames into one latent
    frame; a latent pixel covers `spatial` x `spatial` pixels.
    """
    masks = masks.float()
    first, rest = masks[:, :1], masks[:, 1:]
    rest = rest.reshape(rest.shape[0], -1, temporal, *rest.shape[2:]).amax(dim=2)
    folded = torch.cat([first, rest], dim=1)
    return (torch.nn.functional.max_pool2d(folded, spatial) > 0.05).float()[:, None]


def stage_flow(
    work: Path,
    recipe: Recipe,
    role: str,
    data: dict[str, Any],
    embeddings: torch.Tensor,
    empty: torch.Tensor,
    masks: torch.Tensor,
) -> Any:
    final = work / f"{role}_final"
    from diffusers import WanTransformer3DModel

    if final.exists():
        return WanTransformer3DModel.from_pretrained(final).eval()
    size, lr, steps, stage = (
        (SKETCHER_SIZE, recipe.sketcher_lr, recipe.sketcher_steps, 4)
        if role == "sketcher"
        else (RENDERER_SIZE, recipe.renderer_lr, recipe.renderer_steps, 5)
    )
    model = build_transformer(size, seed=recipe.seed + stage)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    checkpoint = work / f"{role}.pt"
    start = _resume(checkpoint, model=model, ema=ema, optimizer=optimizer)
    latents, labels = data["latents"], data["labels"]
    model.train()
    progress = tqdm(range(start, steps), desc=role, initial=start, total=steps)
    running = None
    for step in progress:
        generator = _generator(recipe, stage, step)
        index = torch.randint(len(latents), (recipe.batch,), generator=generator)
        x0 = latents[index]
        text = embeddings[labels[index]].clone()
        dropped = torch.rand(recipe.batch, generator=generator) < recipe.cfg_dropout
        text[dropped] = empty
        noise = torch.randn(x0.shape, generator=generator)
        sigma = sample_sigmas(recipe.batch, generator)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / recipe.warmup)
        prediction = model(xt, sigma * 1000, text, return_dict=False)[0]
        weight = 1.0 + recipe.flow_object_weight * masks[index]
        loss = (weight * (prediction - (noise - x0)) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(recipe.ema_decay, (step + 1) / (step + 10))
            for target, source in zip(ema.parameters(), model.parameters()):
                target.lerp_(source, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        progress.set_postfix(loss=f"{running:.4f}")
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == steps:
            _checkpoint(checkpoint, step + 1, model=model, ema=ema, optimizer=optimizer)
            _log(work, f"{role} step {step + 1} loss {running:.5f}")
    ema.save_pretrained(final)
    return ema


# -- stage 5: the pipeline folder ---------------------------------------------------------
def stage_pipeline(
    work: Path, vae: Any, latents: dict[str, Any], tokenizer: Any, text_encoder: Any, sketcher: Any, renderer: Any
) -> Path:
    from diffusers import WanPipeline

    out = work / "miniature"
    if out.exists():
        shutil.rmtree(out)
    vae.register_to_config(latents_mean=latents["latents_mean"], latents_std=latents["latents_std"])
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=make_scheduler(), transformer=sketcher
    )
    pipe.save_pretrained(out / "pipeline")
    renderer.save_pretrained(out / "renderer")
    return out


def _fixed_part(recipe: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run must share with the original. Step counts may change: the learning rate
    is constant after warm-up, so stopping at step n gives what a straight n-step run gives."""
    return {key: value for key, value in recipe.items() if not key.endswith("_steps")}


def train(work: Path, recipe: Recipe, only: str | None = None) -> Path | None:
    """Run (or resume) every stage; with `only="sketcher"` or `"renderer"` stop after that flow stage,
    so the two can train in separate processes once the latents exist."""
    work.mkdir(parents=True, exist_ok=True)
    recipe_file = work / "recipe.json"
    if recipe_file.exists() and _fixed_part(json.loads(recipe_file.read_text())) != _fixed_part(asdict(recipe)):
        raise ValueError(
            f"{work} holds a run of another recipe ({recipe_file}); only the step counts may change on resume"
        )
    recipe_file.write_text(json.dumps(asdict(recipe), indent=2))
    started = time.perf_counter()
    bank = stage_clips(work, recipe)
    vae = stage_vae(work, recipe, bank)
    data = stage_latents(work, recipe, bank, vae)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer), seed=recipe.seed)
    embeddings, empty = prompt_embeddings(tokenizer, text_encoder, data["prompts"])
    masks = latent_masks(bank["masks"], vae.config.scale_factor_temporal, vae.config.scale_factor_spatial)
    if only == "decoder":
        stage_decoder(work, recipe, bank, vae, data)
        _log(work, f"decoder done in this session: {time.perf_counter() - started:.0f} s")
        return None
    if only is not None:
        stage_flow(work, recipe, only, data, embeddings, empty, masks)
        _log(work, f"{only} done in this session: {time.perf_counter() - started:.0f} s")
        return None
    sketcher = stage_flow(work, recipe, "sketcher", data, embeddings, empty, masks)
    renderer = stage_flow(work, recipe, "renderer", data, embeddings, empty, masks)
    vae = stage_decoder(work, recipe, bank, vae, data)
    out = stage_pipeline(work, vae, data, tokenizer, text_encoder, sketcher, renderer)
    _log(work, f"done in this session: {time.perf_counter() - started:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, type=Path, help="work folder (checkpoints, log, the result)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--export", action="store_true", help="copy the result into the package's data folder")
    parser.add_argument(
        "--only",
        choices=("decoder", "sketcher", "renderer"),
        default=None,
        help="run just this stage (after the latents), e.g. in a process of its own",
    )
    for field, value in asdict(Recipe()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = Recipe(**{field: getattr(args, field) for field in asdict(Recipe())})
    out = train(args.work, recipe, only=args.only)
    if args.export and out is not None:
        from .models import WEIGHTS_DIR

        if WEIGHTS_DIR.exists():
            shutil.rmtree(WEIGHTS_DIR)
        shutil.copytree(out, WEIGHTS_DIR)
        print(f"exported to {WEIGHTS_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
