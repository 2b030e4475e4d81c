"""The training recipe of the second miniature world (`world2`): resumable, seeded, budgeted.

    python -m srd_plugin.miniature.train2 --work runs/m2 --budget 30          # every stage, 30 min each at most
    python -m srd_plugin.miniature.train2 --work runs/m2 --stop-after vae --check-vae   # the design check
    python -m srd_plugin.miniature.train2 --work runs/m2 --tiny               # seconds: the same code path

Stages, each checkpointed in the work folder and resumed when run again:

1. ``clips``: a bank of training clips (training prompts, seeds 0..999), stored as 8-bit frames.
2. ``vae``: an `AutoencoderKLWan` (`models2.build_vae`) learns to reconstruct random crops
   (16x16 pixels of 5 frames for the first ``vae_short_steps`` steps, then of 9 frames, and of the
   whole clip's 17 for the last ``vae_full_length_steps``; 12 per step) of the bank from the
   posterior mean: MSE + 0.5 L1 with the objects' pixels weighted more, + the L1 distance of the
   spatial gradients (edges and patterns), + ``vae_band_weight`` times the MSE of the high bands
   (the patterns), + a small KL term; constant learning rate after 50 warm-up steps, a cosine
   decay over the last ``vae_decay_steps`` of ``vae_steps``.
   Then the trained VAE is folded (`fold.fold_vae`) into one whose latents are the top
   ``LATENT_CHANNELS`` principal components of its posterior means over ``fold_clips`` bank clips
   (``vae_folded``): the transformers must be as wide as a token, so the latents must be narrow,
   and a VAE trained narrow from the start lost objects and patterns. The fold is exact but where
   the decoder's first convolution reads zero padding, so its decoder alone is then tuned for
   ``fold_tune_steps`` steps on whole clips (not resumable: a few minutes). ``--check-vae`` checks it.
3. ``latents``: training clips (``single_seeds`` per one-object prompt, ``pair_seeds`` per
   two-object prompt) and a fixed validation set encoded (posterior mean), normalised per channel;
   the statistics go into the VAE config, which is how `WanPipeline` un-normalises.
4. ``sketcher``, ``renderer``, ``specialist``: `WanTransformer3DModel`s learn flow matching on the
   latents (as in the first world: x_t = (1 - s) x0 + s e, target e - x0, s from the shift-3
   density, 10% empty prompts for CFG, latent pixels under an object weighted more, AdamW, EMA).
   The renderer has the sketcher's width and fewer blocks; the specialist has the renderer's size
   and sees only s <= ``specialist_max_sigma`` (the noise levels it serves after a switch). Each
   evaluates the flow loss of its EMA on the validation latents (fixed noise) every
   ``eval_every`` steps, keeps the best, and stops when ``patience`` evaluations in a row did not
   improve it ("as long as it keeps improving on validation") or at its step count.
5. ``pipeline``: ``result/pipeline`` (a `WanPipeline` folder with the sketcher) plus
   ``result/renderer`` and ``result/specialist``, all loadable with ``from_pretrained``.

``--budget M`` (or ``vae=M1,sketcher=M2,...``) stops a stage after that many minutes of this
invocation's wall time; the stage is then
finished provisionally (its result is written, marked ``"budget"``) and the next run resumes it
from its checkpoint. Every random draw of step k comes from a generator seeded with (seed, stage,
k), and checkpoints are atomic, so a resumed run continues exactly where a straight run would
(a test checks it). A folder that holds a budget-stopped stage's final weights but not its
checkpoint (a copy restored from ``checkpoints/``, see docs/miniature.md) goes on from those weights
with a fresh optimizer. One torch thread unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..testing import WanSize
from . import world2
from .evaluate2 import score_detail, score_semantics, summarise
from .fold import fold_vae, principal_components
from .models import FLOW_SHIFT, build_text_encoder, build_tokenizer, make_scheduler
from .models2 import LATENT_CHANNELS, RENDERER_SIZE, SKETCHER_SIZE, SPECIALIST_SIZE, build_transformer, build_vae
from .train import (
    _checkpoint,
    _edge_loss,
    _generator,
    _log,
    _reconstruction_loss,
    _resume,
    _save,
    _vae_lr,
    decode_unclamped,
    latent_masks,
    prompt_embeddings,
)

STAGES = ("clips", "vae", "latents", "sketcher", "renderer", "specialist", "pipeline")
#: generator stage numbers of the flow stages (the VAE is 2, as in the first recipe)
FLOW_STAGES = {"sketcher": 4, "renderer": 5, "specialist": 6}
#: as narrow as `models2.build_transformer` allows (the width must cover a token), as shallow as runs
TINY_SIZES = {
    "sketcher": WanSize(num_layers=2, num_attention_heads=1, attention_head_dim=128, ffn_dim=32),
    "renderer": WanSize(num_layers=1, num_attention_heads=1, attention_head_dim=128, ffn_dim=32),
    "specialist": WanSize(num_layers=1, num_attention_heads=1, attention_head_dim=128, ffn_dim=32),
}
SIZES = {"sketcher": SKETCHER_SIZE, "renderer": RENDERER_SIZE, "specialist": SPECIALIST_SIZE}


@dataclass(frozen=True)
class Recipe2:
    seed: int = 0
    vae_clips: int = 1024
    vae_base_dim: int = 24
    vae_steps: int = 3600
    vae_decay_steps: int = 600
    vae_batch: int = 12
    vae_crop: int = 16
    vae_crop_frames: int = 9
    #: the first `vae_short_steps` steps use crops of `vae_short_frames` frames (two latent frames):
    #: the patterns are learned there at half the cost; the full crops then teach the decoder's
    #: steady causal state (later latent frames), which short crops never show it
    vae_short_frames: int = 5
    vae_short_steps: int = 2000
    #: the last `vae_full_length_steps` steps use crops as long as the clip (17 frames): a 9-frame crop spans three
    #: latent frames, and a decoder never shown the fourth and fifth degrades there (frames 9-16 lost 5-8 dB and
    #: some objects' colours)
    vae_full_length_steps: int = 600
    vae_lr: float = 8e-4
    vae_kl_weight: float = 1e-6
    #: read by the first recipe's reconstruction loss: the objects' pixels (and one around them) weigh this much more
    vae_object_weight: float = 4.0
    #: weight of the MSE between the high bands (frames minus a 1.5 px Gaussian low-pass) of output and input
    vae_band_weight: float = 10.0
    #: bank clips whose latents give the principal components the VAE is folded onto
    fold_clips: int = 128
    #: steps (whole-clip crops) and peak learning rate of the folded decoder's tuning (cosine to 0)
    fold_tune_steps: int = 300
    fold_tune_lr: float = 2e-4
    #: clips per one-object / two-object training prompt (3110 in all: encoding them takes ~20 CPU-minutes)
    single_seeds: int = 24
    pair_seeds: int = 2
    #: use every n-th training prompt (1: all; the tiny mode thins them out)
    prompt_stride: int = 1
    validation_clips: int = 96
    sketcher_steps: int = 20000
    renderer_steps: int = 40000
    specialist_steps: int = 40000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.995
    cfg_dropout: float = 0.1
    flow_object_weight: float = 2.0
    specialist_max_sigma: float = 0.9
    #: the noise levels training draws: "shift3" (s = 3u / (1 + 2u), the schedule's own density, which puts a
    #: quarter of the draws above 0.9 where little but the mean can be learned) or "logit-normal" (s =
    #: sigmoid(n), n ~ N(0, 1): SD3's choice, most draws at the mid levels where this world's layouts are
    #: decided, docs/miniature.md). Validation always uses "shift3", so runs of either stay comparable.
    sigma_density: str = "shift3"
    #: the sketcher's attention heads at its fixed width (128 = heads x head dim): more heads, more attention
    #: maps to find, follow and bind objects, at the same cost per step
    sketcher_heads: int = 2
    eval_every: int = 250
    patience: int = 8
    checkpoint_every: int = 50
    tiny: bool = False


#: the `--tiny` recipe: every stage and code path in seconds on one core (results mean nothing)
TINY = Recipe2(
    vae_clips=4,
    vae_base_dim=8,
    vae_steps=5,
    vae_decay_steps=2,
    vae_short_steps=2,
    vae_full_length_steps=1,
    fold_tune_steps=1,
    vae_batch=2,
    single_seeds=1,
    pair_seeds=1,
    prompt_stride=200,
    validation_clips=4,
    sketcher_steps=4,
    renderer_steps=4,
    specialist_steps=4,
    batch=4,
    warmup=2,
    eval_every=2,
    patience=1,
    checkpoint_every=2,
    tiny=True,
)


class Budget:
    """Wall-clock minutes each stage may run in this invocation: one figure for all, or per stage.

    `Budget.parse("30")` gives every stage 30 minutes; `Budget.parse("vae=3,sketcher=4")` gives those
    two their own and the others no limit; `Budget.parse("20,vae=0")` gives the VAE none (a
    provisionally finished VAE is then used as it is) and every other stage 20.
    """

    def __init__(self, minutes: float | None = None, stages: dict[str, float] | None = None) -> None:
        for name, value in [("every stage", minutes), *(stages or {}).items()]:
            if value is not None and value < 0:
                raise ValueError(f"--budget must be >= 0 minutes, got {value} for {name}")
        unknown = set(stages or {}) - set(STAGES)
        if unknown:
            raise ValueError(f"--budget names unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}")
        self.minutes, self.stages = minutes, dict(stages or {})

    @classmethod
    def parse(cls, text: str | None) -> Budget:
        if text is None:
            return cls()
        minutes, stages = None, {}
        for part in text.split(","):
            name, _, value = part.rpartition("=")
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"--budget takes minutes like 30 or vae=3,sketcher=4; got {text!r}") from None
            if name:
                stages[name.strip()] = number
            else:
                minutes = number
        return cls(minutes, stages)

    def timer(self, stage: str) -> Any:
        """A function telling whether `stage`'s minutes, counted from now, are spent."""
        minutes = self.stages.get(stage, self.minutes)
        started = time.perf_counter()
        return lambda: minutes is not None and time.perf_counter() - started >= 60.0 * minutes


