"""Fold a trained `AutoencoderKLWan` into one with fewer latent channels: its principal components.

Why: the second world's transformers must be at least as wide as a token (`models2`'s width rule),
so the latents must be narrow; but a VAE trained from scratch with 8 channels lost objects and
patterns (58% semantics through it), while the 48-channel VAE's latents, projected onto their top 8
principal components and decoded, keep 96% semantics and the patterns (docs/miniature.md, "Second
design"). Training wide and folding to narrow gets the second without the first's optimisation.

How: the encoder's last convolution and the 1x1 `quant_conv` are linear, so the projection
c = U^T (mu - m) folds into the convolution's weights exactly; `quant_conv` becomes the identity and
the log-variance a constant. On the decoder side the 1x1 `post_quant_conv` and the lift U c + m fold
into the first 3x3x3 convolution; the constant part of the lift becomes its bias, which differs from
the original only where that convolution reads zero padding (the latent grid's border and the first
latent frame). The result is a plain `AutoencoderKLWan` with `z_dim` = k that `from_pretrained` loads.
"""

from __future__ import annotations

from typing import Any

import torch

#: the folded posterior's log-variance (only sampling from it reads it; the recipe uses the mean)
FOLDED_LOGVAR = -10.0


@torch.no_grad()
def principal_components(latents: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (C,), components (C, count), share of the power they hold) of latent cells (B, C, T, H, W)."""
    cells = latents.permute(0, 2, 3, 4, 1).reshape(-1, latents.shape[1]).double()
    mean = cells.mean(0)
    _, values, vh = torch.linalg.svd(cells - mean, full_matrices=False)
    share = (values[:count] ** 2).sum() / (values**2).sum()
    return mean.float(), vh[:count].T.float(), share.float()


@torch.no_grad()
def fold_vae(vae: Any, mean: torch.Tensor, components: torch.Tensor) -> Any:
    """A new `AutoencoderKLWan` whose latents are c = components^T (mu - mean) of `vae`'s posterior mean mu,
    and whose decoder reads c as `vae`'s decoder reads components @ c + mean."""
    from diffusers import AutoencoderKLWan

    channels, count = components.shape
    if channels != vae.config.z_dim or mean.shape != (channels,):
        raise ValueError(
            f"fold_vae needs a mean of {vae.config.z_dim} and components of shape ({vae.config.z_dim}, k); "
            f"got {tuple(mean.shape)} and {tuple(components.shape)}"
        )
    config = {key: value for key, value in vae.config.items() if not key.startswith("_")}
    config.update(z_dim=count, latents_mean=[0.0] * count, latents_std=[1.0] * count)
    folded = AutoencoderKLWan(**config).to(components.device)
    state = {k: v for k, v in vae.state_dict().items() if not k.startswith(("quant_conv", "post_quant_conv"))}
    for name in ("encoder.conv_out.weight", "encoder.conv_out.bias", "decoder.conv_in.weight"):
        state.pop(name)
    folded.load_state_dict(state, strict=False)

    # encoder: mean rows of quant_conv after conv_out, then the projection
    quant_w, quant_b = vae.quant_conv.weight[:channels, :, 0, 0, 0], vae.quant_conv.bias[:channels]
    to_folded = components.T @ quant_w  # (k, 2C)
    out_w, out_b = vae.encoder.conv_out.weight, vae.encoder.conv_out.bias
    folded.encoder.conv_out.weight.zero_()
    folded.encoder.conv_out.weight[:count] = torch.einsum("ki,i...->k...", to_folded, out_w)
    folded.encoder.conv_out.bias.fill_(FOLDED_LOGVAR)
    folded.encoder.conv_out.bias[:count] = to_folded @ out_b + components.T @ (quant_b - mean)
    _identity(folded.quant_conv)

    # decoder: post_quant_conv and the lift into conv_in
    post_w, post_b = vae.post_quant_conv.weight[:, :, 0, 0, 0], vae.post_quant_conv.bias
    _identity(folded.post_quant_conv)
    conv_w, conv_b = vae.decoder.conv_in.weight, vae.decoder.conv_in.bias
    folded.decoder.conv_in.weight.copy_(torch.einsum("oi...,ik->ok...", conv_w, post_w @ components))
    constant = post_w @ mean + post_b
    folded.decoder.conv_in.bias.copy_(conv_b + torch.einsum("oi...,i->o", conv_w, constant))
    return folded.eval()


def _identity(conv: torch.nn.Conv3d) -> None:
    conv.weight.zero_()
    conv.weight[:, :, 0, 0, 0] = torch.eye(conv.weight.shape[0])
    conv.bias.zero_()
