"""Procedural evaluators for the miniature world: they know the ground truth, no learned model.

From the decoded frames of a clip they recover what was drawn:

* the **background**: a per-channel linear gradient fitted robustly (twice, the second
  time without the pixels that stand out), which is exactly how the dataset draws it;
* the **object**: pixels that differ from the background; its colour (median, snapped to
  the nearest palette colour), its per-frame coverage, centroid and area;
* its **shape**: the candidate (circle, square, triangle) whose coverage at the measured
  centroid and area, blurred by the amount that fits best (`BLUR_SIGMAS`), overlaps the
  measured coverage best: a soft-edged square is still a square (blur is what the detail
  score and the sharpness measure punish, not the shape check);
* its **direction**: the dominant axis and sign of the centroid's travel, "still" below
  `MIN_TRAVEL` pixels.

Semantic accuracy asks whether colour, shape and direction all match the prompt. The
detail score re-renders a clean clip of what was detected (same colour, shape, size,
positions and background) and measures how close the frames are to it (PSNR in dB), so
it rewards sharp edges and clean backgrounds and does not punish a wrong but crisp object
twice. Edge sharpness and background noise are reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import COLOURS, DIRECTIONS, SHAPES, ClipParams, Prompt, background_image, render, shape_coverage

#: a pixel belongs to the object when it differs from the background by more than this (RGB distance)
OBJECT_THRESHOLD = 0.2
#: fewer object pixels than this in a frame means "no object"
MIN_OBJECT_PIXELS = 6
#: centroid travel (pixels, first to last frame) below which the object counts as still
MIN_TRAVEL = 3.0
PSNR_CAP = 60.0
#: Gaussian blurs (std in pixels) the shape candidates are also compared at; a clean clip fits best at 0
BLUR_SIGMAS = (0.0, 0.5, 0.8, 1.1, 1.4)
#: the object's coverage is cut below this share (a soft halo is not the object)
ALPHA_FLOOR = 0.25


@dataclass(frozen=True)
class Detection:
    """What the evaluator sees in a clip (None fields: nothing found)."""

    colour: str | None
    shape: str | None
    direction: str | None
    colour_rgb: tuple[float, float, float] | None
    size: float | None
    centres: tuple[tuple[float, float], ...] | None
    background: tuple
    shape_iou: float


@dataclass(frozen=True)
class ClipScore:
    """Scores of one clip against its prompt."""

    detection: Detection
    colour_ok: bool
    shape_ok: bool
    direction_ok: bool
    detail: float  # PSNR (dB) against the clean re-rendering of the detection
    sharpness: float  # edge gradient energy relative to the clean re-rendering (1 = as sharp; 0 without object)
    background_noise: float  # std of the background residual, in [0, 1] intensity units

    @property
    def semantic_ok(self) -> bool:
        return self.colour_ok and self.shape_ok and self.direction_ok


def fit_background(frames: np.ndarray) -> tuple[tuple, np.ndarray]:
    """Robust least-squares fit of the dataset's gradient model over all frames.

    Returns (background params as in `ClipParams.background`, per-pixel residual norm (F, H, W)).
    """
    num_frames, height, width, _ = frames.shape
    xs = np.broadcast_to(np.linspace(-1.0, 1.0, width)[None, None, :], (num_frames, height, width))
    ys = np.broadcast_to(np.linspace(-1.0, 1.0, height)[None, :, None], (num_frames, height, width))
    design = np.stack([np.ones(xs.size), xs.reshape(-1), ys.reshape(-1)], axis=1)
    values = frames.reshape(-1, 3).astype(np.float64)
    keep = np.ones(len(values), dtype=bool)
    for _ in range(3):
        coefficients, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residual = np.linalg.norm(values - design @ coefficients, axis=1)
        keep = residual < OBJECT_THRESHOLD / 2
        if keep.sum() < 3 * len(values) // 10:  # nothing like a background: keep the last fit
            break
    base, slope_x, slope_y = (tuple(float(v) for v in row) for row in coefficients)
    return (base, slope_x, slope_y), residual.reshape(num_frames, height, width)


def _nearest(value: np.ndarray, palette: dict[str, tuple[float, float, float]]) -> str:
    return min(palette, key=lambda name: float(np.linalg.norm(value - np.asarray(palette[name]))))


def _direction_of(centres: np.ndarray) -> str:
    travel = centres[-1] - centres[0]
    if np.hypot(*travel) < MIN_TRAVEL:
        return "still"
    unit = travel / np.hypot(*travel)
    return max(DIRECTIONS, key=lambda name: float(unit @ np.asarray(DIRECTIONS[name])))


def _grow(mask: np.ndarray, pixels: int = 2) -> np.ndarray:
    """`mask` (F, H, W) plus every pixel up to `pixels` away along a row or a column (a margin around the object)."""
    grown = mask.copy()
    for axis in (1, 2):
        for shift in range(1, pixels + 1):
            grown |= np.roll(mask, shift, axis=axis) | np.roll(mask, -shift, axis=axis)
    return grown


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (std `sigma` pixels, zero outside) of images (..., H, W), as two small matrix products."""
    if sigma <= 0:
        return images

    def matrix(n: int) -> np.ndarray:
        offsets = np.arange(n)[:, None] - np.arange(n)[None, :]
        weights = np.exp(-0.5 * (offsets / sigma) ** 2) * (np.abs(offsets) <= 3)
        return weights / weights.sum(axis=1, keepdims=True).max()  # zero outside: edges lose mass

    height, width = images.shape[-2:]
    return matrix(height) @ images @ matrix(width).T


