"""Analytic stand-in models: exact optimal denoisers for Gaussian latents (tests and benchmarks).

If the data latent z is Gaussian, z ~ N(mean, std^2) elementwise, and x = a z + s eps
(a = sqrt(abar), s = sqrt(1 - abar), eps ~ N(0, 1)), the minimum-mean-square predictions
have a closed form:

    E[z | x] = mean + a std^2 / (a^2 std^2 + s^2) * (x - a mean)
    v*       = a E[eps | x] - s E[z | x] = (a x - E[z | x]) / s        (as a^2 + s^2 = 1)

`GaussianOracleTransformer` is a CogVideoXTransformer3DModel (so the CogVideoX adapter and
pipeline accept it) whose forward returns exactly v* for its own parametrization: the data
statistics in its own latent coordinates and the noise table it was "trained" on. Two such
models for the 5B and 2B parametrizations of the same data are two perfect models that
disagree only in coordinates, which makes them an oracle for latent alignment: a correctly
aligned hand-over must reproduce the sketcher-only trajectory, a naive one must not.

At a fractional timestep the model takes the noise level defined in docs/alignment.md:
log-SNR interpolated linearly between integer timesteps (abar linearly where an end is 0 or 1).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput


class GaussianOracleTransformer(CogVideoXTransformer3DModel):
    """The exact v-predictor for Gaussian latents, in a CogVideoX transformer's clothes.

    Build it with `gaussian_oracle_transformer`; the transformer weights are never used.
    """

    def set_oracle(self, mean: torch.Tensor, std: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        """Data mean and std (broadcastable to [B, F, C, H, W], in this model's latent coordinates), noise table."""
        self.register_buffer("oracle_mean", mean.double(), persistent=False)
        self.register_buffer("oracle_std", std.double(), persistent=False)
        self.register_buffer("oracle_alphas_cumprod", alphas_cumprod.double(), persistent=False)

    def oracle_abar(self, timestep: torch.Tensor) -> torch.Tensor:
        """abar at (possibly fractional) timesteps, as the alignment defines it between integers."""
        table = self.oracle_alphas_cumprod
        tau = timestep.double().reshape(-1).clamp(0, table.numel() - 1)
        below = tau.floor().long().clamp(max=table.numel() - 2)
        fraction = tau - below
        hi, lo = table[below], table[below + 1]
        finite = (hi < 1) & (lo > 0) & (hi > 0) & (lo < 1)
        log_snr = torch.lerp(torch.logit(hi), torch.logit(lo), fraction)
        by_log_snr = torch.sigmoid(log_snr)
        by_abar = torch.lerp(hi, lo, fraction)
        return torch.where(finite, by_log_snr, by_abar)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: Any,
        timestep_cond: torch.Tensor | None = None,
        ofs: Any = None,
        image_rotary_emb: Any = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> Any:
        x = hidden_states.double()
        t = torch.as_tensor(timestep, device=x.device).reshape(-1).expand(x.shape[0])
        abar = self.oracle_abar(t).reshape(-1, 1, 1, 1, 1)
        a, s = abar.sqrt(), (1.0 - abar).sqrt()
        mean, std = self.oracle_mean, self.oracle_std
        z_hat = mean + a * std**2 / (a**2 * std**2 + s**2) * (x - a * mean)
        v = ((a * x - z_hat) / s).to(hidden_states.dtype)
        return Transformer2DModelOutput(sample=v) if return_dict else (v,)


def gaussian_oracle_transformer(
    mean: torch.Tensor, std: torch.Tensor, alphas_cumprod: torch.Tensor, rotary: bool = True, **config: Any
) -> GaussianOracleTransformer:
    """A `GaussianOracleTransformer` with a tiny CogVideoX config (see `srd_plugin.testing`)."""
    from .testing import COGVIDEOX_2B_LIKE, COGVIDEOX_5B_LIKE, cogvideox_transformer_config

    size = COGVIDEOX_5B_LIKE if rotary else COGVIDEOX_2B_LIKE
    model = GaussianOracleTransformer(**cogvideox_transformer_config(size, num_layers=1, **config)).eval()
    model.set_oracle(mean, std, alphas_cumprod)
    return model
