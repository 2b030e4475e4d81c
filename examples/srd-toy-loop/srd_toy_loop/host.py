"""The host: a small velocity network and a hand-written flow-matching sampling loop.

This file knows nothing about SRD. It stands for code in another repository: a research
model with its own loop, or a service's inference code. What SRD needs from it is only what
any such loop has: a `transformer` attribute it calls once per step and a `scheduler`
attribute whose `set_timesteps` it calls once per generation and whose `step` it calls once
per step.
"""

from __future__ import annotations

import math

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

TIME_FEATURES = 16


class ToyVelocityNet(ModelMixin, ConfigMixin):
    """Predicts the flow-matching velocity of a [batch, channels, length] sample at timestep t.

    A diffusers `ModelMixin`, so it saves and loads with `save_pretrained` / `from_pretrained`
    like any diffusers model (the sketcher and renderer differ in `hidden` and `layers`).
    """

    @register_to_config
    def __init__(self, channels: int = 4, hidden: int = 64, layers: int = 3) -> None:
        super().__init__()
        self.time_embedding = nn.Sequential(nn.Linear(TIME_FEATURES, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.proj_in = nn.Conv1d(channels, hidden, kernel_size=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(1, hidden), nn.SiLU(), nn.Conv1d(hidden, hidden, kernel_size=3, padding=1))
            for _ in range(layers)
        )
        self.proj_out = nn.Conv1d(hidden, channels, kernel_size=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        half = TIME_FEATURES // 2
        frequencies = torch.exp(-math.log(1000.0) * torch.arange(half, device=sample.device) / half)
        angles = timestep.float().reshape(-1, 1) * frequencies
        time = self.time_embedding(torch.cat([angles.sin(), angles.cos()], dim=1).to(sample.dtype))
        hidden = self.proj_in(sample) + time.unsqueeze(-1)
        for block in self.blocks:
            hidden = hidden + block(hidden)
        return self.proj_out(hidden)


class ToyFlowSampler:
    """Flow-matching sampling with a plain Python loop (no diffusers pipeline)."""

    def __init__(self, transformer: ToyVelocityNet, scheduler: FlowMatchEulerDiscreteScheduler | None = None) -> None:
        self.transformer = transformer
        self.scheduler = scheduler if scheduler is not None else FlowMatchEulerDiscreteScheduler(shift=3.0)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 2,
        length: int = 32,
        num_inference_steps: int = 20,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        channels = self.transformer.config.channels
        latents = torch.randn(batch_size, channels, length, generator=generator)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            velocity = self.transformer(latents, t.expand(batch_size))
            latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
        return latents
