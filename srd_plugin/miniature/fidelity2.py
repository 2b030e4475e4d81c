"""Reference-free detail fidelity of the second miniature world's clips (`world2`): does the fine
detail look like the world's patterns, without a true clip to compare with?

A generated clip is another sample of its prompt, so its patterns need not be the seed's; but the
world's rules say what they must look like: in the background, and inside each object in the
object's own moving frame, one clean sinusoidal grating of the world's family (stripes or checks,
period in `world2.PERIOD_RANGE`, any angle and phase) at the world's amplitude
(`OBJECT_PATTERN_AMPLITUDE`, `BACKGROUND_PATTERN_AMPLITUDE`). `score_fidelity` measures how far
each region's fine detail is from that family: fidelity to the family, not to one seed's pattern
(a clip whose object carries another period or angle of the family is as faithful as the truth).

Per region, the fine detail is the high band of the RGB mean (the patterns are the same on the
three channels): the frames minus their `LOWPASS_SIGMA` Gaussian low-pass, the low-pass taken over
the region's own pixels only (normalised convolution), so neither an outline nor the neighbouring
region leaks in; every candidate grating goes through exactly this filter before it is compared,
so what the low-pass takes of a world grating (under 1% of fine checks, 40% of stripes of period
7) is taken from both sides. The regions:
the background is the pixels of `pattern_region` (away from every outline) outside every found
object in every frame (a static mask, as the background pattern is static); an object's interior
is where its low-passed soft coverage exceeds `INTERIOR_COVERAGE` (about 2 px inside its outline),
in a window that follows the object's centre found by `detect`. The world clips colour + pattern
to [0, 1], so a light object's true pattern is clipped at its crests: in true clips white objects
read a contrast of 0.6-0.9 (and explain 0.82-0.96 of their band), yellow and blue ones 0.84-0.97,
red, green ones and the background 0.96-1.

For each region the family is searched (kind x period x angle; phases and amplitudes are linear:
stripes use cos and sin of the wave, checks the identity cos(a + p) cos(b + q) = (cos(a - b + p -
q) + cos(a + b + p + q)) / 2, two waves at +-45 degrees and sqrt(2) times finer, each half the
amplitude) coarsely on an FFT of the band, then refined by a local pattern search on the exact
filtered least squares. Two fits come out of the search:

* the grating the region draws (free amplitude, best R^2): its kind, period, angle, its amplitude
  relative to the world's (`contrast`) and the share of the band it explains (`explained`);
* the world grating nearest to the band (the family at the world's amplitude, least squares):
  the error to it is the region's infidelity. A true clip is at (nearly) zero; half the contrast
  leaves a quarter of the true grating's energy; a region without any pattern is at the energy of
  the faintest world grating (checks of period 7: a test checks it analytically); noise adds its
  own energy to that (noise is not detail: std 0.02 and more scores lower than no pattern, a
  faint std of 0.003 at most 0.1 dB higher, where a faint grating happens to match it). Taking
  the nearest grating, rather than the best-R^2 one at the world's amplitude, makes "no pattern"
  a definite score, which noise does not beat; the price: a faint remnant of a fine grating (a
  1.5 px blur keeps under 1% of checks of period 4) is as far from the family as no pattern,
  within 0.2 dB.

`fidelity_db` is the PSNR of the band against that nearest world grating, pooled over all scored
pixels (the background holds most of them, 93-98% in the tests: per-region figures are in
`regions`). A clip takes 0.13-0.3 s on one thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .evaluate2 import LOWPASS_SIGMA, PSNR_CAP, _check_frames, detect_with_coverage, gaussian_blur, pattern_region
from .world2 import BACKGROUND_PATTERN_AMPLITUDE, OBJECT_PATTERN_AMPLITUDE, PERIOD_RANGE, Prompt2

#: an object's interior: its low-passed soft coverage above this (about 2 px inside the outline)
INTERIOR_COVERAGE = 0.9
#: a region with fewer scored pixel-frames than this is not scored
MIN_PIXELS = 32
#: half the side of the window that follows an object (its interior lies within ~11 px of its centre)
WINDOW = 14
#: band energy per pixel below which a region's band is rounding error: nothing to explain
ENERGY_FLOOR = 1e-12
#: period and angle steps (in FFT bins) below which the local search stops
REFINE_STOP = 1 / 16


@dataclass(frozen=True)
class RegionFit:
    """One region's fits: the grating it draws (free amplitude) and its distance to the world's family."""

    name: str  # "background" or the object's colour
    pixels: int  # pixel-frames scored
    kind: str  # of the grating the region draws ...
    period: float  # ... in pixels
    angle: float  # ... radians, in [0, pi) for stripes and [0, pi / 2) for checks (their symmetries)
    contrast: float  # its amplitude / the world's (1: right contrast, 0: no pattern)
    explained: float  # the share of the band's energy it explains (R^2; 1: one clean grating)
    mse: float  # mean squared error of the band to the nearest world-amplitude grating


@dataclass(frozen=True)
class FidelityScore:
    """Reference-free detail fidelity of one clip (see the module docstring)."""

    fidelity_db: float  # PSNR of the band against the nearest world gratings, all regions' pixels pooled
    explained: float  # mean over regions of `RegionFit.explained`
    contrast: float  # mean over regions of `RegionFit.contrast`
    regions: tuple[RegionFit, ...]


@dataclass(frozen=True)
class _Region:
    """The band of one region, ready for fitting: arrays (frames, h, w), zero outside the mask."""

    name: str
    amplitude: float  # the world's
    band: np.ndarray
    mask: np.ndarray
    xs: np.ndarray  # pixel coordinates relative to the pattern's origin
    ys: np.ndarray
    weight: int  # pixel-frames each masked pixel stands for (the background's frames are averaged)
    spread: float  # band energy no static grating can explain (the background's frame-to-frame changes)

    @property
    def pixels(self) -> int:
        return int(self.mask.sum()) * self.weight

    @property
    def energy(self) -> float:
        return self.weight * float((self.band**2).sum()) + self.spread


@dataclass(frozen=True)
class _Candidate:
    """One grating of the family fitted to a region: free amplitude, and its error at the world's."""

    kind: str
    period: float
    angle: float
    explained: float  # band energy the free-amplitude fit explains
    contrast: float
    residual: float  # squared error to the same grating at the world's amplitude