def _done(folder: Path) -> dict[str, Any] | None:
    marker = folder / "done.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def _mark_done(folder: Path, reason: str, step: int, **extra: Any) -> None:
    (folder / "done.json").write_text(json.dumps({"reason": reason, "step": step, **extra}, indent=2))


def training_prompts(recipe: Recipe2) -> list[world2.Prompt2]:
    return world2.prompts_of("train")[:: recipe.prompt_stride]


def clip_set(split: str, count: int) -> list[tuple[world2.Prompt2, int]]:
    """A fixed (prompt, seed) list of `count` clips of `split`: a quarter one-object, the rest two-object;
    seeds 1000+, never used in training. Fixed so that every benchmark of a split sees the same clips."""
    prompts = world2.prompts_of(split)
    singles = [p for p in prompts if len(p.objects) == 1]
    pairs = [p for p in prompts if len(p.objects) == 2]
    chosen = [singles[i % len(singles)] for i in range(count // 4)]
    chosen += [pairs[(7 * i) % len(pairs)] for i in range(count - count // 4)]
    return [(prompt, 1000 + index) for index, prompt in enumerate(chosen)]


def validation_set(count: int) -> list[tuple[world2.Prompt2, int]]:
    """The fixed validation clips (`clip_set`): what training's checks and settings may look at."""
    return clip_set("validation", count)


def _frames_to_model(frames: np.ndarray) -> torch.Tensor:
    """(N, F, H, W, 3) in [0, 1] -> (N, 3, F, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).float().permute(0, 4, 1, 2, 3) * 2 - 1


def _union_coverage(params: world2.ClipParams2) -> np.ndarray:
    return world2.coverage(params).max(axis=0)


# -- stage 1: clips -----------------------------------------------------------------------------
def stage_clips(work: Path, recipe: Recipe2) -> dict[str, torch.Tensor]:
    path = work / "clips.pt"
    if path.exists():
        return torch.load(path)
    prompts = training_prompts(recipe)
    frames, masks = [], []
    for k in range(recipe.vae_clips):
        params = world2.sample_params(
            prompts[k % len(prompts)], seed=(recipe.seed * 100_000 + k // len(prompts)) % 1000
        )
        frames.append(np.round(world2.render(params) * 255).astype(np.uint8))
        masks.append(np.round(_union_coverage(params) * 255).astype(np.uint8))
    bank = {"frames": torch.from_numpy(np.stack(frames)), "masks": torch.from_numpy(np.stack(masks))}
    _save(path, bank)
    _log(work, f"clips {tuple(bank['frames'].shape)}")
    return bank


# -- stage 2: VAE ---------------------------------------------------------------------------------
def _crops(
    recipe: Recipe2, bank: dict[str, torch.Tensor], generator: torch.Generator, step: int, whole: bool = False
) -> tuple[torch.Tensor, ...]:
    """Random crops aligned to the latent grid: frames (B, 3, F, H, W) in [-1, 1], coverage (B, F, H, W);
    as long as the step's phase says, or as the clip if `whole`."""
    frames, masks = bank["frames"], bank["masks"]
    size = recipe.vae_crop
    if whole or step >= recipe.vae_steps - recipe.vae_full_length_steps:
        length = frames.shape[1]
    elif step < recipe.vae_short_steps:
        length = recipe.vae_short_frames
    else:
        length = recipe.vae_crop_frames
    index = torch.randint(len(frames), (recipe.vae_batch,), generator=generator)
    starts = torch.randint(frames.shape[1] - length + 1, (recipe.vae_batch,), generator=generator)
    cells = (frames.shape[2] - size) // 8 + 1
    ys = torch.randint(cells, (recipe.vae_batch,), generator=generator) * 8
    xs = torch.randint(cells, (recipe.vae_batch,), generator=generator) * 8
    crops = [
        (frames[i, t : t + length, y : y + size, x : x + size], masks[i, t : t + length, y : y + size, x : x + size])
        for i, t, y, x in zip(index.tolist(), starts.tolist(), ys.tolist(), xs.tolist())
    ]
    x = torch.stack([c for c, _ in crops]).float().permute(0, 4, 1, 2, 3) / 127.5 - 1
    return x, torch.stack([m for _, m in crops]).float() / 255


def high_band(x: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """(B, C, F, H, W) minus its spatial Gaussian low-pass (std `sigma` px, reflected at the borders):
    the fine patterns, which a plain reconstruction loss lets a young VAE average away."""
    radius = int(3 * sigma)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    taps = taps / taps.sum()
    batch, channels, frames, height, width = x.shape
    flat = x.permute(0, 2, 1, 3, 4).reshape(-1, 1, height, width)
    flat = torch.nn.functional.pad(flat, (radius, radius, radius, radius), mode="reflect")
    low = torch.nn.functional.conv2d(flat, taps.view(1, 1, 1, -1))
    low = torch.nn.functional.conv2d(low, taps.view(1, 1, -1, 1))
    low = low.reshape(batch, frames, channels, height, width).permute(0, 2, 1, 3, 4)
    return x - low


def _vae_loss(recipe: Recipe2, x: torch.Tensor, masks: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reconstruction (object pixels weighted), edges, and the high bands (the patterns) of `y` against `x`."""
    loss = _reconstruction_loss(recipe, masks, y, x) + _edge_loss(y, x)
    if recipe.vae_band_weight:
        loss = loss + recipe.vae_band_weight * ((high_band(y) - high_band(x)) ** 2).mean()
    return loss


def stage_vae(work: Path, recipe: Recipe2, bank: dict[str, torch.Tensor], budget: Budget, device: str = "cpu") -> Any:
    from diffusers import AutoencoderKLWan

    final = work / "vae_final"
    done = _done(final)
    if done is not None and done["reason"] != "budget" and done["step"] >= recipe.vae_steps:
        return AutoencoderKLWan.from_pretrained(final).eval()
    vae = build_vae(base_dim=recipe.vae_base_dim, seed=recipe.seed).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    checkpoint = work / "vae.pt"
    step = _resume(checkpoint, model=vae, optimizer=optimizer)
    vae.train()
    expired = budget.timer("vae")
    while step < recipe.vae_steps and not expired():
        x, masks = (t.to(device) for t in _crops(recipe, bank, _generator(recipe, 2, step), step))
        for group in optimizer.param_groups:
            group["lr"] = _vae_lr(recipe, step, recipe.vae_steps, recipe.vae_decay_steps)
        posterior = vae.encode(x).latent_dist
        y = decode_unclamped(vae, posterior.mean)
        loss = _vae_loss(recipe, x, masks, y) + recipe.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % recipe.checkpoint_every == 0 or step == recipe.vae_steps:
            _checkpoint(checkpoint, step, model=vae, optimizer=optimizer)
            _log(work, f"vae step {step} loss {loss.item():.5f} mse {((y - x) ** 2).mean().item():.5f}")
    _checkpoint(checkpoint, step, model=vae, optimizer=optimizer)
    vae.eval()
    vae.save_pretrained(final)
    _mark_done(final, "steps" if step >= recipe.vae_steps else "budget", step)
    _log(work, f"vae stopped at step {step} ({_done(final)['reason']})")
    return vae


def stage_fold(work: Path, recipe: Recipe2, bank: dict[str, torch.Tensor], vae: Any, vae_step: int) -> Any:
    """The trained VAE folded onto the top `LATENT_CHANNELS` principal components of its latents (`fold`)."""
    from diffusers import AutoencoderKLWan

    final = work / "vae_folded"
    done = _done(final)
    if done is not None and done["step"] == vae_step:
        return AutoencoderKLWan.from_pretrained(final).eval()
    frames = bank["frames"][: recipe.fold_clips].float().div(255).numpy()
    with torch.no_grad():
        means = [
            vae.encode(_frames_to_model(frames[start : start + 16]).to(vae.device)).latent_dist.mean.cpu()
            for start in range(0, len(frames), 16)
        ]
    mean, components, share = principal_components(torch.cat(means), LATENT_CHANNELS)
    folded = fold_vae(vae.cpu(), mean, components).to(vae.device)
    _log(work, f"vae folded onto {LATENT_CHANNELS} principal components holding {float(share):.4f} of the power")
    _tune_folded_decoder(recipe, bank, folded)
    folded.save_pretrained(final)
    _mark_done(final, "folded", vae_step, channels=LATENT_CHANNELS, power_share=float(share))
    _log(work, f"folded decoder tuned for {recipe.fold_tune_steps} steps")
    return folded


def _tune_folded_decoder(recipe: Recipe2, bank: dict[str, torch.Tensor], folded: Any) -> None:
    """A few steps on whole-clip crops for the decoder alone: the fold is exact except where its first
    convolution reads zero padding (about 1 dB of PSNR); the encoder, and so the latent space, stay fixed."""
    parameters = [*folded.post_quant_conv.parameters(), *folded.decoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.fold_tune_lr, weight_decay=0.0)
    tuning = replace(recipe, vae_lr=recipe.fold_tune_lr)
    for step in range(recipe.fold_tune_steps):
        x, masks = (t.to(folded.device) for t in _crops(recipe, bank, _generator(recipe, 3, step), step, whole=True))
        for group in optimizer.param_groups:
            group["lr"] = _vae_lr(tuning, step, recipe.fold_tune_steps, recipe.fold_tune_steps)
        with torch.no_grad():
            z = folded.encode(x).latent_dist.mean
        loss = _vae_loss(recipe, x, masks, decode_unclamped(folded, z))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    folded.eval()


@torch.no_grad()
def reconstruct(vae: Any, frames: np.ndarray) -> np.ndarray:
    """A clip (F, H, W, 3) in [0, 1] through the VAE (posterior mean, the decoder with its clamp)."""
    z = vae.encode(_frames_to_model(frames[None]).to(vae.device)).latent_dist.mean
    decoded = vae.decode(z).sample[0]
    return ((decoded.clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).cpu().numpy()


def check_vae(vae: Any, count: int) -> dict[str, Any]:
    """The design check that needs no transformer: validation clips through the VAE keep their semantics and detail?

    Returns the summaries of the true clips (the evaluators' own ceiling) and of their reconstructions.
    """
    truths, reconstructions = [], []
    for prompt, seed in validation_set(count):
        clip = world2.make_clip(prompt, seed)
        out = reconstruct(vae, clip)
        truths.append((score_semantics(clip, prompt), score_detail(clip, clip)))
        reconstructions.append((score_semantics(out, prompt), score_detail(out, clip)))
    return {
        name: asdict(summarise([s for s, _ in rows], [d for _, d in rows]))
        for name, rows in (("true", truths), ("through_vae", reconstructions))
    }


# -- stage 3: latents -------------------------------------------------------------------------------
@torch.no_grad()
def stage_latents(work: Path, recipe: Recipe2, vae: Any, vae_step: int) -> dict[str, Any]:
    path = work / "latents.pt"
    if path.exists():
        saved = torch.load(path)
        if saved["vae_step"] == vae_step:
            return saved
        if any((work / f"{role}.pt").exists() for role in FLOW_STAGES):
            raise ValueError(
                f"the VAE in {work} moved on (step {saved['vae_step']} -> {vae_step}) after transformers began "
                "training on its latents; start a new work folder, or remove the transformer checkpoints"
            )
    prompts = training_prompts(recipe)
    items = [
        (index, seed)
        for index, prompt in enumerate(prompts)
        for seed in range(recipe.single_seeds if len(prompt.objects) == 1 else recipe.pair_seeds)
    ]
    validation = validation_set(recipe.validation_clips)

    def encode(pairs: list[tuple[world2.Prompt2, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        means, masks = [], []
        for start in range(0, len(pairs), 16):
            params = [world2.sample_params(p, s) for p, s in pairs[start : start + 16]]
            frames = np.stack([world2.render(q) for q in params])
            means.append(vae.encode(_frames_to_model(frames).to(vae.device)).latent_dist.mean.cpu())
            masks.append(torch.from_numpy(np.stack([_union_coverage(q) for q in params])))
        return torch.cat(means), torch.cat(masks)

    latents, masks = encode([(prompts[i], s) for i, s in items])
    validation_latents, validation_masks = encode(validation)
    mean, std = latents.mean(dim=(0, 2, 3, 4)), latents.std(dim=(0, 2, 3, 4))
    shape = (1, -1, 1, 1, 1)
    factors = (vae.config.scale_factor_temporal, vae.config.scale_factor_spatial)
    result = {
        "vae_step": vae_step,
        "latents": (latents - mean.view(shape)) / std.view(shape),
        "masks": latent_masks(masks, *factors),
        "labels": torch.tensor([i for i, _ in items]),
        "prompts": [p.text for p in prompts],
        "validation_latents": (validation_latents - mean.view(shape)) / std.view(shape),
        "validation_masks": latent_masks(validation_masks, *factors),
        "validation_prompts": [p.text for p, _ in validation],
        "latents_mean": mean.tolist(),
        "latents_std": std.tolist(),
    }
    _save(path, result)
    _log(work, f"latents {tuple(latents.shape)}, validation {tuple(validation_latents.shape)}")
    return result


# -- stage 4: flow matching ---------------------------------------------------------------------------
SIGMA_DENSITIES = ("shift3", "logit-normal")


def sample_sigmas(
    count: int, generator: torch.Generator, max_sigma: float = 1.0, density: str = "shift3"
) -> torch.Tensor:
    """Noise levels restricted to s <= max_sigma, by inverting the density's CDF below the matching bound.

    "shift3": s = 3u / (1 + 2u), u uniform; "logit-normal": s = sigmoid(n), n standard normal.
    """
    if density == "shift3":
        u_max = max_sigma / (FLOW_SHIFT - (FLOW_SHIFT - 1) * max_sigma)
        u = torch.rand(count, generator=generator) * u_max
        return FLOW_SHIFT * u / (1 + (FLOW_SHIFT - 1) * u)
    if density == "logit-normal":
        bound = torch.special.ndtr(torch.logit(torch.tensor(max_sigma, dtype=torch.float64)))
        u = torch.rand(count, generator=generator, dtype=torch.float64) * bound
        return torch.sigmoid(torch.special.ndtri(u)).float()
    raise ValueError(f"unknown sigma density {density!r}; choose one of {', '.join(SIGMA_DENSITIES)}")


def flow_size(recipe: Recipe2, role: str) -> WanSize:
    """The transformer a flow stage trains: `SIZES[role]` (or the tiny one), the sketcher with `sketcher_heads`."""
    size = (TINY_SIZES if recipe.tiny else SIZES)[role]
    if role != "sketcher" or recipe.sketcher_heads == size.num_attention_heads:
        return size
    width = size.num_attention_heads * size.attention_head_dim
    if width % recipe.sketcher_heads:
        raise ValueError(f"sketcher_heads must divide the sketcher's width {width}, got {recipe.sketcher_heads}")
    return replace(size, num_attention_heads=recipe.sketcher_heads, attention_head_dim=width // recipe.sketcher_heads)


def _flow_loss(
    model: Any,
    x0: torch.Tensor,
    text: torch.Tensor,
    masks: torch.Tensor,
    weight: float,
    generator: torch.Generator,
    max_sigma: float,
    density: str = "shift3",
) -> torch.Tensor:
    noise = torch.randn(x0.shape, generator=generator)  # drawn on the CPU: the same on every device
    sigma = sample_sigmas(len(x0), generator, max_sigma, density)
    device = next(model.parameters()).device
    x0, text, masks, noise, sigma = (t.to(device) for t in (x0, text, masks, noise, sigma))
    s = sigma.view(-1, 1, 1, 1, 1)
    prediction = model((1 - s) * x0 + s * noise, sigma * 1000, text, return_dict=False)[0]
    return ((1.0 + weight * masks) * (prediction - (noise - x0)) ** 2).mean()


@torch.no_grad()
def validation_loss(model: Any, data: dict[str, Any], text: torch.Tensor, recipe: Recipe2, max_sigma: float) -> float:
    """The flow loss on the validation latents, with noise and noise levels fixed for the whole run."""
    generator = torch.Generator().manual_seed(recipe.seed * 7 + 12345)
    losses = []
    for start in range(0, len(data["validation_latents"]), recipe.batch):
        part = slice(start, start + recipe.batch)
        losses.append(
            _flow_loss(
                model,
                data["validation_latents"][part],
                text[part],
                data["validation_masks"][part],
                recipe.flow_object_weight,
                generator,
                max_sigma,
            ).item()
        )
    return float(np.mean(losses))


def stage_flow(
    work: Path,
    recipe: Recipe2,
    role: str,
    data: dict[str, Any],
    text: dict[str, torch.Tensor],
    budget: Budget,
    device: str = "cpu",
) -> Any:
    from diffusers import WanTransformer3DModel

    final = work / f"{role}_final"
    done = _done(final)
    if done is not None and done["reason"] != "budget":
        return WanTransformer3DModel.from_pretrained(final).eval()
    stage = FLOW_STAGES[role]
    size = flow_size(recipe, role)
    steps = getattr(recipe, f"{role}_steps")
    max_sigma = recipe.specialist_max_sigma if role == "specialist" else 1.0
    model = build_transformer(size, seed=recipe.seed + stage).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    best = copy.deepcopy(ema)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    checkpoint = work / f"{role}.pt"
    step = _resume(checkpoint, model=model, ema=ema, best=best, optimizer=optimizer)
    history = torch.load(checkpoint)["history"] if checkpoint.exists() else []
    if not checkpoint.exists() and done is not None:
        step, history = _warm_start(final, done, model, ema, best)
        _log(work, f"{role} warm start from {final.name} at step {step}: the optimizer's state was not kept")
    latents, labels = data["latents"], data["labels"]
    model.train()
    expired = budget.timer(role)

    def plateaued() -> bool:
        losses = [loss for _, loss in history]
        return len(losses) > recipe.patience and min(losses[-recipe.patience :]) >= min(losses[: -recipe.patience])

    while step < steps and not plateaued() and not expired():
        generator = _generator(recipe, stage, step)
        index = torch.randint(len(latents), (recipe.batch,), generator=generator)
        conditioning = text["train"][labels[index]].clone()
        conditioning[torch.rand(recipe.batch, generator=generator) < recipe.cfg_dropout] = text["empty"]
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * min(1.0, (step + 1) / recipe.warmup)
        loss = _flow_loss(
            model,
            latents[index],
            conditioning,
            data["masks"][index],
            recipe.flow_object_weight,
            generator,
            max_sigma,
            recipe.sigma_density,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(recipe.ema_decay, (step + 1) / (step + 10))
            for target, source in zip(ema.parameters(), model.parameters()):
                target.lerp_(source, 1 - decay)
        step += 1
        if step % recipe.eval_every == 0:
            history.append((step, validation_loss(ema, data, text["validation"], recipe, max_sigma)))
            if history[-1][1] <= min(loss for _, loss in history):
                best.load_state_dict(ema.state_dict())
            _log(work, f"{role} step {step} loss {loss.item():.5f} validation {history[-1][1]:.5f}")
        if step % recipe.checkpoint_every == 0 or step == steps:
            _checkpoint(checkpoint, step, model=model, ema=ema, best=best, optimizer=optimizer)
            _save(checkpoint, {**torch.load(checkpoint), "history": history})
    _checkpoint(checkpoint, step, model=model, ema=ema, best=best, optimizer=optimizer)
    _save(checkpoint, {**torch.load(checkpoint), "history": history})
    reason = "plateau" if plateaued() else "steps" if step >= steps else "budget"
    result = best if history else ema
    result.save_pretrained(final)
    best_step = min(history, key=lambda item: item[1])[0] if history else step
    _mark_done(final, reason, step, best_step=best_step, history=history)
    _log(work, f"{role} stopped at step {step} ({reason}); kept the EMA of step {best_step}")
    return result


def _warm_start(final: Path, done: dict[str, Any], *modules: torch.nn.Module) -> tuple[int, list[tuple[int, float]]]:
    """Go on from a budget-stopped stage's kept weights when its checkpoint is gone.

    A work folder restored from `checkpoints/` (the copy a session commits because work folders do not
    survive between sessions) holds each stage's final weights and done.json, not its checkpoint of
    model, EMA and optimizer: every module starts from the kept weights (the best EMA), Adam starts
    afresh, and the step count and validation history go on from done.json.
    """
    from diffusers import WanTransformer3DModel

    kept = WanTransformer3DModel.from_pretrained(final).state_dict()
    for module in modules:
        module.load_state_dict(kept)
    return done["step"], [(int(step), float(loss)) for step, loss in done.get("history", [])]


# -- stage 5: the pipeline folder -------------------------------------------------------------------
def stage_pipeline(
    work: Path, vae: Any, data: dict[str, Any], tokenizer: Any, text_encoder: Any, models: dict[str, Any]
) -> Path:
    from diffusers import WanPipeline

    out = work / "result"
    if out.exists():
        shutil.rmtree(out)
    vae = copy.deepcopy(vae)
    vae.register_to_config(latents_mean=data["latents_mean"], latents_std=data["latents_std"])
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=make_scheduler(),
        transformer=models["sketcher"],
    )
    pipe.save_pretrained(out / "pipeline")
    for role in ("renderer", "specialist"):
        models[role].save_pretrained(out / role)
    stages = {name: _done(work / f"{name}_final") for name in ("vae", *FLOW_STAGES)}
    (out / "stages.json").write_text(json.dumps(stages, indent=2))
    return out


def _write_atomically(path: Path, text: str) -> None:
    """Write through a file of this process's own, then rename: the `--only` processes that run side by side
    each rewrite recipe.json as they start, and one read an empty file while another was writing it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _fixed_part(recipe: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run must share with the original: everything but the step counts and the patience.

    A field the stored recipe lacks (written before the field existed) counts as its default, which is
    what that run used: the kept copy in `checkpoints/second_world` still resumes under the default recipe.
    """
    recipe = {**asdict(Recipe2()), **recipe}
    return {key: value for key, value in recipe.items() if not key.endswith("_steps") and key != "patience"}


def train(
    work: Path,
    recipe: Recipe2,
    budget: Budget,
    stop_after: str = "pipeline",
    only: str | None = None,
    check: bool = False,
    device: str = "cpu",
) -> Path | None:
    """Run (or resume) the stages up to `stop_after`; `only` trains one flow stage (in a process of its own)."""
    if stop_after not in STAGES:
        raise ValueError(f"unknown stage {stop_after!r}; choose one of {', '.join(STAGES)}")
    if only is not None and only not in FLOW_STAGES:
        raise ValueError(f"--only takes one of {', '.join(FLOW_STAGES)}, got {only!r}")
    if recipe.sigma_density not in SIGMA_DENSITIES:
        raise ValueError(f"--sigma-density takes one of {', '.join(SIGMA_DENSITIES)}, got {recipe.sigma_density!r}")
    flow_size(recipe, "sketcher")  # refuses a head count that does not divide the width, before any work
    work.mkdir(parents=True, exist_ok=True)
    recipe_file = work / "recipe.json"
    if recipe_file.exists() and _fixed_part(json.loads(recipe_file.read_text())) != _fixed_part(asdict(recipe)):
        raise ValueError(
            f"{work} holds a run of another recipe ({recipe_file}); only step counts and patience may change on resume"
        )
    _write_atomically(recipe_file, json.dumps(asdict(recipe), indent=2))
    bank = stage_clips(work, recipe)
    trained = stage_vae(work, recipe, bank, budget, device).to(device)
    vae_step = _done(work / "vae_final")["step"]
    vae = stage_fold(work, recipe, bank, trained, vae_step).to(device)
    if check:
        figures = {"vae_step": vae_step, **check_vae(vae, recipe.validation_clips)}
        (work / "vae_check.json").write_text(json.dumps(figures, indent=2))
        _log(work, f"vae check {json.dumps(figures)}")
        print(json.dumps(figures, indent=2))
    if stop_after in ("clips", "vae"):
        return None
    data = stage_latents(work, recipe, vae, vae_step)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer), seed=recipe.seed)
    train_text, empty = prompt_embeddings(tokenizer, text_encoder, data["prompts"])
    validation_text, _ = prompt_embeddings(tokenizer, text_encoder, data["validation_prompts"])
    text = {"train": train_text, "empty": empty, "validation": validation_text}
    roles = [only] if only is not None else list(FLOW_STAGES)[: STAGES.index(stop_after) - 2]
    models = {role: stage_flow(work, recipe, role, data, text, budget, device) for role in roles}
    if stop_after != "pipeline" or only is not None:
        return None
    return stage_pipeline(work, vae, data, tokenizer, text_encoder, models)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, type=Path, help="work folder (checkpoints, log, result/)")
    parser.add_argument("--tiny", action="store_true", help="the tiny recipe: every stage in seconds, for tests")
    parser.add_argument(
        "--budget", default=None, help="minutes each stage may run in this invocation: 30, or vae=3,sketcher=4,..."
    )
    parser.add_argument("--stop-after", choices=STAGES, default="pipeline", help="the last stage to run")
    parser.add_argument("--only", choices=tuple(FLOW_STAGES), default=None, help="train just this transformer")
    parser.add_argument("--check-vae", action="store_true", help="measure validation clips through the VAE")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu", help="torch device to train on, e.g. cuda (default cpu)")
    tiny = parser.parse_known_args(argv)[0].tiny  # the recipe fields' defaults depend on it
    base = asdict(TINY if tiny else Recipe2())
    for field, value in base.items():
        if field != "tiny":
            parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = replace(
        TINY if args.tiny else Recipe2(), **{field: getattr(args, field) for field in base if field != "tiny"}
    )
    out = train(
        args.work,
        recipe,
        Budget.parse(args.budget),
        stop_after=args.stop_after,
        only=args.only,
        check=args.check_vae,
        device=args.device,
    )
    if out is not None:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
