"""`srd_plugin.miniature.fold`: a VAE folded onto principal components of its latents, checked against the original."""

from __future__ import annotations

import pytest
import torch

from srd_plugin.miniature.fold import fold_vae, principal_components
from srd_plugin.miniature.models2 import TRAINED_CHANNELS, build_vae

K = 8


@pytest.fixture(scope="module")
def vae():
    return build_vae(base_dim=4, seed=0).eval()


def _basis(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(TRAINED_CHANNELS, K, generator=torch.Generator().manual_seed(seed)))
    return q


def test_folded_encoder_gives_the_projection_of_the_posterior_mean(vae):
    mean, components = torch.randn(TRAINED_CHANNELS), _basis(0)
    folded = fold_vae(vae, mean, components)
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        mu = vae.encode(x).latent_dist.mean
        c = folded.encode(x).latent_dist.mean
    expected = torch.einsum("bcthw,ck->bkthw", mu - mean.view(1, -1, 1, 1, 1), components)
    assert folded.config.z_dim == K and c.shape == expected.shape
    assert torch.allclose(c, expected, atol=1e-5)


def test_folded_decoder_reads_c_as_the_original_reads_the_lift(vae):
    """Exact where the lift's constant is zero (post_quant_conv's bias cancels the mean); else the border differs."""
    mean, components = torch.randn(TRAINED_CHANNELS), _basis(1)
    original = build_vae(base_dim=4, seed=0).eval()
    with torch.no_grad():
        original.post_quant_conv.bias.copy_(-original.post_quant_conv.weight[:, :, 0, 0, 0] @ mean)
        folded = fold_vae(original, mean, components)
        c = torch.randn(1, K, 2, 4, 4)
        lifted = torch.einsum("bkthw,ck->bcthw", c, components) + mean.view(1, -1, 1, 1, 1)
        assert torch.allclose(folded.decode(c).sample, original.decode(lifted).sample, atol=1e-5)
        assert not torch.allclose(folded.decode(c).sample, vae.decode(lifted).sample, atol=1e-3)  # other bias


def test_principal_components_are_orthonormal_and_hold_their_share():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(3, TRAINED_CHANNELS, generator=generator)
    latents = torch.einsum("bkthw,kc->bcthw", torch.randn(6, 3, 2, 4, 4, generator=generator), mixing) + 5.0
    mean, components, share = principal_components(latents, K)
    assert torch.allclose(mean, latents.mean(dim=(0, 2, 3, 4)), atol=1e-4)
    assert torch.allclose(components.T @ components, torch.eye(K), atol=1e-4)
    assert share > 0.9999  # three directions made the data


def test_fold_refuses_components_of_another_width(vae):
    with pytest.raises(ValueError, match=r"mean of 48 and components of shape \(48, k\)"):
        fold_vae(vae, torch.zeros(16), torch.zeros(16, K))


def test_tuning_moves_the_folded_decoder_and_keeps_the_latent_space():
    from srd_plugin.miniature.train2 import Recipe2, _tune_folded_decoder

    generator = torch.Generator().manual_seed(0)
    bank = {
        "frames": torch.randint(0, 256, (2, 17, 32, 32, 3), dtype=torch.uint8, generator=generator),
        "masks": torch.zeros(2, 17, 32, 32, dtype=torch.uint8),
    }
    folded = fold_vae(build_vae(base_dim=4, seed=0).eval(), torch.zeros(TRAINED_CHANNELS), _basis(2))
    before = {name: value.clone() for name, value in folded.state_dict().items()}
    _tune_folded_decoder(Recipe2(vae_batch=2, fold_tune_steps=3), bank, folded)
    after = folded.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("decoder.", "post_quant_conv.")) for name in changed)
    assert not folded.training
