"""The `srd` command: a thin argparse layer over `demo`, `generate`, `report` and `doctor`.

    srd demo      sketcher-only vs SRD on small bundled models (CPU, under a minute)
    srd generate  one SRD generation with real weights -> mp4 + trace JSON + report PNG
    srd report    print the table and redraw the picture of a saved trace
    srd doctor    what this machine offers and what the plugin found

Errors a user can fix (bad options, missing files, incompatible models, a missing extra)
end the command with one line on stderr and a non-zero status, never a traceback
(`srd --traceback ...` shows it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from .config import SWITCH_POLICIES, SRDConfig

#: policy option -> the policy it implies when --switch is not given
POLICY_PARAMETERS = {"switch_step": "step", "switch_ratio": "ratio", "boundary_ratio": "boundary"}
EXIT_USER_ERROR = 1


class UserError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage block is what `--help` is for."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def log(message: str) -> None:
    """Progress and set-up messages go to stderr; tables and results to stdout."""
    print(message, file=sys.stderr, flush=True)


# -- SRDConfig from a file and the policy options ---------------------------------------------
def read_config_file(path: str | Path) -> SRDConfig:
    """The `[srd]` table of a TOML file (the format of `SRDConfig.from_file`, `srd-run` and `activate`)."""
    try:
        return SRDConfig.from_file(path)
    except ValueError as error:
        raise UserError(f"--config: {error}") from error


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("switching (default: adaptive, the SRDiffusion settings)")
    group.add_argument("--config", metavar="FILE", help="settings from the [srd] table of a TOML file (options win)")
    group.add_argument("--switch", choices=SWITCH_POLICIES, help="switching policy")
    group.add_argument("--threshold", type=float, help="adaptive: switch when 0 < s_i < THRESHOLD (0.01)")
    group.add_argument("--min-sketch-steps", type=int, help="adaptive: sketch at least this many steps (5)")
    group.add_argument("--max-sketch-steps", type=int, help="adaptive: sketch at most this many (ceil(0.6 N))")
    group.add_argument("--switch-step", type=int, help="step policy: sketch the first N steps (implies --switch step)")
    group.add_argument("--switch-ratio", type=float, help="ratio policy: sketch round(R*N) steps (implies ratio)")
    group.add_argument("--boundary-ratio", type=float, help="boundary policy: sketch while t >= R*1000 (implies it)")
    group.add_argument("--renderer-dtype", choices=("float32", "float16", "bfloat16"), help="convert the renderer")


def config_from_args(args: argparse.Namespace) -> SRDConfig:
    """The file's settings (or the defaults), then the command-line options on top.

    A policy parameter given alone selects its policy (`--switch-step 10` means `--switch
    step`); choosing a policy on the command line drops the file's parameters of other
    policies, so a file for one policy can be overridden by options for another.
    """
    config = read_config_file(args.config) if args.config else SRDConfig()
    overrides: dict[str, Any] = {}
    for name in ("threshold", "min_sketch_steps", "max_sketch_steps", "renderer_dtype", *POLICY_PARAMETERS):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    switch = args.switch
    if switch is None:
        implied = {POLICY_PARAMETERS[name] for name in POLICY_PARAMETERS if name in overrides}
        if len(implied) > 1:
            raise UserError(f"options for several policies ({', '.join(sorted(implied))}); choose one with --switch")
        switch = implied.pop() if implied else None
    if switch is not None:
        overrides["switch"] = switch
        for name, policy in POLICY_PARAMETERS.items():
            if policy != switch and name not in overrides:
                overrides[name] = None
    return config.replace(**overrides)


#: `--teacache` given without a value: each model's recommended threshold (not a string: argparse
#: would pass a string through `type=float`)
RECOMMENDED = object()


def add_accelerator_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("accelerators, on both models (docs/accelerators.md)")
    group.add_argument(
        "--teacache",
        nargs="?",
        const=RECOMMENDED,
        type=float,
        metavar="THRESHOLD",
        help="TeaCache with this threshold (no value: each model's recommended one, e.g. Wan 14B 0.2, 1.3B 0.08, "
        "CogVideoX 0.1)",
    )
    group.add_argument(
        "--sage",
        action="store_true",
        help="SageAttention where it can run (CUDA, sageattention installed, head dim 64/96/128), SDPA elsewhere "
        "with a warning why; `srd doctor` says which applies here",
    )


def accelerators_from_args(config: SRDConfig, args: argparse.Namespace) -> SRDConfig:
    """`--teacache` / `--sage` over the config.

    `--teacache [T]` puts TeaCache on both models: `teacache` with threshold T (None: each
    model's recommended one) and the file's other `[srd.teacache]` keys, and no separate
    `teacache_renderer`, so the renderer follows with its own coefficients and state.
    """
    from .hooks.teacache import TeaCacheConfig

    overrides: dict[str, Any] = {}
    if args.teacache is not None:
        threshold = None if args.teacache is RECOMMENDED else args.teacache
        try:
            teacache = dataclasses.replace(config.teacache or TeaCacheConfig(), threshold=threshold)
        except ValueError as error:
            raise UserError(f"--teacache {args.teacache}: {error}") from error
        overrides.update(teacache=teacache, teacache_renderer=None)
    if args.sage:
        overrides["sage_attention"] = True
    return config.replace(**overrides)


def check_switch_step(config: SRDConfig, steps: int | None) -> None:
    """A fixed switch step beyond the step count, refused before any model is loaded or run."""
    if config.switch == "step" and steps is not None and config.switch_step > steps:
        raise UserError(
            f"--switch-step {config.switch_step} is beyond the {steps} denoising steps; use 0..{steps} "
            f"(0: renderer only, {steps}: sketcher only)"
        )


# -- sub-commands -----------------------------------------------------------------------------
def _finish(table: str, wrote: str, picture_problem: str | None) -> int:
    """The end of `demo` and `generate`: the table, what was written, and why a picture is missing."""
    print(table)
    print(f"\n{wrote}")
    if picture_problem:
        log(f"no report picture: {picture_problem}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    config = config_from_args(args)
    check_switch_step(config, args.steps)
    result = run_demo(args.out, args.prompt, args.steps, args.seed, config, log, args.rounds)
    wrote = f"wrote to {result.out}/: {', '.join(path.name for path in result.files)}"
    return _finish(result.table, wrote, result.picture_problem)


def _generate(args: argparse.Namespace) -> int:
    from .generate import GenerateOptions, run_generate

    options = GenerateOptions(
        model=args.model,
        renderer=args.renderer,
        prompt=args.prompt,
        out=Path(args.out),
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        frames=args.frames,
        steps=args.steps,
        guidance=args.guidance,
        max_sequence_length=args.max_sequence_length,
        strength=args.strength,
        image=Path(args.image) if args.image else None,
        video=Path(args.video) if args.video else None,
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
        fps=args.fps,
    )
    config = accelerators_from_args(config_from_args(args), args)
    check_switch_step(config, args.steps)
    result = run_generate(options, config, log)
    return _finish(result.table, f"wrote {', '.join(map(str, result.files))}", result.picture_problem)


def _report(args: argparse.Namespace) -> int:
    from .report import draw_report, report_text
    from .trace import RunTrace
    from .video import read_video

    trace_path = Path(args.trace)
    try:
        trace = RunTrace.load(trace_path)
    except OSError as error:
        raise UserError(f"{str(trace_path)!r}: cannot be read ({error.strerror or error})") from error
    except (ValueError, TypeError) as error:
        raise UserError(f"{str(trace_path)!r} is not an SRD trace JSON: {error}") from error
    print(report_text(trace))
    videos = {}
    for video in args.video or []:
        try:
            videos[Path(video).stem] = read_video(video)
        except (OSError, ValueError) as error:
            raise UserError(f"--video {video!r}: cannot be read as a video ({error})") from error
    picture = Path(args.out) if args.out else trace_path.with_suffix(".png")
    draw_report(trace, picture, videos=videos)
    print(f"\nwrote {picture}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    return run_doctor(print)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="srd", description="Sketch with a large video model, render with a small one.")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="sketcher-only vs SRD on small bundled models (CPU, < 1 minute)")
    demo.add_argument("--out", default="srd-demo", help="output folder (default: srd-demo)")
    demo.add_argument("--steps", type=int, default=20, help="denoising steps (default: 20)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--prompt", default="a red circle moving left")
    demo.add_argument("--rounds", type=int, default=1, help="alternate the two runs N times, keep the fastest of each")
    add_policy_arguments(demo)
    demo.set_defaults(func=_demo)

    generate = commands.add_parser("generate", help="one SRD generation with real weights -> mp4, trace, picture")
    generate.add_argument("--model", required=True, help="pipeline folder or hub repo id (the sketcher's pipeline)")
    generate.add_argument("--renderer", required=True, help="renderer: pipeline or transformer folder, or repo id")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--negative-prompt")
    generate.add_argument("--height", type=int, help="pixels (default: the pipeline's)")
    generate.add_argument("--width", type=int, help="pixels (default: the pipeline's)")
    generate.add_argument("--frames", type=int, help="number of frames (default: the pipeline's)")
    generate.add_argument("--steps", type=int, help="denoising steps (default: the pipeline's)")
    generate.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    generate.add_argument("--max-sequence-length", type=int, help="text tokens (default: the pipeline's)")
    generate.add_argument("--image", help="input image file (image-to-video pipelines)")
    generate.add_argument("--video", help="input video file (video-to-video and VACE pipelines)")
    generate.add_argument("--strength", type=float, help="share of the schedule that runs (video-to-video)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto")
    generate.add_argument("--device", default="auto", help="cuda, cuda:1, cpu, ... (default: cuda if present)")
    generate.add_argument("--fps", type=int, default=16, help="frames per second of the mp4 (default: 16)")
    generate.add_argument("--out", default="srd.mp4", help="video path; NAME.trace.json and NAME.report.png beside it")
    add_policy_arguments(generate)
    add_accelerator_arguments(generate)
    generate.set_defaults(func=_generate)

    report = commands.add_parser("report", help="print the table and redraw the picture of a saved trace")
    report.add_argument("trace", metavar="TRACE.json")
    report.add_argument("--out", help="picture path (default: the trace's path with .png)")
    report.add_argument("--video", action="append", help="add a row of frames from this video (repeatable)")
    report.set_defaults(func=_report)

    doctor = commands.add_parser("doctor", help="what this machine offers and what the plugin found")
    doctor.set_defaults(func=_doctor)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from .errors import IncompatibleRendererError, RendererFailureError, UnsupportedPipelineError
    from .report import MissingExtraError

    return (
        UserError,
        ValueError,
        MissingExtraError,
        UnsupportedPipelineError,
        IncompatibleRendererError,
        RendererFailureError,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as error:
        if args.traceback:
            raise
        first, *rest = str(error).splitlines() or [type(error).__name__]
        print(f"srd {args.command}: error: {first}", file=sys.stderr)
        for line in rest:
            print(f"  {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"srd {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `srd doctor | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
