"""Seeded tiny models for the toy host: a sketcher and a smaller renderer of the same family."""

from __future__ import annotations

import torch

from .host import ToyVelocityNet


def tiny_sketcher(seed: int = 0) -> ToyVelocityNet:
    torch.manual_seed(seed)
    return ToyVelocityNet(channels=4, hidden=64, layers=3).eval()


def tiny_renderer(seed: int = 1) -> ToyVelocityNet:
    torch.manual_seed(seed)
    return ToyVelocityNet(channels=4, hidden=16, layers=1).eval()
