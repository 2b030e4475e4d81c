"""Which components an SRD setup may share with the setups of other sketchers.

A setup belongs to the components it intercepts: the **sketcher** (the router) and the
**schedulers** of the pipelines it serves (the wrappers). Pipelines built from the same
components share one setup (`api.enable` joins or replaces it). What cannot be shared is a
component that would sit in two *different* setups:

* a **scheduler** wrapped by the setup of another sketcher would start and step that setup's
  runs as well as this one's;
* a module that is one setup's sketcher cannot be another one's renderer (or the other way
  round), because the render calls would pass through the first setup's router.

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
    """Every way this setup would collide with the sessions of other sketchers, `others`, one line each."""
    problems = []
    for other in others:
        name = f"another SRD-enabled {other.pipeline_name}"
        if other.renderer is sketcher:
            problems.append(f"sketcher: pipe.transformer is the renderer of {name}; give one of them a separate copy")
        if renderer is not sketcher and other.sketcher is renderer:
            problems.append(
                f"renderer: it is the sketcher of {name}, whose router would route these render calls; "
                "pass a separate copy of the model"
            )
        if other.serves_scheduler(getattr(pipe, "scheduler", None)):
            problems.append(
                f"scheduler: pipe.scheduler is also the scheduler of {name} with another transformer, and a "
                "scheduler follows one SRD setup; give this pipeline its own: pipe.scheduler = "
                "type(pipe.scheduler).from_config(pipe.scheduler.config)"
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