def _shape_fit(shape: str, soft: np.ndarray, centres: np.ndarray) -> float:
    """Mean soft IoU of the measured (unthresholded) coverage with `shape`'s, at the blur that fits best.

    The candidate has the measured mass (blur moves coverage outwards but keeps its sum), so a
    blurred object is compared with a blurred candidate of its true size.
    """
    height, width = soft.shape[1:]
    size = float(np.sqrt(np.median(soft.sum(axis=(1, 2))) / np.pi))
    clean = np.stack([shape_coverage(shape, size, cx, cy, height, width) for cx, cy in centres])
    best = 0.0
    for sigma in BLUR_SIGMAS:
        candidate = _blur(clean, sigma)
        overlaps = np.minimum(soft, candidate).sum(axis=(1, 2)) / np.maximum(
            np.maximum(soft, candidate).sum(axis=(1, 2)), 1e-6
        )
        best = max(best, float(overlaps.mean()))
    return best


def detect(frames: np.ndarray) -> Detection:
    """Recover background, object colour, shape, size, positions and direction from frames (F, H, W, 3) in [0, 1]."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3) in [0, 1], got shape {frames.shape}")
    background_params, residual = fit_background(frames)
    background = background_image(background_params, frames.shape[1], frames.shape[2])
    rough = residual > OBJECT_THRESHOLD
    nothing = Detection(None, None, None, None, None, None, background_params, 0.0)
    if (rough.reshape(len(frames), -1).sum(axis=1) < MIN_OBJECT_PIXELS).any():
        return nothing
    colour_rgb = np.median(frames[rough], axis=0)
    contrast = colour_rgb[None, None, None, :] - background[None]
    alpha = (frames - background[None]) * contrast
    soft = np.clip(alpha.sum(-1) / np.maximum((contrast**2).sum(-1), 1e-6), 0.0, 1.0)
    alpha = np.where(soft > ALPHA_FLOOR, soft, 0.0)
    # the soft coverage near the object: its blurred edge, without background noise
    soft = np.where(_grow(alpha > 0), soft, 0.0)
    height, width = frames.shape[1:3]
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    areas = alpha.sum(axis=(1, 2))
    if (areas < MIN_OBJECT_PIXELS / 2).any():
        return nothing
    centres = np.stack([(alpha * xs).sum(axis=(1, 2)) / areas, (alpha * ys).sum(axis=(1, 2)) / areas], axis=1)
    size = float(np.sqrt(np.median(areas) / np.pi))
    ious = {shape: _shape_fit(shape, soft, centres) for shape in SHAPES}
    shape = max(ious, key=ious.get)
    return Detection(
        colour=_nearest(colour_rgb, COLOURS),
        shape=shape,
        direction=_direction_of(centres),
        colour_rgb=tuple(float(v) for v in colour_rgb),
        size=size,
        centres=tuple((float(x), float(y)) for x, y in centres),
        background=background_params,
        shape_iou=ious[shape],
    )


def clean_rendering(detection: Detection, num_frames: int, height: int, width: int) -> np.ndarray:
    """The clip the detection describes, drawn by the dataset's own renderer (background only if no object)."""
    if detection.shape is None:
        return np.repeat(background_image(detection.background, height, width)[None], num_frames, axis=0).clip(0, 1)
    params = ClipParams(
        colour=detection.colour_rgb,
        shape=detection.shape,
        size=detection.size,
        centres=detection.centres,
        background=detection.background,
    )
    return render(params).astype(np.float64)


