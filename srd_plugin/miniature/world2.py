"""The miniature world, second design: coarse semantics decided early, fine detail decided late.

A clip is 17 frames of 64x64 pixels with one or two large shapes moving over a textured
background; its prompt names every object: "a red circle moving left and a blue square moving up".

* **Semantics are coarse**: what the prompt names (how many objects, their colours, their shape
  classes, which way each one moves) survives a 4x downsampling of the frames: the shapes have a
  radius of 6-8 px (circle, square and triangle differ by tens of pixels, not the one or two of
  the first world), the colours are the first world's saturated palette, and each object travels
  16-24 px. With two objects the prompt binds shape and direction to colour ("which object does
  what").
* **Detail is fine**: every object and the background carry a sinusoidal pattern (stripes or
  checks, period 4-7 px) whose orientation and phase come from the seed; an object's pattern moves
  with it. A 1.5 px blur leaves every semantic attribute readable and removes most of the pattern,
  so a sampler that settles the layout but not the texture is caught by the detail score.

Every (prompt, seed) pair gives the same clip bit for bit. The prompts are split by a fixed
arithmetic rule (`split_of`) into train / validation / test; seeds 0..999 are for training, the
benchmark uses 1000 and up. See docs/miniature.md, "Second design".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .dataset import COLOURS, DIRECTIONS, SHAPES, shape_coverage

HEIGHT = 64
WIDTH = 64
NUM_FRAMES = 17
SPLITS = ("train", "validation", "test")
#: radius (of the circle of equal area) of the objects, in pixels
SIZE_RANGE = (6.0, 8.0)
#: speed in pixels per frame (16-24 px of travel over the clip)
SPEED_RANGE = (1.0, 1.5)
PATTERN_KINDS = ("stripes", "checks")
#: period of every pattern, in pixels: fine next to the objects, coarse enough for the VAE's 2x2 patches
PERIOD_RANGE = (4.0, 7.0)
OBJECT_PATTERN_AMPLITUDE = 0.12
BACKGROUND_PATTERN_AMPLITUDE = 0.08
#: the two objects' outlines stay at least this many pixels apart in every frame
MIN_GAP = 2.0


@dataclass(frozen=True)
class ObjectSpec:
    """What the prompt says about one object."""

    colour: str
    shape: str
    direction: str

    @property
    def text(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"


@dataclass(frozen=True)
class Prompt2:
    """One or two objects; with two, their colours differ and the first has the lower palette index."""

    objects: tuple[ObjectSpec, ...]

    def __post_init__(self) -> None:
        if len(self.objects) not in (1, 2):
            raise ValueError(f"a prompt names one or two objects, got {len(self.objects)}")
        for spec in self.objects:
            for value, known, what in (
                (spec.colour, COLOURS, "colour"),
                (spec.shape, SHAPES, "shape"),
                (spec.direction, DIRECTIONS, "direction"),
            ):
                if value not in known:
                    raise ValueError(f"unknown {what} {value!r}; known: {', '.join(known)}")
        if len(self.objects) == 2:
            first, second = (list(COLOURS).index(spec.colour) for spec in self.objects)
            if first >= second:
                raise ValueError(
                    f"two objects need different colours, the first earlier in the palette ({', '.join(COLOURS)}); "
                    f"got {self.objects[0].colour} then {self.objects[1].colour}"
                )

    @property
    def text(self) -> str:
        return " and ".join(spec.text for spec in self.objects)

    @classmethod
    def parse(cls, text: str) -> Prompt2:
        """The inverse of `text`; a clear error for anything outside the world's vocabulary."""
        parts = text.strip().lower().split(" and ")
        specs = []
        for part in parts:
            words = part.split()
            if len(words) != 5 or words[0] != "a" or words[3] != "moving":
                raise ValueError(
                    f"prompt {text!r}: {part!r} is not of the form 'a <colour> <shape> moving <direction>' "
                    "(two objects are joined by ' and ')"
                )
            specs.append(ObjectSpec(words[1], words[2], words[4]))
        return cls(tuple(specs))


