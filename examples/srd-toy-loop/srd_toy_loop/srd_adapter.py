"""The SRD adapter for `ToyFlowSampler`, registered through the "srd_plugin" entry-point group.

The whole of what srd_plugin needs to know about this host (see docs/adapters.md):
  * the sketcher is `sampler.transformer` (the base class's default);
  * a renderer must be a `ToyVelocityNet` with the same number of channels (it takes the
    same inputs and predicts the same velocity; `hidden` and `layers` may differ);
  * a renderer path is loaded with `ToyVelocityNet.from_pretrained` (the base class's
    default: the sketcher's own class);
  * the guided x0 prediction of a step is x_t - sigma_t * v (flow matching).

The module is the pluggy plugin: the functions marked `@hookimpl` answer srd_plugin's hooks.
"""

from __future__ import annotations

from typing import Any

import torch

from srd_plugin.adapters.base import Adapter, config_mismatches, flow_x0
from srd_plugin.hookspecs import hookimpl

from .host import ToyFlowSampler, ToyVelocityNet

MUST_MATCH = {"channels": "latent channels"}


class ToyLoopAdapter(Adapter):
    name = "toy-loop"
    pipeline_classes = ("ToyFlowSampler",)

    def compatibility_problems(self, sketcher: torch.nn.Module, renderer: torch.nn.Module) -> list[str]:
        if not isinstance(renderer, ToyVelocityNet):
            return [f"model family: the sketcher is a ToyVelocityNet, the renderer a {type(renderer).__name__}"]
        return config_mismatches(sketcher, renderer, MUST_MATCH)

    def scheduler_problem(self, scheduler: Any) -> str | None:
        if hasattr(scheduler, "sigmas"):
            return None
        return f"the adaptive policy needs a flow-matching scheduler with sigmas; {type(scheduler).__name__} has none"

    def predict_x0(
        self, scheduler: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, step_index: int
    ) -> torch.Tensor:
        return flow_x0(scheduler, model_output, sample, step_index)


_ADAPTER = ToyLoopAdapter()


@hookimpl
def srd_get_adapter(pipe: Any) -> Adapter | None:
    return _ADAPTER if isinstance(pipe, ToyFlowSampler) else None


@hookimpl
def srd_supported_pipelines() -> list[str]:
    return list(ToyLoopAdapter.pipeline_classes)


@hookimpl
def srd_pipeline_classes() -> list[type]:
    return [ToyFlowSampler]
