"""The second miniature world on one GPU in about 10 minutes: train, check on validation, keep the weights.

    python benchmarks/second_world_gpu.py --out $OUT/second            # on the device (cuda), ~10 min
    python benchmarks/second_world_gpu.py --out runs/second-tiny --tiny  # the same code path, CPU, seconds

1. `srd_plugin.miniature.train2` with a budget per stage (`GPU_BUDGET`, minutes) and the
   `GPU_RECIPE` (the CPU recipe with full-frame VAE batches and fewer two-object seeds, so that
   rendering the clips on the CPU fits), on `--device`; the VAE check on the validation clips.
2. Generations on validation clips (`train2.validation_set`, seeds 1000+; never trained on):
   sketcher only, renderer only, SRD switched at `SWITCH_STEPS` with the renderer and with the
   low-noise specialist, and the sketcher with fewer steps; semantic accuracy (every attribute),
   the reference-free detail fidelity (`fidelity2`: dB to the world's nearest grating, and its
   contrast) and `pattern_energy` (1 = as much fine texture as true clips), wall time per clip.
   Validation only: nothing here may be used to choose settings for the test split other than
   through this split.
3. Everything under `--out`: `work/result/` (pipeline, renderer, specialist: `from_pretrained`
   folders), `work/vae_check.json`, `report.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import srd_plugin as srd  # noqa: E402
from srd_plugin.miniature import train2  # noqa: E402
from srd_plugin.miniature.evaluate2 import pattern_energy, score_semantics, summarise  # noqa: E402
from srd_plugin.miniature.fidelity2 import score_fidelity  # noqa: E402
from srd_plugin.miniature.models2 import DEFAULT_STEPS, call_kwargs, load_second_pipeline  # noqa: E402

GPU_RECIPE = replace(
    train2.Recipe2(),
    vae_batch=8,
    vae_crop=64,
    vae_crop_frames=17,
    vae_steps=1500,
    vae_decay_steps=400,
    vae_short_steps=1000,
    vae_full_length_steps=500,
    pair_seeds=2,
    batch=64,
    eval_every=100,
)
#: minutes per stage on the device; clip rendering (CPU) and the evaluation come on top (~3 min)
GPU_BUDGET = {"vae": 2.0, "sketcher": 2.5, "renderer": 1.0, "specialist": 1.0}
SWITCH_STEPS = (4, 8, 12)
REDUCED_STEPS = (8, 12)
#: the tiny mode's schedule: 3 steps, a switch after 1, a 2-step sketcher: every row's code path
TINY_SCHEDULE = (3, (1,), (2,))


def methods(
    steps: int, switches: tuple[int, ...] = SWITCH_STEPS, reduced: tuple[int, ...] = REDUCED_STEPS
) -> list[tuple[str, str | None, int, int]]:
    """(name, small model or None, switch step (0: the small model alone), steps) of every row."""
    rows = [("sketcher only", None, steps, steps), ("renderer only", "renderer", 0, steps)]
    for k in switches:
        if k < steps:
            rows += [
                (f"SRD switch at {k}", "renderer", k, steps),
                (f"SRD+specialist switch at {k}", "specialist", k, steps),
            ]
    rows += [(f"sketcher only, {m} steps", None, m, m) for m in reduced if m < steps]
    return rows


def generate(pipe: Any, small: Any, switch: int, steps: int, prompt: str, seed: int) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    if small is None:
        frames = pipe(**call_kwargs(prompt, seed, steps)).frames[0]
    elif switch == 0:
        sketcher = pipe.transformer
        pipe.transformer = small
        try:
            frames = pipe(**call_kwargs(prompt, seed, steps)).frames[0]
        finally:
            pipe.transformer = sketcher
    else:
        with srd.sketch_render(pipe, small, switch="step", switch_step=switch):
            frames = pipe(**call_kwargs(prompt, seed, steps)).frames[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return frames, time.perf_counter() - started


def evaluate(result: Path, device: str, clips: int, schedule: tuple) -> list[dict[str, Any]]:
    pipe, small = load_second_pipeline(result)
    pipe.to(device)
    small = {role: model.to(device) for role, model in small.items()}
    rows_of = methods(*schedule)
    scores: dict[str, list] = {name: [] for name, *_ in rows_of}
    for prompt, seed in train2.validation_set(clips):
        for name, role, switch, count in rows_of:  # interleaved per clip
            frames, seconds = generate(pipe, small.get(role), switch, count, prompt.text, seed)
            fidelity = score_fidelity(frames, prompt)
            scores[name].append((score_semantics(frames, prompt), fidelity, pattern_energy(frames), seconds))
    rows = []
    for name, role, switch, count in rows_of:
        semantics, fidelities, energies, times = zip(*scores[name])
        summary = asdict(summarise(list(semantics), fidelities=list(fidelities)))
        rows.append(
            {
                "method": name,
                "small_model": role,
                "switch_step": switch,
                "steps": count,
                **summary,
                "pattern_energy": float(np.mean(energies)),
                "seconds": float(np.mean(times)),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--tiny", action="store_true", help="the tiny recipe on the CPU: seconds, results mean nothing")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    parser.add_argument("--clips", type=int, default=None, help="validation clips to generate (default 24; tiny 2)")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --tiny (CPU) or on the GPU machine")
    recipe = train2.TINY if args.tiny else GPU_RECIPE
    budget = train2.Budget() if args.tiny else train2.Budget(stages=GPU_BUDGET)
    clips = args.clips or (2 if args.tiny else 24)
    schedule = TINY_SCHEDULE if args.tiny else (DEFAULT_STEPS, SWITCH_STEPS, REDUCED_STEPS)
    torch.manual_seed(0)
    started = time.perf_counter()
    result = train2.train(args.out / "work", recipe, budget, check=True, device=device)
    trained = time.perf_counter() - started
    rows = evaluate(result, device, clips, schedule)
    report = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "recipe": asdict(recipe),
        "budget_minutes": None if args.tiny else GPU_BUDGET,
        "training_seconds": trained,
        "evaluation_seconds": time.perf_counter() - started - trained,
        "stages": json.loads((result / "stages.json").read_text()),
        "vae_check": json.loads((args.out / "work" / "vae_check.json").read_text()),
        "validation_clips": clips,
        "rows": rows,
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    for row in rows:
        print(
            f"{row['method']:32s} semantic {row['semantic']:5.1f}%  fidelity {row['fidelity_db']:5.2f} dB  "
            f"contrast {row['fidelity_contrast']:.2f}  pattern {row['pattern_energy']:.2f}  "
            f"{row['seconds'] * 1000:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
