"""Step times of sketcher/renderer pairs at their published shapes, with random bf16 weights.

    python benchmarks/gpu_pairs.py --out results/pairs.md       # one GPU (H100/H200)
    python benchmarks/gpu_pairs.py --only LTX,Cosmos             # pairs whose name contains a word
    python benchmarks/gpu_pairs.py --flops                       # FLOP counts only (no GPU, meta device)
    python benchmarks/gpu_pairs.py --tiny                        # every code path on the CPU in seconds

The pairs come from every `benchmarks/pairs_*.py` module (a list `PAIRS` of `pair_spec.PairSpec`).
For each pair and each model: build it with random weights directly on the device, time
`calls_per_step` calls per step (CUDA events; warm-up 1, median of 3), record peak memory, free
it. Then per pair: the step-time ratio, S(k) at N = the family's default steps for k = 5, 10,
15, 20, and beside it the FLOP-count ratio (FlopCounterMode on the meta device, the same call).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pair_spec import (  # noqa: E402
    SWITCH_STEPS,
    PairSpec,
    build_model,
    call_model,
    flops_per_step,
    projected_speedup,
)

HERE = Path(__file__).resolve().parent


def discover(directory: Path = HERE) -> list[PairSpec]:
    """Every `PAIRS` of every `pairs_*.py` module in `directory`, in file-name order."""
    pairs: list[PairSpec] = []
    for path in sorted(directory.glob("pairs_*.py")):
        spec = importlib.util.spec_from_file_location(f"benchmarks.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        found = getattr(module, "PAIRS", None)
        if not isinstance(found, list) or not all(isinstance(p, PairSpec) for p in found):
            raise TypeError(f"{path.name} must define PAIRS: list[PairSpec]")
        pairs += found
    return pairs


def select(pairs: list[PairSpec], only: str | None) -> list[PairSpec]:
    """The pairs whose name contains one of the comma-separated words (case-insensitive); all if None."""
    if not only:
        return pairs
    words = [w.strip().lower() for w in only.split(",") if w.strip()]
    chosen = [p for p in pairs if any(w in p.name.lower() for w in words)]
    if not chosen:
        names = "; ".join(p.name for p in pairs)
        raise SystemExit(f"--only {only!r} matches no pair; the pairs are: {names}")
    return chosen


# -- timing ------------------------------------------------------------------------------------
def timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """Seconds taken by a callable: CUDA events on the GPU, perf_counter on the CPU."""

    def cuda(fn: Callable[[], Any]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    def cpu(fn: Callable[[], Any]) -> float:
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin

    return cuda if device.type == "cuda" else cpu


def step_time(
    spec: PairSpec, config: dict, tiny: bool, device: torch.device, dtype: torch.dtype, repeats: int, one_call: bool
) -> dict:
    """Median seconds of one denoising step (calls_per_step calls) and the peak memory of the model.

    With `one_call` a step's time is one timed call times `calls_per_step`: the calls of a step (cond,
    uncond) have the same shapes and cost, and timing one halves the GPU time of a two-call host.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    held = {"model": build_model(spec, config, device, dtype), "inputs": spec.make_inputs(config, tiny, device, dtype)}
    params = sum(p.numel() for p in held["model"].parameters())

    calls = 1 if one_call else spec.calls_per_step

    def step() -> None:
        for _ in range(calls):
            call_model(held["model"], held["inputs"])

    measure = timer(device)
    step()  # warm-up: kernels chosen, allocator filled
    seconds = statistics.median(measure(step) for _ in range(repeats)) * spec.calls_per_step / calls
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    held.clear()  # free the weights before the next model is built
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"step_s": seconds, "peak_gib": peak, "params_b": params / 1e9}


def bench_pair(
    spec: PairSpec, tiny: bool, device: torch.device | None, dtype: torch.dtype, repeats: int, one_call: bool = False
) -> dict:
    """One pair's row: step times (None without a device), FLOPs, ratios and S(k)."""
    sketcher, renderer = (spec.tiny_sketcher, spec.tiny_renderer) if tiny else (spec.sketcher, spec.renderer)
    row: dict[str, Any] = {"pair": spec.name, "steps": spec.steps, "source": spec.source}
    flops_s = flops_per_step(spec, sketcher, tiny, sketcher=True)
    flops_r = flops_per_step(spec, renderer, tiny)
    row.update(sketcher_tflop_step=flops_s / 1e12, renderer_tflop_step=flops_r / 1e12, flop_ratio=flops_s / flops_r)
    for k in SWITCH_STEPS:
        row[f"S({k}) flops"] = projected_speedup(flops_s, flops_r, k, spec.steps)
    if device is None:
        return row
    timed = {
        role: step_time(spec, cfg, tiny, device, dtype, repeats, one_call)
        for role, cfg in (("s", sketcher), ("r", renderer))
    }
    t_s = timed["s"]["step_s"] * spec.sketcher_calls_scale
    t_r = timed["r"]["step_s"]
    row.update(
        sketcher_params_b=timed["s"]["params_b"],
        renderer_params_b=timed["r"]["params_b"],
        sketcher_step_s=t_s,
        renderer_step_s=t_r,
        time_ratio=t_s / t_r,
        sketcher_peak_gib=timed["s"]["peak_gib"],
        renderer_peak_gib=timed["r"]["peak_gib"],
    )
    for k in SWITCH_STEPS:
        row[f"S({k})"] = projected_speedup(t_s, t_r, k, spec.steps)
    return row


# -- report ------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict], header: str) -> str:
    """One table: a row per pair, columns in order of appearance (the sources listed below it)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys and k != "source"]
    lines = [header, "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |" for row in rows]
    lines += [""] + [f"- {row['pair']}: {row['source']}" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (seconds)")
    mode.add_argument("--flops", action="store_true", help="FLOP counts at the published configs only (no device)")
    parser.add_argument("--only", default=None, help="comma list of words; pairs whose name contains one")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per model (median reported)")
    parser.add_argument(
        "--one-call", action="store_true", help="time one call per step and scale by calls_per_step (half the GPU time)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table (and a .json) here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    pairs = select(discover(), args.only)
    if args.tiny:
        device, dtype, where = torch.device("cpu"), torch.float32, "CPU (tiny configs)"
    elif args.flops:
        device, dtype, where = None, torch.bfloat16, "FLOP count only (meta device)"
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --tiny (CPU) or --flops (FLOP counts only)")
        device, dtype, where = torch.device("cuda"), torch.bfloat16, torch.cuda.get_device_name()
    rows = []
    for spec in pairs:
        print(f"[{spec.name}]", flush=True)
        start = time.perf_counter()
        row = bench_pair(spec, args.tiny, device, dtype, args.repeats, args.one_call)
        rows.append(row)
        print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in ("pair", "source")), flush=True)
        print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)
    command = "python benchmarks/gpu_pairs.py" + " ".join([""] + (argv if argv is not None else sys.argv[1:]))
    header = f"Pair benchmark, {datetime.date.today()}, {where}, torch {torch.__version__}\ncommand: `{command}`"
    text = markdown(rows, header)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
