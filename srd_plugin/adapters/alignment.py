"""Cross-model latent alignment for v-prediction models with different parametrizations.

CogVideoX-5B and CogVideoX-2B share a VAE architecture but scale its latents differently
(0.7 vs 1.15258426) and were trained on different noise schedules (`snr_shift_scale` 1.0
vs 3.0). The host pipeline keeps the sketcher's latents x_t = a z + s eps (z: the latent
scaled by the sketcher's factor, a = sqrt(abar_s(t)), s = sqrt(1 - abar_s(t))). To the
renderer the same tensor, scaled by k = c_renderer / c_sketcher, is a sample of *its*
latent k z at signal-to-noise ratio a^2 / (k s)^2. `LatentAlignment` finds the renderer
timestep tau of exactly that SNR, feeds the renderer the unit-variance form of the sample,
and turns its v-prediction back into the sketcher's v at t, so the host's scheduler and
VAE decode stay correct. The derivation is in docs/alignment.md.

Everything here is plain tensor arithmetic in float64 (the schedulers' tables are float64),
independent of any model class, so it can be checked on numbers alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Parametrization:
    """How one model sees latents: the VAE scaling factor and the noise table it was trained on.

    `alphas_cumprod[t]` is abar(t) at integer timestep t, as in diffusers' DDPM-family
    schedulers; `source` says where the facts came from (shown in traces and errors).
    """

    scaling_factor: float
    alphas_cumprod: torch.Tensor
    source: str

    def matches(self, other: Parametrization) -> bool:
        """Same scale and bit-identical noise table: the identity mapping is exact."""
        return (
            self.scaling_factor == other.scaling_factor
            and self.alphas_cumprod.shape == other.alphas_cumprod.shape
            and torch.equal(self.alphas_cumprod.double().cpu(), other.alphas_cumprod.double().cpu())
        )


@dataclass(frozen=True)
class Match:
    """One host timestep (per batch element) mapped into the renderer's coordinates.

    a, s: the host's sqrt(abar_s(t)), sqrt(1 - abar_s(t)); norm: D = sqrt(a^2 + k^2 s^2),
    so the renderer's input is k x_t / D; tau: the renderer timestep of matched SNR
    (clamped into the renderer's table); clamped: which elements needed the clamp.
    """

    a: torch.Tensor
    s: torch.Tensor
    norm: torch.Tensor
    tau: torch.Tensor
    clamped: torch.Tensor


def table_problem(alphas_cumprod: torch.Tensor, what: str) -> str | None:
    """Why a noise table cannot be aligned to (None if it can): it must be a 1-D non-increasing
    table of values in [0, 1], as every DDPM-family scheduler's `alphas_cumprod` is."""
    table = alphas_cumprod.double()
    if table.ndim != 1 or table.numel() < 2:
        return f"{what}: alphas_cumprod must be a 1-D table with at least 2 entries, got shape {tuple(table.shape)}"
    if not bool(((table >= 0) & (table <= 1)).all()):
        return f"{what}: alphas_cumprod has values outside [0, 1]"
    if not bool((table[1:] <= table[:-1]).all()):
        return f"{what}: alphas_cumprod must not increase with the timestep (noise grows with t)"
    return None


class LatentAlignment:
    """Maps the host's latent and timestep to the renderer's, and the renderer's v back.

    Built once per pipeline call from the host's and the renderer's `Parametrization`.
    """

    def __init__(self, host: Parametrization, renderer: Parametrization) -> None:
        self.host = host
        self.renderer = renderer
        #: renderer latent = k * host latent (both are c * VAE-encoder output)
        self.k = renderer.scaling_factor / host.scaling_factor
        self._host_table = host.alphas_cumprod.double().cpu()
        self._renderer_table = renderer.alphas_cumprod.double().cpu()

    def match(self, timestep: torch.Tensor) -> Match:
        """The renderer timestep of matched SNR for every element of an integer host timestep tensor."""
        t = timestep.detach().reshape(-1).cpu().long()
        abar = self._host_table[t]
        a, s = abar.sqrt(), (1.0 - abar).sqrt()
        norm = (a**2 + (self.k * s) ** 2).sqrt()
        # the renderer's abar at the matched SNR: SNR_r = a^2 / (k s)^2  <=>  abar_r = a^2 / D^2
        tau, clamped = self.renderer_timestep(a**2 / norm**2)
        return Match(a=a, s=s, norm=norm, tau=tau, clamped=clamped)

    def renderer_timestep(self, abar_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Continuous timestep tau with abar_r(tau) = abar_target (float64), and the clamp mask.

        Between integer timesteps abar_r is interpolated linearly in log-SNR = logit(abar),
        which is monotone; an interval with an infinite end (abar exactly 0 or 1, e.g. the
        zero terminal SNR of CogVideoX) is interpolated linearly in abar instead. Targets
        outside the table are clamped to its first or last timestep.
        """
        table = self._renderer_table
        last = table.numel() - 1
        clamped = (abar_target > table[0]) | (abar_target < table[last])
        target = abar_target.clamp(min=float(table[last]), max=float(table[0]))
        # table is non-increasing: interval i holds table[i] >= target >= table[i + 1]
        ascending = table.flip(0)
        upper = torch.searchsorted(ascending, target, right=False)  # first ascending index >= target
        i = (last - upper).clamp(0, last - 1)
        hi, lo = table[i], table[i + 1]
        fraction = _fraction(hi, lo, target)
        return i.double() + fraction, clamped

    def to_renderer(self, sample: torch.Tensor, match: Match) -> torch.Tensor:
        """x_r = k x_t / D: the host sample as a unit-variance sample of the renderer's latent (float32)."""
        scale = (self.k / match.norm).to(device=sample.device, dtype=torch.float32)
        return sample.float() * _per_batch(scale, sample)

    def to_host(self, renderer_v: torch.Tensor, sample: torch.Tensor, match: Match) -> torch.Tensor:
        """The sketcher's v at t from the renderer's v: v = a s (k^2 - 1) / D^2 * x_t + v_r / D (float32)."""
        x_coefficient = match.a * match.s * (self.k**2 - 1.0) / match.norm**2
        v_coefficient = 1.0 / match.norm
        x_coefficient = _per_batch(x_coefficient.to(device=sample.device, dtype=torch.float32), sample)
        v_coefficient = _per_batch(v_coefficient.to(device=sample.device, dtype=torch.float32), sample)
        return x_coefficient * sample.float() + v_coefficient * renderer_v.float()


def _fraction(hi: torch.Tensor, lo: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Where `target` lies between table values hi >= lo, in [0, 1]: logit-linear, abar-linear at 0 or 1."""
    finite = (hi < 1) & (lo > 0)
    logit = torch.logit
    by_log_snr = (logit(hi) - logit(target)) / (logit(hi) - logit(lo))
    by_abar = (hi - target) / (hi - lo)
    fraction = torch.where(finite, by_log_snr, by_abar)
    # equal neighbours (a flat stretch of the table): any point of it is exact, take its start
    fraction = torch.where(hi > lo, fraction, torch.zeros_like(fraction))
    return fraction.nan_to_num(0.0).clamp(0.0, 1.0)


def _per_batch(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast one value per batch element (or one for all) over a [B, ...] tensor."""
    if values.numel() == 1:
        return values.reshape(())
    return values.reshape(-1, *([1] * (like.ndim - 1)))
