"""`srd generate`: one SRD generation with real weights, written as mp4 + trace JSON + report PNG.

The pipeline is loaded with `DiffusionPipeline.from_pretrained`, so any family that has an
adapter works; the call arguments are checked against the loaded pipeline's own `__call__`
signature before any denoising, so an option the family does not take is named, not ignored.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .api import enable, last_trace
from .config import SRDConfig
from .report import MissingExtraError, draw_report, report_text
from .trace import RunTrace
from .video import write_video

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: CLI option -> the pipeline `__call__` argument it sets
CALL_ARGUMENTS = {
    "negative_prompt": "negative_prompt",
    "height": "height",
    "width": "width",
    "frames": "num_frames",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "max_sequence_length": "max_sequence_length",
    "strength": "strength",
}

#: CLI option -> the pipeline `__call__` argument it sets, read from a file (image- and video-conditioned pipelines)
MEDIA_ARGUMENTS = {"image": "image", "video": "video"}


@dataclass
class GenerateOptions:
    """What `srd generate` was asked to do (None: the pipeline's own default)."""

    model: str
    renderer: str
    prompt: str
    out: Path
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    max_sequence_length: int | None = None
    strength: float | None = None
    image: Path | None = None
    video: Path | None = None
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    fps: int = 16


@dataclass
class GenerateResult:
    """What `run_generate` wrote (video, trace, picture); `picture_problem` says why there is no picture."""

    files: list[Path]
    trace: RunTrace
    table: str
    picture_problem: str | None = None


def companion_paths(out: Path) -> tuple[Path, Path]:
    """Where the trace and the picture of `out` go: `NAME.trace.json` and `NAME.report.png` beside it."""
    return out.with_suffix(".trace.json"), out.with_suffix(".report.png")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """ "auto" is bfloat16 on an accelerator (what Wan and CogVideoX ship in) and float32 on the CPU."""
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    return DTYPES[dtype]


def check_options(options: GenerateOptions) -> None:
    """Everything that can be checked before loading a model; a `ValueError` naming the option.

    Creates the output folder, so an unwritable `--out` fails now rather than after the generation.
    """
    if options.out.suffix.lower() != ".mp4":
        raise ValueError(f"--out {str(options.out)!r}: the video is written as mp4; give a path ending in .mp4")
    for name in ("height", "width", "frames", "steps", "max_sequence_length"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value}: must be a positive integer")
    if options.fps < 1:
        raise ValueError(f"--fps {options.fps}: must be a positive integer")
    if options.strength is not None and not 0.0 < options.strength <= 1.0:
        raise ValueError(f"--strength {options.strength}: must lie in (0, 1] (the share of the schedule that runs)")
    for name in MEDIA_ARGUMENTS:
        path = getattr(options, name)
        if path is not None and not Path(path).is_file():
            raise ValueError(f"--{name} {str(path)!r}: no such file")
    for flag, source in (("--model", options.model), ("--renderer", options.renderer)):
        if not os.path.isdir(source) and (os.path.exists(source) or not _REPO_ID.match(source)):
            raise ValueError(
                f"{flag} {source!r} is neither an existing folder nor a hub repo id such as "
                "'Wan-AI/Wan2.1-T2V-14B-Diffusers'"
            )
    device = resolve_device(options.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {options.device}: torch sees no CUDA device here; use --device cpu")
    try:
        options.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {str(options.out)!r}: cannot create its folder ({error.strerror or error})") from error


def call_arguments(pipe: Any, options: GenerateOptions) -> dict[str, Any]:
    """The pipeline call's keyword arguments; an option the pipeline does not accept is a `ValueError`."""
    accepted = inspect.signature(pipe.__call__).parameters
    kwargs: dict[str, Any] = {"prompt": options.prompt}
    for option, argument in CALL_ARGUMENTS.items():
        value = getattr(options, option)
        if value is None:
            continue
        if argument not in accepted:
            raise ValueError(
                f"--{option.replace('_', '-')}: {type(pipe).__name__} takes no {argument!r} argument; drop the option"
            )
        kwargs[argument] = value
    for option, argument in MEDIA_ARGUMENTS.items():
        path = getattr(options, option)
        if path is None:
            continue
        if argument not in accepted:
            raise ValueError(f"--{option}: {type(pipe).__name__} takes no {argument!r} argument; drop the option")
        kwargs[argument] = read_media(Path(path), option)
    kwargs["generator"] = torch.Generator().manual_seed(options.seed)
    kwargs["output_type"] = "np"
    return kwargs


def first_video(output: Any) -> Any:
    """The first video of a pipeline's output; an image pipeline's first image (Cosmos Text2Image)
    as a one-frame video."""
    frames = getattr(output, "frames", None)
    if frames is not None:
        return frames[0]
    images = getattr(output, "images", None)
    if images is None:
        raise ValueError(f"{type(output).__name__} holds neither frames nor images to write")
    return images[:1]


def read_media(path: Path, kind: str) -> Any:
    """An image file as one PIL image; a video file (anything imageio reads) as a list of PIL frames."""
    from PIL import Image

    from .video import read_video

    if kind == "image":
        with Image.open(path) as image:
            return image.convert("RGB")
    return [Image.fromarray(frame) for frame in read_video(path)]


@contextlib.contextmanager
def announced(log: Callable[[str], None], what: str) -> Iterator[None]:
    """Say what a long set-up step is doing, and how long it took."""
    log(f"{what} ...")
    start = time.perf_counter()
    yield
    log(f"  done in {time.perf_counter() - start:.1f} s")


@contextlib.contextmanager
def warnings_logged(log: Callable[[str], None]) -> Iterator[None]:
    """Python warnings (SageAttention falling back to SDPA, an unfitted TeaCache polynomial, ...) as
    one `warning:` line each, instead of two lines with a source path; a progress bar on the
    terminal is cleared for the line and redrawn after it, so the two do not run together."""
    from tqdm import tqdm

    def show(message: Warning | str, *_: Any, **__: Any) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            log(f"warning: {message}")

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def load_pipeline(model: str, dtype: torch.dtype, device: str, log: Callable[[str], None]) -> Any:
    from diffusers import DiffusionPipeline

    with announced(log, f"loading the pipeline {model} ({str(dtype).removeprefix('torch.')})"):
        try:
            pipe = DiffusionPipeline.from_pretrained(model, dtype=dtype)
        except OSError as error:
            raise ValueError(
                f"could not load the pipeline {model!r}: {error}".splitlines()[0]
                + "; download it first and pass the local folder"
            ) from error
    if device != "cpu":
        with announced(log, f"moving it to {device}"):
            pipe.to(device)
    return pipe


def run_generate(options: GenerateOptions, config: SRDConfig, log: Callable[[str], None]) -> GenerateResult:
    """Load, enable, generate, write the video, the trace and the picture."""
    check_options(options)
    device = resolve_device(options.device)
    pipe = load_pipeline(options.model, resolve_dtype(options.dtype, device), device, log)
    kwargs = call_arguments(pipe, options)
    with warnings_logged(log):
        with announced(log, f"loading the renderer {options.renderer} and enabling SRD (policy {config.switch})"):
            enable(pipe, options.renderer, config)
        log(f"generating: {options.prompt!r}")
        start = time.perf_counter()
        frames = first_video(pipe(**kwargs))
        seconds = time.perf_counter() - start
    trace = last_trace(pipe)
    video = write_video(frames, options.out, fps=options.fps)
    trace_path, picture_path = companion_paths(options.out)
    trace.save(trace_path)
    picture, problem = None, None
    try:
        picture = draw_report(trace, picture_path, subtitle=f"{options.prompt!r} · whole call {seconds:.1f} s")
    except MissingExtraError as error:
        problem = str(error)
    table = report_text(trace) + f"\n  whole call (text encoder and VAE included): {seconds:.2f} s"
    return GenerateResult([video, trace_path, *([picture] if picture else [])], trace, table, problem)
