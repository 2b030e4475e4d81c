"""`benchmarks/latent_reach.py`: the check that a transformer's last layer reaches every latent direction."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
try:
    import latent_reach
finally:
    sys.path.pop(0)

from srd_plugin.miniature.models2 import LATENT_CHANNELS, PATCH_SIZE  # noqa: E402
from srd_plugin.testing import TEXT_DIM, WanSize, tiny_wan_transformer  # noqa: E402


def test_tokens_are_in_the_order_of_proj_out_features():
    """Oracle: a narrow model's outputs, cut into tokens, lie in the span of its last layer (plus bias)."""
    narrow = WanSize(num_layers=1, num_attention_heads=1, attention_head_dim=16, ffn_dim=16)
    model = tiny_wan_transformer(
        narrow, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, patch_size=PATCH_SIZE, freq_dim=64
    )
    x = torch.randn(1, LATENT_CHANNELS, 2, 8, 8)
    with torch.no_grad():
        out = model(x, torch.tensor([500.0]), torch.randn(1, 4, TEXT_DIM), return_dict=False)[0]
    rows = latent_reach.tokens(out) - model.proj_out.bias.detach()
    span, _ = torch.linalg.qr(model.proj_out.weight.detach())
    inside = rows @ span @ span.T
    assert torch.allclose(rows, inside, atol=1e-4)
    shuffled = latent_reach.tokens(out.transpose(3, 4)) - model.proj_out.bias.detach()  # a wrong cut leaves it
    assert (shuffled - shuffled @ span @ span.T).pow(2).mean() > 1e-3


def test_minor_subspace_holds_one_percent_of_the_truth_and_its_share_of_noise():
    generator = torch.Generator().manual_seed(0)
    low_rank = torch.randn(4000, 6, generator=generator) @ torch.randn(6, 32, generator=generator)
    data = low_rank + 0.01 * torch.randn(4000, 32, generator=generator)
    basis = latent_reach.minor_basis(data)
    assert basis.shape == (32, 26)  # six directions hold 99% of the power
    assert latent_reach.minor_power(data - data.mean(0), basis) < 0.01 * data.pow(2).mean()
    noise = torch.randn(4000, 32, generator=generator)
    assert abs(latent_reach.minor_power(noise, basis) - 26 / 32) < 0.03


def test_reports_the_tiny_pair(tiny_run, capsys):
    assert latent_reach.main(["--work", str(tiny_run), "--clips", "1", "--steps", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"token dimension {LATENT_CHANNELS * 16}, minor subspace")
    assert [line.split("|")[1].strip() for line in lines[3:]] == [
        "true (validation)", "Gaussian noise", "sketcher only, 2 steps", "renderer only, 2 steps"
    ]  # fmt: skip
    assert lines[5].split("|")[2].strip() == str(LATENT_CHANNELS * 16)  # the tiny sketcher reaches every direction
