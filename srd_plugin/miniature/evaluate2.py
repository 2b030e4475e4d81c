"""Evaluators of the second miniature world (`world2`): they know the ground truth, no learned model.

**Semantics** are read from a low-passed copy of the frames (a Gaussian of `LOWPASS_SIGMA` px
removes the patterns, which are detail, and keeps the objects): the background is the median
colour; a pixel that stands out from it by more than `OBJECT_THRESHOLD` and lies within
`PALETTE_RADIUS` of a palette colour belongs to an object of that colour; a colour present in
enough pixels (`MIN_AREA`, median over frames) is an object. For each object the soft coverage
gives the centroid per frame (its direction: the dominant axis and sign of the travel, "still"
under `MIN_TRAVEL` px) and its shape (the first world's soft-IoU fit, over a range of blurs).
A clip is semantically right when it holds exactly the prompted objects, each of the prompted
colour with the prompted shape moving the prompted way: with two objects, shape and direction
are checked per colour, so swapping what the two objects do fails ("which object does what").

**Detail** is measured against the true clip of the same (prompt, seed), in the high-frequency
band (the frames minus their `LOWPASS_SIGMA` low-pass, which is where the patterns live) away
from the objects' outlines (pixels within `EDGE_MARGIN` px of a strong edge of the true clip are
left out: an outline is there with or without the pattern): the PSNR and the correlation of the
two bands, and the band's energy relative to the true clip's. This is the measure for reconstructions (the
VAE check), where the true clip is known. A generated clip is a different sample of the same
prompt, with no true clip to compare with: for it, `pattern_energy` measures how much fine
texture there is at all (the high band away from the clip's own outlines, relative to the
world's typical true clip). It tells a smoothed clip from a textured one, but not a right
pattern from noise: `fidelity2.score_fidelity` does, by fitting the world's gratings region by
region (see docs/miniature.md, "Second design").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .dataset import COLOURS, DIRECTIONS, SHAPES, shape_coverage
from .world2 import Prompt2

if TYPE_CHECKING:
    from .fidelity2 import FidelityScore

LOWPASS_SIGMA = 1.5
#: RGB distance from the background above which a (low-passed) pixel may be an object's
OBJECT_THRESHOLD = 0.2
#: ... and within which of a palette colour it must lie to count for that colour
PALETTE_RADIUS = 0.35
#: an object of a colour is present when at least this many pixels have it (median over frames)
MIN_AREA = 30
MIN_TRAVEL = 4.0
#: extra Gaussian blurs (px) the shape candidates are tried at, on top of the low-pass
SHAPE_BLURS = (0.0, 0.75, 1.25, 2.0)
PSNR_CAP = 60.0
#: a pixel of the true clip's low-pass whose RGB gradient norm exceeds this is on an object's outline
EDGE_GRADIENT = 0.1
#: ... and the detail score leaves out pixels this close to one
EDGE_MARGIN = 2


def gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (std `sigma` px, edges renormalised) of frames (F, H, W[, C]) along H and W."""
    if sigma <= 0:
        return frames

    def matrix(n: int) -> np.ndarray:
        offsets = np.arange(n)[:, None] - np.arange(n)[None, :]
        weights = np.exp(-0.5 * (offsets / sigma) ** 2) * (np.abs(offsets) <= 4 * sigma)
        return weights / weights.sum(axis=1, keepdims=True)

    channels_last = frames.ndim == 4
    images = np.moveaxis(frames, -1, 1) if channels_last else frames
    height, width = images.shape[-2:]
    blurred = matrix(height) @ images @ matrix(width).T
    return np.moveaxis(blurred, 1, -1) if channels_last else blurred


@dataclass(frozen=True)
class DetectedObject:
    colour: str
    shape: str
    direction: str
    size: float
    centres: tuple[tuple[float, float], ...]
    shape_iou: float


@dataclass(frozen=True)
class Detection2:
    objects: tuple[DetectedObject, ...]
    background: tuple[float, float, float]

    def by_colour(self, colour: str) -> DetectedObject | None:
        return next((obj for obj in self.objects if obj.colour == colour), None)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3) in [0, 1], got shape {frames.shape}")
    return frames


def _direction_of(centres: np.ndarray) -> str:
    travel = centres[-1] - centres[0]
    if np.hypot(*travel) < MIN_TRAVEL:
        return "still"
    unit = travel / np.hypot(*travel)
    return max(DIRECTIONS, key=lambda name: float(unit @ np.asarray(DIRECTIONS[name])))