def _gradient_energy(frames: np.ndarray) -> np.ndarray:
    gy = np.diff(frames, axis=1)[:, :, :-1]
    gx = np.diff(frames, axis=2)[:, :-1, :]
    return np.sqrt((gx**2 + gy**2).sum(-1))


def score_clip(frames: np.ndarray, prompt: Prompt | str) -> ClipScore:
    """Semantic checks against `prompt` and detail measures of one clip (F, H, W, 3) in [0, 1]."""
    if isinstance(prompt, str):
        prompt = Prompt.parse(prompt)
    frames = np.asarray(frames, dtype=np.float64)
    detection = detect(frames)
    clean = clean_rendering(detection, *frames.shape[:3])
    mse = float(((frames - clean) ** 2).mean())
    detail = PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else float(-10 * np.log10(mse))
    sharpness = 0.0  # no object, no edges
    if detection.shape is not None:
        clean_edges = _gradient_energy(clean)
        edge_weight = clean_edges / clean_edges.sum()
        sharpness = float((_gradient_energy(frames) * edge_weight).sum() / (clean_edges * edge_weight).sum())
    background = np.repeat(background_image(detection.background, *frames.shape[1:3])[None], len(frames), axis=0)
    object_region = np.abs(clean - background).sum(-1) > 1e-3
    grown = _grow(object_region)
    residual = (frames - background)[~grown]
    noise = float(residual.std()) if residual.size else 0.0
    return ClipScore(
        detection=detection,
        colour_ok=detection.colour == prompt.colour,
        shape_ok=detection.shape == prompt.shape,
        direction_ok=detection.direction == prompt.direction,
        detail=detail,
        sharpness=sharpness,
        background_noise=noise,
    )


@dataclass(frozen=True)
class Summary:
    """Means over many clips: accuracies in percent, detail in dB."""

    count: int
    semantic: float
    colour: float
    shape: float
    direction: float
    detail: float
    sharpness: float
    background_noise: float


def summarise(scores: list[ClipScore]) -> Summary:
    if not scores:
        raise ValueError("no clip scores to summarise")

    def percent(values: list[bool]) -> float:
        return 100.0 * float(np.mean(values))

    return Summary(
        count=len(scores),
        semantic=percent([s.semantic_ok for s in scores]),
        colour=percent([s.colour_ok for s in scores]),
        shape=percent([s.shape_ok for s in scores]),
        direction=percent([s.direction_ok for s in scores]),
        detail=float(np.mean([s.detail for s in scores])),
        sharpness=float(np.mean([s.sharpness for s in scores])),
        background_noise=float(np.mean([s.background_noise for s in scores])),
    )
