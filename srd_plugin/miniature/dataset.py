"""The miniature world: short clips of one coloured shape moving over a smooth background.

Each clip is described by a prompt "a <colour> <shape> moving <direction>". Everything
else (background gradient, object size, speed, start position, a slight colour jitter)
is drawn from a seed, so a (prompt, seed) pair always gives the same clip, bit for bit.

The prompt combinations are split by a fixed arithmetic rule (no randomness, so the split
can never drift): every colour, shape and direction, and every pair of them, is seen in
training, but 12 colour-shape-direction triples are held out for the benchmark and 6
more are kept as a validation split for any tuning. A model that gets the held-out
prompts right has learned to bind the words, not memorised the clips.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

#: object colours (RGB in [0, 1]); saturated or bright, so they stand out from the greyish backgrounds
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
    "white": (0.95, 0.95, 0.95),
}
SHAPES = ("circle", "square", "triangle")
#: unit motion per direction in image coordinates (x to the right, y downwards)
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

HEIGHT = 32
WIDTH = 32
NUM_FRAMES = 9
SUPERSAMPLING = 4  # sub-pixel samples per axis for anti-aliased edges

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Prompt:
    """One colour-shape-direction combination."""

    colour: str
    shape: str
    direction: str

    @property
    def text(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"

    @classmethod
    def parse(cls, text: str) -> Prompt:
        """The inverse of `text`; a clear error for anything outside the world's vocabulary."""
        words = text.strip().lower().split()
        if len(words) != 5 or words[0] != "a" or words[3] != "moving":
            raise ValueError(f"prompt {text!r} is not of the form 'a <colour> <shape> moving <direction>'")
        prompt = cls(words[1], words[2], words[4])
        for value, known, what in (
            (prompt.colour, COLOURS, "colour"),
            (prompt.shape, SHAPES, "shape"),
            (prompt.direction, DIRECTIONS, "direction"),
        ):
            if value not in known:
                raise ValueError(f"unknown {what} {value!r} in {text!r}; known: {', '.join(known)}")
        return prompt


def all_prompts() -> list[Prompt]:
    return [Prompt(c, s, d) for c, s, d in itertools.product(COLOURS, SHAPES, DIRECTIONS)]


def split_of(prompt: Prompt) -> str:
    """train / validation / test by a Latin-square rule on the attribute indices.

    With k = (colour + 2 * shape + direction) mod 5, k == 0 is test (exactly one colour per
    shape-direction pair, 12 prompts) and k == 1 with an even shape + direction is
    validation (6 prompts). Every pair of attribute values keeps at least one training prompt.
    """
    c = list(COLOURS).index(prompt.colour)
    s = SHAPES.index(prompt.shape)
    d = list(DIRECTIONS).index(prompt.direction)
    k = (c + 2 * s + d) % 5
    if k == 0:
        return "test"
    if k == 1 and (s + d) % 2 == 0:
        return "validation"
    return "train"


def prompts_of(split: str) -> list[Prompt]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return [p for p in all_prompts() if split_of(p) == split]


RGB = tuple[float, float, float]
#: background(x, y) = base + slope_x * x' + slope_y * y' per channel, with x', y' in [-1, 1]
Background = tuple[RGB, RGB, RGB]


@dataclass(frozen=True)
class ClipParams:
    """Everything needed to draw a clip; the evaluator re-renders what it detects with these too."""

    colour: RGB
    shape: str
    size: float  # radius of the circle of equal area, in pixels
    centres: tuple[tuple[float, float], ...]  # (x, y) of the object per frame, in pixels
    background: Background