def _shape_of(soft: np.ndarray, centres: np.ndarray) -> tuple[str, float]:
    """The shape whose coverage (at the measured centroids and mass, blurred like the measurement) overlaps best."""
    height, width = soft.shape[1:]
    size = float(np.sqrt(np.median(soft.sum(axis=(1, 2))) / np.pi))
    best: tuple[str, float] = ("circle", -1.0)
    for shape in SHAPES:
        clean = np.stack([shape_coverage(shape, size, cx, cy, height, width) for cx, cy in centres])
        clean = gaussian_blur(clean, LOWPASS_SIGMA)
        for sigma in SHAPE_BLURS:
            candidate = gaussian_blur(clean, sigma)
            overlap = np.minimum(soft, candidate).sum(axis=(1, 2)) / np.maximum(
                np.maximum(soft, candidate).sum(axis=(1, 2)), 1e-6
            )
            if overlap.mean() > best[1]:
                best = (shape, float(overlap.mean()))
    return best


def detect(frames: np.ndarray) -> Detection2:
    """The objects (colour, shape, direction, size, path) and background colour of frames (F, H, W, 3)."""
    return detect_with_coverage(frames)[0]


def detect_with_coverage(frames: np.ndarray) -> tuple[Detection2, dict[str, np.ndarray]]:
    """`detect`, plus each found object's soft coverage (F, H, W) in [0, 1] by colour name (from the
    low-passed frames: 1 well inside, 0 away from it), for evaluators that score inside the objects."""
    frames = _check_frames(frames)
    low = gaussian_blur(frames, LOWPASS_SIGMA)
    background = np.median(low.reshape(-1, 3), axis=0)
    standing_out = np.linalg.norm(low - background, axis=-1) > OBJECT_THRESHOLD
    palette = np.asarray(list(COLOURS.values()))
    distances = np.linalg.norm(low[..., None, :] - palette, axis=-1)  # (F, H, W, colours)
    nearest = distances.argmin(axis=-1)
    labelled = standing_out & (distances.min(axis=-1) < PALETTE_RADIUS)
    height, width = frames.shape[1:3]
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    objects, coverages = [], {}
    for index, name in enumerate(COLOURS):
        mask = labelled & (nearest == index)
        if np.median(mask.sum(axis=(1, 2))) < MIN_AREA or (mask.sum(axis=(1, 2)) == 0).any():
            continue
        contrast = palette[index] - background
        soft = np.clip(((low - background) * contrast).sum(-1) / max(float(contrast @ contrast), 1e-6), 0.0, 1.0)
        near = gaussian_blur(mask.astype(np.float64), 2.0) > 0.02  # the object and its soft edge
        soft = np.where(near, soft, 0.0)
        areas = soft.sum(axis=(1, 2))
        centres = np.stack([(soft * xs).sum(axis=(1, 2)) / areas, (soft * ys).sum(axis=(1, 2)) / areas], axis=1)
        shape, iou = _shape_of(soft, centres)
        coverages[name] = soft
        objects.append(
            DetectedObject(
                colour=name,
                shape=shape,
                direction=_direction_of(centres),
                size=float(np.sqrt(np.median(areas) / np.pi)),
                centres=tuple((float(x), float(y)) for x, y in centres),
                shape_iou=iou,
            )
        )
    return Detection2(tuple(objects), tuple(float(v) for v in background)), coverages


@dataclass(frozen=True)
class SemanticScore:
    """Per-attribute checks of one clip against its prompt."""

    detection: Detection2
    count_ok: bool  # as many objects as prompted
    colour_ok: bool  # exactly the prompted colours
    shape_ok: bool  # every prompted object (found by its colour) has the prompted shape
    direction_ok: bool  # ... and moves the prompted way

    @property
    def semantic_ok(self) -> bool:
        return self.count_ok and self.colour_ok and self.shape_ok and self.direction_ok


def score_semantics(frames: np.ndarray, prompt: Prompt2 | str) -> SemanticScore:
    if isinstance(prompt, str):
        prompt = Prompt2.parse(prompt)
    detection = detect(frames)
    found = [detection.by_colour(spec.colour) for spec in prompt.objects]
    return SemanticScore(
        detection=detection,
        count_ok=len(detection.objects) == len(prompt.objects),
        colour_ok={obj.colour for obj in detection.objects} == {spec.colour for spec in prompt.objects},
        shape_ok=all(obj is not None and obj.shape == spec.shape for obj, spec in zip(found, prompt.objects)),
        direction_ok=all(
            obj is not None and obj.direction == spec.direction for obj, spec in zip(found, prompt.objects)
        ),
    )