def _masked_band(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`values` (..., h, w) minus their Gaussian low-pass over the pixels of `mask` (frames, h, w) only."""
    shape = values.shape
    frames = mask.shape[0]
    flat = values.reshape(frames, -1, *shape[-2:])
    weight = gaussian_blur(mask.astype(np.float64), LOWPASS_SIGMA)[:, None]
    low = gaussian_blur((flat * mask[:, None]).reshape(-1, *shape[-2:]), LOWPASS_SIGMA).reshape(flat.shape)
    return ((flat - low / np.maximum(weight, 1e-12)) * mask[:, None]).reshape(shape)


def _waves(kind: str, period: float, angle: float) -> np.ndarray:
    """Wave vectors (rad/px) of a unit grating: one for stripes, two (+-45 degrees, sqrt(2) finer) for checks."""
    if kind == "stripes":
        return 2 * np.pi / period * np.array([[np.cos(angle), np.sin(angle)]])
    turns = angle + np.array([-np.pi / 4, np.pi / 4])
    return 2 * np.pi * np.sqrt(2) / period * np.stack([np.cos(turns), np.sin(turns)], axis=1)


def _evaluate(region: _Region, kind: str, period: float, angle: float) -> _Candidate:
    """Exact least squares of the region's band on the filtered cos/sin basis of one grating."""
    waves = _waves(kind, period, angle)
    phase = waves[:, 0, None, None, None] * region.xs + waves[:, 1, None, None, None] * region.ys
    basis = np.concatenate([np.cos(phase), np.sin(phase)]).swapaxes(0, 1)  # (frames, 2 waves, h, w)
    basis = _masked_band(basis, region.mask)
    gram = region.weight * np.einsum("fiyx,fjyx->ij", basis, basis)
    projection = region.weight * np.einsum("fiyx,fyx->i", basis, region.band)
    coef = np.linalg.lstsq(gram, projection, rcond=1e-10)[0]
    pairs = coef.reshape(2, -1).T  # (waves, [cos, sin]): each wave's phase, free
    lengths = np.hypot(pairs[:, 0], pairs[:, 1])
    units = np.where(lengths[:, None] > 0, pairs / np.maximum(lengths, 1e-30)[:, None], [1.0, 0.0])
    unit = (units / len(waves)).T.reshape(-1)  # the family's grating of amplitude 1 (a check's waves: 1/2 each)
    along, norm = float(unit @ projection), float(unit @ gram @ unit)
    amplitude = along / norm if norm > 0 else 0.0
    return _Candidate(
        kind=kind,
        period=period,
        angle=angle,
        explained=along * amplitude,
        contrast=amplitude / region.amplitude,
        residual=region.energy - 2 * region.amplitude * along + region.amplitude**2 * norm,
    )


def _coarse(region: _Region, size: int) -> tuple[tuple[str, float, float], tuple[str, float, float], float]:
    """Starting points from an FFT of the band: (kind, period, angle) of the best free fit and of the
    nearest world-amplitude grating (cos/sin of distinct waves taken as orthogonal, the filter as its
    plane-wave gain), and the FFT's bin spacing (rad/px)."""
    spectrum = np.fft.fft2(region.band, s=(size, size))  # (frames, ky, kx), coordinates from the window's corner
    ky, kx = (2 * np.pi * np.fft.fftfreq(size))[:, None], (2 * np.pi * np.fft.fftfreq(size))[None, :]
    shift = np.exp(-1j * (kx[None] * region.xs[:, :1, :1] + ky[None] * region.ys[:, :1, :1]))
    projection = np.abs(region.weight * (spectrum * shift).sum(axis=0))  # |sum b e^{-i k.x}| per wave k
    rho = np.hypot(kx, ky)
    gain = 1 - np.exp(-0.5 * (LOWPASS_SIGMA * rho) ** 2)
    index = np.arange(size)
    turned = projection[index[None, :], (-index[:, None]) % size]  # at the wave turned by 90 degrees
    pixels, energy, amplitude = region.pixels, region.energy, region.amplitude
    fastest, slowest = 2 * np.pi / PERIOD_RANGE[0], 2 * np.pi / PERIOD_RANGE[1]
    inside = {"stripes": (rho >= slowest) & (rho <= fastest)}
    inside["checks"] = (rho >= np.sqrt(2) * slowest) & (rho <= np.sqrt(2) * fastest)
    explained = {"stripes": 2 * projection**2 / pixels, "checks": (projection + turned) ** 2 / pixels}
    residual = {
        "stripes": energy - 2 * amplitude * gain * projection + amplitude**2 * gain**2 * pixels / 2,
        "checks": energy - amplitude * gain * (projection + turned) + amplitude**2 * gain**2 * pixels / 4,
    }

    def best(scores: dict[str, np.ndarray], sign: float) -> tuple[str, float, float]:
        kind = max(scores, key=lambda k: sign * scores[k][inside[k]].max())
        flat = int(np.argmax(np.where(inside[kind], sign * scores[kind], -np.inf)))
        wave_x, wave_y, wave = kx[0, flat % size], ky[flat // size, 0], rho.flat[flat]
        if kind == "stripes":
            return kind, float(2 * np.pi / wave), float(np.arctan2(wave_y, wave_x) % np.pi)
        return kind, float(2 * np.pi * np.sqrt(2) / wave), float((np.arctan2(wave_y, wave_x) + np.pi / 4) % (np.pi / 2))

    return best(explained, 1.0), best(residual, -1.0), 2 * np.pi / size


def _refine(region: _Region, start: tuple[str, float, float], spacing: float, key: str) -> _Candidate:
    """Local pattern search in (period, angle) from `start`, minimising `key` of `_evaluate`
    ("residual") or maximising it ("explained"), steps halved down to `REFINE_STOP` FFT bins."""
    kind, period, angle = start
    sign = -1.0 if key == "explained" else 1.0
    symmetry = np.pi if kind == "stripes" else np.pi / 2
    best = _evaluate(region, kind, period, angle)
    wave = 2 * np.pi / period
    step_period, step_angle = spacing * period**2 / (2 * np.pi), spacing / wave
    shrink = 1.0
    while shrink > REFINE_STOP:
        moved = False
        for dp, da in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            candidate = _evaluate(
                region,
                kind,
                float(np.clip(best.period + dp * shrink * step_period, *PERIOD_RANGE)),
                float((best.angle + da * shrink * step_angle) % symmetry),
            )
            if sign * getattr(candidate, key) < sign * getattr(best, key):
                best, moved = candidate, True
        if not moved:
            shrink /= 2
    return best


def _regions(frames: np.ndarray, prompt: Prompt2) -> list[_Region]:
    """The background and each prompted object found by its colour, as `_Region`s."""
    detection, coverages = detect_with_coverage(frames)
    count, height, width = frames.shape[:3]
    grey = frames.mean(axis=-1)
    covered = sum(coverages.values(), np.zeros(grey.shape))
    static = (pattern_region(frames) & (covered < 0.5)).all(axis=0)
    bands = _masked_band(grey, np.broadcast_to(static, grey.shape))
    mean = bands.mean(axis=0)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    regions = [
        _Region(
            name="background",
            amplitude=BACKGROUND_PATTERN_AMPLITUDE,
            band=mean[None],
            mask=static[None],
            xs=xs[None],
            ys=ys[None],
            weight=count,
            spread=float(((bands - mean) ** 2).sum()),
        )
    ]
    side, offsets = 2 * WINDOW, np.arange(2 * WINDOW) + 0.5
    padded = np.pad(grey, ((0, 0), (WINDOW, WINDOW), (WINDOW, WINDOW)))
    for spec in prompt.objects:
        found = detection.by_colour(spec.colour)
        if found is None:
            continue
        interior = np.pad(coverages[spec.colour] > INTERIOR_COVERAGE, ((0, 0), (WINDOW, WINDOW), (WINDOW, WINDOW)))
        windows, xs, ys = [], [], []
        for cx, cy in found.centres:
            x0, y0 = int(round(cx)) - WINDOW, int(round(cy)) - WINDOW  # the window's corner in the frame
            windows.append((slice(y0 + WINDOW, y0 + WINDOW + side), slice(x0 + WINDOW, x0 + WINDOW + side)))
            xs.append(np.broadcast_to(x0 + offsets - cx, (side, side)))  # pixel centres relative to the object's
            ys.append(np.broadcast_to((y0 + offsets - cy)[:, None], (side, side)))
        mask = np.stack([interior[f][window] for f, window in enumerate(windows)])
        values = np.stack([padded[f][window] for f, window in enumerate(windows)])
        regions.append(
            _Region(
                name=spec.colour,
                amplitude=OBJECT_PATTERN_AMPLITUDE,
                band=_masked_band(values, mask),
                mask=mask,
                xs=np.stack(xs),
                ys=np.stack(ys),
                weight=1,
                spread=0.0,
            )
        )
    return [region for region in regions if region.pixels >= MIN_PIXELS]


def score_fidelity(frames: np.ndarray, prompt: Prompt2 | str) -> FidelityScore:
    """How close the fine detail of `frames` (F, H, W, 3) in [0, 1] is to the world's gratings, region by
    region (background, each prompted object found by colour), without a true clip (module docstring)."""
    frames = _check_frames(frames)
    if isinstance(prompt, str):
        prompt = Prompt2.parse(prompt)
    regions = _regions(frames, prompt)
    if not regions:
        raise ValueError("no region of the clip can be scored (no pixel away from the outlines)")
    fits = []
    for region in regions:
        size = 4 * max(region.band.shape[-2:])  # the FFT zero-padded 4x: bins a quarter of the natural resolution
        drawn, nearest, spacing = _coarse(region, size)
        free = _refine(region, drawn, spacing, "explained")
        world = _refine(region, nearest, spacing, "residual")
        energy = region.energy
        fits.append(
            RegionFit(
                name=region.name,
                pixels=region.pixels,
                kind=free.kind,
                period=free.period,
                angle=free.angle,
                contrast=free.contrast,
                explained=free.explained / energy if energy > ENERGY_FLOOR * region.pixels else 0.0,
                mse=max(min(world.residual, free.residual), 0.0) / region.pixels,
            )
        )
    mse = sum(fit.mse * fit.pixels for fit in fits) / sum(fit.pixels for fit in fits)
    return FidelityScore(
        fidelity_db=PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else float(-10 * np.log10(mse)),
        explained=float(np.mean([fit.explained for fit in fits])),
        contrast=float(np.mean([fit.contrast for fit in fits])),
        regions=tuple(fits),
    )