def sample_params(prompt: Prompt, seed: int) -> ClipParams:
    """Draw the free parameters of a clip for `prompt` from `seed` (deterministic)."""
    rng = np.random.default_rng([seed, *map(ord, prompt.text)])
    size = rng.uniform(3.5, 5.0)
    speed = rng.uniform(1.0, 1.5)
    travel = speed * (NUM_FRAMES - 1)
    margin = 1.6 * size + 0.5  # the triangle's apex is 1.56 * size above its centroid
    dx, dy = DIRECTIONS[prompt.direction]
    centre = []
    for step, extent in ((dx, WIDTH), (dy, HEIGHT)):
        if step == 0:
            centre.append(rng.uniform(margin, extent - margin))
        else:
            start = rng.uniform(margin, extent - margin - travel)
            centre.append(start if step > 0 else extent - start)
    centres = tuple((centre[0] + dx * speed * f, centre[1] + dy * speed * f) for f in range(NUM_FRAMES))
    colour = tuple(float(np.clip(v + rng.uniform(-0.04, 0.04), 0.0, 1.0)) for v in COLOURS[prompt.colour])
    grey = rng.uniform(0.18, 0.42)
    tint = rng.uniform(-0.05, 0.05, size=3)
    base = tuple(float(v) for v in grey + tint)
    angle = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(0.0, 0.12)
    slope = strength * np.array([np.cos(angle), np.sin(angle)])
    channel_gain = rng.uniform(0.7, 1.3, size=3)
    bx = tuple(float(slope[0] * g) for g in channel_gain)
    by = tuple(float(slope[1] * g) for g in channel_gain)
    return ClipParams(colour=colour, shape=prompt.shape, size=float(size), centres=centres, background=(base, bx, by))


def shape_coverage(
    shape: str, size: float, cx: float, cy: float, height: int = HEIGHT, width: int = WIDTH
) -> np.ndarray:
    """Fraction of each pixel covered by the shape (anti-aliased by supersampling), shape (H, W).

    All shapes have the area of a circle of radius `size`; (cx, cy) is the area centroid.
    Pixel (i, j) covers [j, j+1) x [i, i+1).
    """
    n = SUPERSAMPLING
    offsets = (np.arange(n) + 0.5) / n
    ys = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)
    xs = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
    x = xs[None, :] - cx
    y = ys[:, None] - cy
    if shape == "circle":
        inside = x**2 + y**2 <= size**2
    elif shape == "square":
        half = size * np.sqrt(np.pi) / 2
        inside = (np.abs(x) <= half) & (np.abs(y) <= half)
    elif shape == "triangle":
        side = size * np.sqrt(4 * np.pi / np.sqrt(3))  # equilateral, pointing up
        h = side * np.sqrt(3) / 2
        top = -2 * h / 3
        bottom = h / 3
        # inside: below the base line's opposite, between the two slanted edges
        inside = (y <= bottom) & (y >= top) & (np.abs(x) <= (y - top) / np.sqrt(3))
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return inside.reshape(height, n, width, n).mean(axis=(1, 3))


def background_image(background: Background, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """The smooth background of a clip, shape (H, W, 3)."""
    base, bx, by = (np.asarray(v, dtype=np.float64) for v in background)
    xs = np.linspace(-1.0, 1.0, width)[None, :, None]
    ys = np.linspace(-1.0, 1.0, height)[:, None, None]
    return base[None, None, :] + bx[None, None, :] * xs + by[None, None, :] * ys


def coverage(params: ClipParams) -> np.ndarray:
    """The object's per-pixel coverage in every frame, float32 (F, H, W) in [0, 1]."""
    return np.stack([shape_coverage(params.shape, params.size, cx, cy) for cx, cy in params.centres]).astype(np.float32)


def render(params: ClipParams) -> np.ndarray:
    """The clip as float32 frames (F, H, W, 3) in [0, 1]."""
    background = background_image(params.background)[None]
    colour = np.asarray(params.colour)[None, None, None, :]
    alpha = coverage(params)[..., None]
    return np.clip(alpha * colour + (1 - alpha) * background, 0.0, 1.0).astype(np.float32)


def make_clip(prompt: Prompt | str, seed: int) -> np.ndarray:
    """The clip of `prompt` for `seed`: float32 frames (F, H, W, 3) in [0, 1]."""
    if isinstance(prompt, str):
        prompt = Prompt.parse(prompt)
    return render(sample_params(prompt, seed))


def to_model_range(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) in [0, 1] -> (3, F, H, W) in [-1, 1], the VAE's input layout."""
    return (np.transpose(frames, (3, 0, 1, 2)) * 2.0 - 1.0).astype(np.float32)