@dataclass(frozen=True)
class DetailScore:
    """How much of the true clip's fine pattern a reconstruction keeps."""

    psnr: float  # of the whole frames, dB
    high_psnr: float  # of the high-frequency band away from the outlines, dB
    high_correlation: float  # Pearson correlation of the two high-frequency bands (1: all of it, 0: none)
    high_energy: float  # std of the band relative to the true clip's (1: as much texture; < 1: smoothed)


def high_band(frames: np.ndarray) -> np.ndarray:
    """The frames minus their low-pass: the patterns and the edges, without the layout."""
    frames = np.asarray(frames, dtype=np.float64)
    return frames - gaussian_blur(frames, LOWPASS_SIGMA)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else float(-10 * np.log10(mse))


def pattern_region(truth: np.ndarray) -> np.ndarray:
    """Pixels (F, H, W) of the true clip away from the objects' outlines, where only the patterns are fine."""
    low = gaussian_blur(_check_frames(truth), LOWPASS_SIGMA)
    gy, gx = np.gradient(low, axis=(1, 2))
    edges = np.sqrt((gx**2 + gy**2).sum(-1)) > EDGE_GRADIENT
    near = gaussian_blur(edges.astype(np.float64), EDGE_MARGIN) > 0.01
    return ~near


#: `pattern_energy` of true clips: the mean over the validation clips of `train2.validation_set(96)`
#: (0.0406, measured with `pattern_energy(frames, reference=1.0)`; 0.034-0.052), so true clips score about 1
TRUE_PATTERN_ENERGY = 0.0406


def pattern_energy(frames: np.ndarray, reference: float = TRUE_PATTERN_ENERGY) -> float:
    """Reference-free amount of fine texture: the std of the high band away from the clip's own outlines,
    divided by `reference` (true clips: about 1; a smoothed clip: near 0; noise raises it too)."""
    frames = _check_frames(frames)
    return float(high_band(frames)[pattern_region(frames)].std() / reference)


def score_detail(frames: np.ndarray, truth: np.ndarray) -> DetailScore:
    """Detail of `frames` against the true clip `truth` (both (F, H, W, 3) in [0, 1])."""
    frames, truth = _check_frames(frames), _check_frames(truth)
    if frames.shape != truth.shape:
        raise ValueError(f"frames {frames.shape} and the true clip {truth.shape} differ in shape")
    region = pattern_region(truth)
    band, true_band = high_band(frames)[region], high_band(truth)[region]
    a, b = band - band.mean(), true_band - true_band.mean()
    correlation = float((a * b).sum() / max(np.sqrt((a**2).sum() * (b**2).sum()), 1e-12))
    return DetailScore(
        psnr=_psnr(frames, truth),
        high_psnr=_psnr(band, true_band),
        high_correlation=correlation,
        high_energy=float(band.std() / max(true_band.std(), 1e-12)),
    )


@dataclass(frozen=True)
class Summary2:
    """Means over many clips: accuracies in percent, PSNRs in dB; detail and fidelity when given."""

    count: int
    semantic: float
    count_accuracy: float
    colour: float
    shape: float
    direction: float
    psnr: float | None = None
    high_psnr: float | None = None
    high_correlation: float | None = None
    high_energy: float | None = None
    fidelity_db: float | None = None  # `fidelity2.FidelityScore` means (reference-free, for generations)
    fidelity_explained: float | None = None
    fidelity_contrast: float | None = None


def summarise(
    semantics: list[SemanticScore],
    details: list[DetailScore] | None = None,
    fidelities: list[FidelityScore] | None = None,
) -> Summary2:
    """Means of per-clip scores; detail (against true clips) and fidelity (reference-free) are optional,
    as reconstructions have a true clip and generations do not."""
    if not semantics:
        raise ValueError("no clip scores to summarise")

    def percent(values: list[bool]) -> float:
        return 100.0 * float(np.mean(values))

    extra = {}
    if details:
        extra = {name: float(np.mean([getattr(d, name) for d in details])) for name in DetailScore.__dataclass_fields__}
    if fidelities:
        extra["fidelity_db"] = float(np.mean([f.fidelity_db for f in fidelities]))
        extra["fidelity_explained"] = float(np.mean([f.explained for f in fidelities]))
        extra["fidelity_contrast"] = float(np.mean([f.contrast for f in fidelities]))
    return Summary2(
        count=len(semantics),
        semantic=percent([s.semantic_ok for s in semantics]),
        count_accuracy=percent([s.count_ok for s in semantics]),
        colour=percent([s.colour_ok for s in semantics]),
        shape=percent([s.shape_ok for s in semantics]),
        direction=percent([s.direction_ok for s in semantics]),
        **extra,
    )