def _triple_key(spec: ObjectSpec) -> tuple[int, int, int, int]:
    c = list(COLOURS).index(spec.colour)
    s = SHAPES.index(spec.shape)
    d = list(DIRECTIONS).index(spec.direction)
    return c, s, d, (c + 2 * s + d) % 5


def all_prompts() -> list[Prompt2]:
    """Every one-object prompt (60), then every two-object prompt (10 colour pairs x 144 = 1440)."""
    singles = [ObjectSpec(c, s, d) for c, s, d in itertools.product(COLOURS, SHAPES, DIRECTIONS)]
    pairs = [
        Prompt2((first, second))
        for first, second in itertools.product(singles, singles)
        if list(COLOURS).index(first.colour) < list(COLOURS).index(second.colour)
    ]
    return [Prompt2((spec,)) for spec in singles] + pairs


def split_of(prompt: Prompt2) -> str:
    """train / validation / test by fixed arithmetic on the attribute indices (never drifts).

    One object: the first world's rule (k = (colour + 2 shape + direction) mod 5; k == 0 test,
    k == 1 with an even shape + direction validation). Two objects: u = (k1 + 2 k2 + shape1 +
    direction2) mod 7; 0 test, 1 validation. Every attribute value, and every pair of values within
    an object or across the two objects, keeps training prompts (a test checks it).
    """
    if len(prompt.objects) == 1:
        _, s, d, k = _triple_key(prompt.objects[0])
        if k == 0:
            return "test"
        return "validation" if k == 1 and (s + d) % 2 == 0 else "train"
    _, s1, _, k1 = _triple_key(prompt.objects[0])
    _, _, d2, k2 = _triple_key(prompt.objects[1])
    u = (k1 + 2 * k2 + s1 + d2) % 7
    return "test" if u == 0 else "validation" if u == 1 else "train"


def prompts_of(split: str) -> list[Prompt2]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return [p for p in all_prompts() if split_of(p) == split]


RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Pattern:
    """A sinusoidal texture: stripes cos(2 pi u / period + phase), or checks cos(..u..) cos(..v..),
    with (u, v) the pixel position rotated by `angle`."""

    kind: str
    period: float
    angle: float
    phase: float
    amplitude: float

    def values(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u = x * np.cos(self.angle) + y * np.sin(self.angle)
        wave = np.cos(2 * np.pi * u / self.period + self.phase)
        if self.kind == "checks":
            v = -x * np.sin(self.angle) + y * np.cos(self.angle)
            wave = wave * np.cos(2 * np.pi * v / self.period + self.phase)
        return self.amplitude * wave


@dataclass(frozen=True)
class ObjectParams:
    colour: RGB
    shape: str
    size: float
    centres: tuple[tuple[float, float], ...]  # (x, y) of the area centroid per frame, in pixels
    pattern: Pattern  # in coordinates relative to the centre: the texture moves with the object


@dataclass(frozen=True)
class ClipParams2:
    """Everything needed to draw a clip (the ground truth the evaluators compare against)."""

    objects: tuple[ObjectParams, ...]
    background: RGB
    background_pattern: Pattern


def _pattern(rng: np.random.Generator, amplitude: float) -> Pattern:
    return Pattern(
        kind=PATTERN_KINDS[int(rng.integers(len(PATTERN_KINDS)))],
        period=float(rng.uniform(*PERIOD_RANGE)),
        angle=float(rng.uniform(0, np.pi)),
        phase=float(rng.uniform(0, 2 * np.pi)),
        amplitude=amplitude,
    )


def _path(rng: np.random.Generator, spec: ObjectSpec, size: float) -> tuple[tuple[float, float], ...]:
    speed = rng.uniform(*SPEED_RANGE)
    travel = speed * (NUM_FRAMES - 1)
    margin = 1.6 * size + 0.5  # the triangle's apex is 1.56 * size above its centroid
    dx, dy = DIRECTIONS[spec.direction]
    centre = []
    for step, extent in ((dx, WIDTH), (dy, HEIGHT)):
        if step == 0:
            centre.append(rng.uniform(margin, extent - margin))
        else:
            start = rng.uniform(margin, extent - margin - travel)
            centre.append(start if step > 0 else extent - start)
    return tuple((centre[0] + dx * speed * f, centre[1] + dy * speed * f) for f in range(NUM_FRAMES))


def _apart(first: ObjectParams, second: ObjectParams) -> bool:
    reach = 1.6 * (first.size + second.size) + MIN_GAP
    return all(np.hypot(a[0] - b[0], a[1] - b[1]) >= reach for a, b in zip(first.centres, second.centres))


def sample_params(prompt: Prompt2 | str, seed: int) -> ClipParams2:
    """Draw the free parameters of a clip for `prompt` from `seed` (deterministic).

    With two objects both paths are redrawn until the outlines stay `MIN_GAP` apart in every
    frame, so the evaluators never have to separate touching objects.
    """
    if isinstance(prompt, str):
        prompt = Prompt2.parse(prompt)
    rng = np.random.default_rng([seed, *map(ord, prompt.text)])
    grey = rng.uniform(0.2, 0.4)
    background = tuple(float(v) for v in grey + rng.uniform(-0.04, 0.04, size=3))
    background_pattern = _pattern(rng, BACKGROUND_PATTERN_AMPLITUDE)
    looks = []
    for spec in prompt.objects:
        colour = tuple(float(np.clip(v + rng.uniform(-0.04, 0.04), 0.0, 1.0)) for v in COLOURS[spec.colour])
        looks.append((colour, float(rng.uniform(*SIZE_RANGE)), _pattern(rng, OBJECT_PATTERN_AMPLITUDE)))
    for _ in range(1000):
        objects = [
            ObjectParams(colour, spec.shape, size, _path(rng, spec, size), pattern)
            for spec, (colour, size, pattern) in zip(prompt.objects, looks)
        ]
        if len(objects) == 1 or _apart(*objects):
            break
    else:  # pragma: no cover - the world's sizes leave room; a test checks every prompt
        raise RuntimeError(f"no room for both objects of {prompt.text!r} (seed {seed})")
    return ClipParams2(tuple(objects), background, background_pattern)


_YS, _XS = np.mgrid[0:HEIGHT, 0:WIDTH] + 0.5  # pixel centres


def coverage(params: ClipParams2) -> np.ndarray:
    """Each object's anti-aliased coverage per frame, float32 (objects, F, H, W) in [0, 1]."""
    return np.stack(
        [
            np.stack([shape_coverage(obj.shape, obj.size, cx, cy, HEIGHT, WIDTH) for cx, cy in obj.centres])
            for obj in params.objects
        ]
    ).astype(np.float32)


def render_layers(params: ClipParams2) -> tuple[np.ndarray, np.ndarray]:
    """(frames (F, H, W, 3) in [0, 1], the same clip without any pattern): the second is what a
    sampler that gets the semantics but none of the detail would draw."""
    plain = np.broadcast_to(np.asarray(params.background), (NUM_FRAMES, HEIGHT, WIDTH, 3)).astype(np.float64)
    textured = plain + params.background_pattern.values(_XS, _YS)[None, :, :, None]
    for obj, alpha in zip(params.objects, coverage(params)):
        alpha = alpha[..., None].astype(np.float64)
        colour = np.asarray(obj.colour)[None, None, None, :]
        inside = np.stack([obj.pattern.values(_XS - cx, _YS - cy) for cx, cy in obj.centres])[..., None]
        plain = alpha * colour + (1 - alpha) * plain
        textured = alpha * (colour + inside) + (1 - alpha) * textured
    return np.clip(textured, 0, 1).astype(np.float32), np.clip(plain, 0, 1).astype(np.float32)


def render(params: ClipParams2) -> np.ndarray:
    """The clip as float32 frames (F, H, W, 3) in [0, 1]."""
    return render_layers(params)[0]


def make_clip(prompt: Prompt2 | str, seed: int) -> np.ndarray:
    """The clip of `prompt` for `seed`: float32 frames (F, H, W, 3) in [0, 1]."""
    return render(sample_params(prompt, seed))
