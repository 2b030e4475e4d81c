"""A hand-written flow-matching sampler and the SRD adapter that serves it (a worked example)."""

from .host import ToyFlowSampler, ToyVelocityNet

__all__ = ["ToyFlowSampler", "ToyVelocityNet"]
