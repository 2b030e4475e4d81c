"""Which modules an SRD setup may share with the setups of other pipelines.

Sharing is normal in diffusers (`WanPipeline(**pipe.components)` shares every component),
but SRD attaches per-call state to two of them, and two sessions must never meet there:

* the **sketcher** carries one session's router, and the router routes by that session's
  current run: a second session on the same module would route the other's calls;
* the **scheduler** carries one session's wrapper, which starts and steps that session's
  run: two sessions on one scheduler would both follow every call of either pipeline;
* a module that is one pipeline's sketcher cannot be another one's renderer, because the
  render calls would pass through the first session's router.

A **renderer** may be shared (it holds no SRD state), as long as no setup moves it to
another device or converts its dtype under a pipeline that uses it: `enable` refuses that
here, and a call that would have to move it falls back to its sketcher (`runtime.py`).
"""

from __future__ import annotations

from typing import Any

import torch

from .adapters.base import module_device, module_dtype
from .config import SRDConfig
from .runtime import Session


def sharing_problems(
    pipe: Any,
    sketcher: torch.nn.Module,
    renderer: torch.nn.Module,
    config: SRDConfig,
    others: list[Session],
) -> list[str]:
    """Every way this setup would collide with the enabled sessions `others`, one line each."""
    problems = []
    for other in others:
        name = f"another SRD-enabled {other.pipeline_name}"
        if other.sketcher is sketcher:
            problems.append(
                f"sketcher: pipe.transformer is already the sketcher of {name}; call srd.disable on that "
                "pipeline first, or give this pipeline its own transformer"
            )
        elif other.renderer is sketcher:
            problems.append(f"sketcher: pipe.transformer is the renderer of {name}; give one of them a separate copy")
        if renderer is not sketcher and other.sketcher is renderer:
            problems.append(
                f"renderer: it is the sketcher of {name}, whose router would route these render calls; "
                "pass a separate copy of the model"
            )
        if other.scheduler is not None and other.scheduler is getattr(pipe, "scheduler", None):
            problems.append(
                f"scheduler: pipe.scheduler is also the scheduler of {name}, and SRD follows one pipeline per "
                "scheduler; give this pipeline its own: pipe.scheduler = type(pipe.scheduler).from_config("
                "pipe.scheduler.config)"
            )
        if other.renderer is renderer and renderer is not sketcher:
            change = _placement_change(sketcher, renderer, config)
            if change:
                problems.append(
                    f"renderer: it is shared with {name}, and this setup would {change} under that pipeline; "
                    "use the same device and dtype for both, or pass a separate copy (copy.deepcopy(renderer))"
                )
    return problems


def _placement_change(sketcher: torch.nn.Module, renderer: torch.nn.Module, config: SRDConfig) -> str:
    """What `enable` would do to the renderer's device or dtype ("" for nothing)."""
    if not config.move_renderer:
        return ""
    device = module_device(sketcher)
    if device.type != "meta" and module_device(renderer) != device:
        return f"move it from {module_device(renderer)} to {device}"
    if config.renderer_dtype is not None and module_dtype(renderer) != getattr(torch, config.renderer_dtype):
        return f"convert it from {module_dtype(renderer)} to {config.renderer_dtype}"
    return ""
