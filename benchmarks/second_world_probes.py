"""Small probes of a trained second-world pair: what its flow loss and its samples say, on validation.

    python benchmarks/second_world_probes.py loss --work runs/m6
    python benchmarks/second_world_probes.py semantics --result runs/m6/result --guidance 1,3,5,8 --clips 12
    python benchmarks/second_world_probes.py semantics --result runs/m6/result --one-object --clips 12
    python benchmarks/second_world_probes.py semantics --result runs/m6/result --scheduler euler --clips 24

* `loss`: the flow loss of each transformer of a `train2` work folder on its validation latents at
  fixed noise levels, with the right prompt, an empty one and another clip's prompt (does it read
  the text, and at which levels is the sketcher better than its renderer?). The same noise for
  every row; plain MSE (no object weighting), so the level 1.0 figure reads against the latents'
  mean square (predicting the input back scores about that).
* `semantics`: sketcher-only generations (30 steps) of validation clips scored semantically, under
  several guidance scales, another sampler, or only the one-object prompts; `--transformer DIR`
  puts another `WanTransformer3DModel` folder in the sketcher's place.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from srd_plugin.miniature import evaluate2, train2  # noqa: E402
from srd_plugin.miniature.models import build_text_encoder, build_tokenizer  # noqa: E402
from srd_plugin.miniature.models import make_scheduler as wan_scheduler  # noqa: E402
from srd_plugin.miniature.models2 import call_kwargs, load_second_pipeline  # noqa: E402

LEVELS = (1.0, 0.98, 0.95, 0.9, 0.8, 0.6, 0.4, 0.2)
ROLES = ("sketcher", "renderer", "specialist")
SCHEDULERS = ("unipc", "unipc-order-1", "euler")


@torch.no_grad()
def loss_by_level(work: Path, levels: tuple[float, ...] = LEVELS, batch: int = 32) -> list[dict[str, Any]]:
    """One row per level: each model's flow loss with the right, an empty and a shifted prompt."""
    from diffusers import WanTransformer3DModel

    data = torch.load(work / "latents.pt", mmap=True)
    tokenizer = build_tokenizer()
    text, empty = train2.prompt_embeddings(
        tokenizer, build_text_encoder(len(tokenizer), seed=0), data["validation_prompts"]
    )
    x0 = data["validation_latents"].float()
    conditions = {"right": text, "empty": empty.expand_as(text), "other": torch.roll(text, 7, dims=0)}
    models = {
        r: WanTransformer3DModel.from_pretrained(work / f"{r}_final").eval()
        for r in ROLES
        if (work / f"{r}_final").exists()
    }
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    rows = []
    for level in levels:
        noisy = (1 - level) * x0 + level * noise
        row: dict[str, Any] = {"level": level, "input back": float(((noisy - (noise - x0)) ** 2).mean())}
        for role, model in models.items():
            for name, condition in conditions.items():
                losses = []
                for start in range(0, len(x0), batch):
                    part = slice(start, start + batch)
                    t = torch.full((len(x0[part]),), level * 1000)
                    out = model(noisy[part], t, condition[part], return_dict=False)[0]
                    losses.append(float(((out - (noise[part] - x0[part])) ** 2).sum()))
                row[f"{role}, {name} prompt"] = sum(losses) / x0.numel()
        rows.append(row)
    return rows


def make_scheduler(name: str) -> Any:
    """Wan's UniPC (flow, shift 3), the same at first order, or flow-matching Euler with the same shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=3.0)
    if name == "unipc":
        return wan_scheduler()
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, solver_order=1
    )


def clips_for(count: int, one_object: bool) -> list:
    """`count` validation clips of `train2.clip_set`, or its first `count` one-object ones."""
    if not one_object:
        return train2.clip_set("validation", count)
    chosen = [c for c in train2.clip_set("validation", 4 * count) if len(c[0].objects) == 1]
    return chosen[:count]


def sketcher_semantics(pipe: Any, clips: list, guidance: float, steps: int = 30) -> evaluate2.Summary2:
    scores = []
    for prompt, seed in clips:
        kwargs = call_kwargs(prompt.text, seed, steps)
        kwargs["guidance_scale"] = guidance
        scores.append(evaluate2.score_semantics(pipe(**kwargs).frames[0], prompt))
    return evaluate2.summarise(scores)


def _print_loss(rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---:|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.4f}" if c != "level" else f"{row[c]:.2f}" for c in columns) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="probe", required=True)
    loss = sub.add_parser("loss", help="flow loss by noise level and prompt")
    loss.add_argument("--work", type=Path, required=True, help="a train2 work folder (latents.pt, *_final/)")
    sem = sub.add_parser("semantics", help="sketcher-only semantics under guidance / sampler / clip choices")
    sem.add_argument("--result", type=Path, required=True, help="the result/ folder of a train2 work folder")
    sem.add_argument("--clips", type=int, default=12)
    sem.add_argument("--one-object", action="store_true", help="only one-object validation prompts")
    sem.add_argument("--guidance", default="5", help="guidance scales, comma-separated")
    sem.add_argument("--scheduler", choices=SCHEDULERS, default="unipc")
    sem.add_argument("--transformer", type=Path, default=None, help="a transformer folder in the sketcher's place")
    sem.add_argument("--steps", type=int, default=30)
    for p in (loss, sem):
        p.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe == "loss":
        if not (args.work / "latents.pt").exists():
            parser.error(
                f"{args.work / 'latents.pt'} is missing: run train2 --work {args.work} up to the latents stage"
            )
        _print_loss(loss_by_level(args.work))
        return 0
    guidances = [float(g) for g in args.guidance.split(",") if g.strip()]
    if args.clips < 1 or not guidances:
        parser.error("--clips must be >= 1 and --guidance must name at least one scale")
    pipe, _ = load_second_pipeline(args.result)
    pipe.scheduler = make_scheduler(args.scheduler)
    if args.transformer is not None:
        from diffusers import WanTransformer3DModel

        pipe.transformer = WanTransformer3DModel.from_pretrained(args.transformer).eval()
    clips = clips_for(args.clips, args.one_object)
    print(f"{len(clips)} validation clips ({'one-object' if args.one_object else 'clip_set'}), {args.scheduler}")
    print("| guidance | semantic % | count % | colour % | shape % | direction % |")
    print("|---:|---:|---:|---:|---:|---:|")
    for guidance in guidances:
        s = sketcher_semantics(pipe, clips, guidance, args.steps)
        scores = (s.semantic, s.count_accuracy, s.colour, s.shape, s.direction)
        print(f"| {guidance:g} | " + " | ".join(f"{v:.1f}" for v in scores) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
