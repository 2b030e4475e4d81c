"""Where is a second-world clip's semantics decided, and does a model keep a layout it is given?

    python benchmarks/layout_survival.py --result runs/m6/result --clips 24 --threads 2
    python benchmarks/layout_survival.py --result runs/m6/result --roles sketcher \
        --model heads4=runs/h4/sketcher_final            # another transformer on the same latents, side by side

SRD's premise is that the early, high-noise steps fix what a clip shows and the late ones only
refine it. This measures it on a trained second-world pair without any prompt-following from
scratch: take a true validation clip, noise its latents to the level of step k of the 30-step
shift-3 schedule, and let one model finish the remaining steps (the real sampler, through
`WanVideoToVideoPipeline.from_pipe` with `strength = (N - k) / N`); then score the semantics of the
result (`evaluate2.score_semantics`) against the clip's prompt.

* k = N is the VAE round trip alone: the ceiling every row is bounded by.
* A model that denoises well keeps the layout from a start where it is still there and loses it
  only from starts where the noise has erased it; the start where the scores fall is where this
  world decides its semantics (for that model).
* A model that loses a layout it was handed at a low noise level draws its own over it: the late
  steps are then not "rendering", and SRD cannot work with that model as the renderer.

Every row uses the same clips and the same noise (seeded per clip), so the rows differ only in
the model and the start.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from srd_plugin.miniature import evaluate2, train2, world2  # noqa: E402
from srd_plugin.miniature.models2 import call_kwargs, load_second_pipeline  # noqa: E402

COLUMNS = ("semantic", "count_accuracy", "colour", "shape", "direction")


def strength_for(start: int, steps: int) -> float:
    """The V2V `strength` whose schedule starts at step `start` of `steps` (diffusers truncates N * strength)."""
    if not 0 <= start < steps:
        raise ValueError(f"a start step must lie in [0, {steps}), got {start}")
    return min(1.0, (steps - start + 0.5) / steps)


def start_sigma(scheduler: Any, start: int, steps: int) -> float:
    """The noise level of step `start` of a `steps`-step schedule of `scheduler` (a copy is set, not it)."""
    schedule = copy.deepcopy(scheduler)
    schedule.set_timesteps(steps)
    return float(schedule.sigmas[start])


def finish(v2v: Any, model: Any, prompt: world2.Prompt2, seed: int, start: int, steps: int) -> np.ndarray:
    """The true clip of (prompt, seed), noised to step `start` and finished by `model`: (F, H, W, 3) frames."""
    v2v.transformer = model
    kwargs = call_kwargs(prompt.text, seed, steps)
    del kwargs["num_frames"]  # the video's own length
    return v2v(video=world2.make_clip(prompt, seed)[None], strength=strength_for(start, steps), **kwargs).frames[0]


def round_trip(vae: Any, prompt: world2.Prompt2, seed: int) -> np.ndarray:
    """The true clip through the VAE alone (`train2.reconstruct`): what every start is bounded by."""
    return train2.reconstruct(vae, world2.make_clip(prompt, seed))


def survival(
    result: Path,
    clips: int,
    starts: list[int],
    steps: int,
    roles: tuple[str, ...] = ("sketcher", "renderer", "specialist"),
    extra: dict[str, Path] | None = None,
) -> list[dict[str, Any]]:
    """One row per (model, start): the semantics of true validation clips finished from that start.

    `roles` picks the result's own transformers; `extra` adds transformers from other folders under
    their own names (trained on the same latents: the result's VAE and normalisation decode them).
    """
    from diffusers import WanTransformer3DModel, WanVideoToVideoPipeline

    pipe, others = load_second_pipeline(result)
    v2v = WanVideoToVideoPipeline.from_pipe(pipe)
    v2v.set_progress_bar_config(disable=True)
    own = {"sketcher": pipe.transformer, **others}
    missing = [role for role in roles if role not in own]
    if missing:
        raise ValueError(f"{result} holds no {', '.join(missing)}; it holds {', '.join(own)}")
    models = {role: own[role] for role in roles}
    for name, folder in (extra or {}).items():
        models[name] = WanTransformer3DModel.from_pretrained(folder).eval()
    chosen = train2.clip_set("validation", clips)
    rows = [_row("VAE round trip", steps, 0.0, [round_trip(pipe.vae, p, s) for p, s in chosen], chosen)]
    for role, model in models.items():
        for start in starts:
            frames = [finish(v2v, model, p, s, start, steps) for p, s in chosen]
            rows.append(_row(role, start, start_sigma(pipe.scheduler, start, steps), frames, chosen))
            print(_line(rows[-1]), flush=True)
    return rows


def _row(model: str, start: int, sigma: float, frames: list[np.ndarray], clips: list) -> dict[str, Any]:
    summary = evaluate2.summarise([evaluate2.score_semantics(f, p) for f, (p, _) in zip(frames, clips)])
    return {"model": model, "start": start, "sigma": sigma, **{c: getattr(summary, c) for c in COLUMNS}}


def _line(row: dict[str, Any]) -> str:
    scores = " | ".join(f"{row[c]:.1f}" for c in COLUMNS)
    return f"| {row['model']} | {row['start']} | {row['sigma']:.3f} | {scores} |"


def table(rows: list[dict[str, Any]]) -> str:
    head = "| model | start step | noise level | semantic % | count % | colour % | shape % | direction % |"
    return "\n".join([head, "|---|---:|---:|---:|---:|---:|---:|---:|", *(_line(r) for r in rows)])


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Semantic accuracy against the start's noise level, one line per model, the round trip dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, column, label in zip(axes, ("semantic", "count_accuracy"), ("semantic accuracy %", "count %")):
        for model in dict.fromkeys(r["model"] for r in rows if r["model"] != "VAE round trip"):
            mine = [r for r in rows if r["model"] == model]
            ax.plot([r["sigma"] for r in mine], [r[column] for r in mine], marker="o", label=model)
        ceiling = next(r[column] for r in rows if r["model"] == "VAE round trip")
        ax.axhline(ceiling, linestyle="--", color="grey", label="VAE round trip")
        ax.set_xlabel("noise level the model starts from (true clip noised)")
        ax.set_ylabel(label)
        ax.set_ylim(-2, 102)
        ax.legend()
    fig.suptitle("How much of a true clip's semantics survives when a model finishes it")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--result", type=Path, required=True, help="the result/ folder of a train2 work folder")
    parser.add_argument("--clips", type=int, default=24, help="validation clips (train2.clip_set)")
    parser.add_argument("--starts", default="0,4,8,12,16,20,24", help="start steps, comma-separated")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--plot", type=Path, default=None, help="write semantic accuracy against the start (PNG)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--roles", default="sketcher,renderer,specialist", help="the result's transformers to run, comma-separated"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also run the transformer saved in DIR under NAME (repeatable; same latents as --result)",
    )
    args = parser.parse_args(argv)
    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    extra: dict[str, Path] = {}
    for item in args.model:
        name, _, folder = item.partition("=")
        if not name or not folder:
            parser.error(f"--model takes NAME=DIR, got {item!r}")
        if not (Path(folder) / "config.json").exists():
            parser.error(f"--model {name}: no transformer in {folder} (config.json missing)")
        extra[name] = Path(folder)
    if not roles and not extra:
        parser.error("nothing to run: give --roles or --model")
    starts = [int(s) for s in args.starts.split(",") if s.strip()]
    for start in starts:
        if not 0 <= start < args.steps:
            parser.error(f"--starts: {start} is not a step of a {args.steps}-step schedule (0 .. {args.steps - 1})")
    if args.clips < 1:
        parser.error("--clips must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = survival(args.result, args.clips, starts, args.steps, roles, extra)
    print(table(rows))
    if args.plot:
        print(f"wrote {plot(rows, args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
