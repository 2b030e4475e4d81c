"""`SRDConfig.offload_sketcher="after_switch"`: the sketcher's weights leave the accelerator at the switch.

Once the renderer has taken over, nothing in the call needs the sketcher again (the switch is
one-way), so its weights (28 GB for Wan2.1-14B in bf16) go to the CPU right at the switch,
before the first render step runs: the render phase, the VAE decode and whatever runs between
calls get that memory back.

They come back at the start of the next call *that sketches*: `run.phase` at `srd_run_start`
is the role of step 0, so a call that renders from step 0 leaves the sketcher on the CPU. They
also come back when the renderer fails mid-call and the sketcher has to finish it
(`srd_fallback`), and when SRD is disabled, so the pipeline is left as it was found.

While the sketcher is away the renderer stays on the execution device: the core's default
placement (follow the sketcher's device) would otherwise send it to the CPU too.

Nothing is done when the pipeline computes on the CPU, or when the host's own offloading
(`enable_model_cpu_offload`, group or sequential offloading) already manages the sketcher.
Moving 28 GB costs time each way (a pinned copy runs at roughly 20 GB/s on PCIe 4/5, so about
1.5 s at the switch and again at the next call's start): this mode buys memory, not speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..adapters.base import module_device
from ..hookspecs import hookimpl
from ..switching import SKETCH
from . import placement
from .host_offload import host_offloading

if TYPE_CHECKING:  # pragma: no cover - types only
    from ..runtime import Run, Session

STATE_KEY = "offload_sketcher"


@dataclass
class OffloadState:
    """Per pipeline: whether the sketcher's weights are on the CPU because this plugin put them there."""

    away: bool = False


def _state(session: Session) -> OffloadState:
    return session.plugin_state.setdefault(STATE_KEY, OffloadState())


def _active(session: Session) -> bool:
    return session.config.offload_sketcher == "after_switch" and session.renderer is not session.sketcher


@hookimpl
def srd_check_setup(session: Session) -> list[str]:
    if session.config.offload_sketcher == "never":
        return []
    if session.renderer is session.sketcher:
        return [
            "offload_sketcher='after_switch' would move the renderer off the accelerator too, since the renderer "
            "is the sketcher itself; pass a separate renderer or set offload_sketcher='never'"
        ]
    device = module_device(session.sketcher)
    if not placement.offloading_applies(device) or host_offloading(session.sketcher):
        return []
    if any(
        isinstance(component, torch.nn.Module)
        and component is not session.sketcher
        and module_device(component) == device
        for component in session.pipe.components.values()
    ):
        return []
    return [
        f"offload_sketcher='after_switch' needs another pipeline component on {device} (pipe.to({str(device)!r}) "
        "puts the text encoder and the VAE there): diffusers takes the pipeline's device from its components, "
        "and with only the sketcher on the accelerator the next call would run on the CPU once it is offloaded"
    ]


@hookimpl
def srd_place_renderer(session: Session, run: Run | None) -> bool | None:
    """While the sketcher is away, keep the renderer on the execution device instead of following it."""
    if run is None or not _state(session).away or host_offloading(session.sketcher):
        return None
    device = placement.execution_device(session)
    if module_device(session.renderer) != device:
        placement.move(session.renderer, device)
    return True


@hookimpl
def srd_run_start(session: Session, run: Run) -> None:
    if run.phase == SKETCH:
        _bring_back(session)


@hookimpl
def srd_switch(session: Session, run: Run, step_index: int) -> None:
    if not _active(session) or _state(session).away or host_offloading(session.sketcher):
        return
    if not placement.offloading_applies(placement.execution_device(session)):
        return
    _state(session).away = True  # set first: a move that fails halfway is undone by `_bring_back`
    placement.move(session.sketcher, placement.OFFLOAD_DEVICE)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand the memory back to the device, not only to PyTorch's cache


@hookimpl
def srd_fallback(session: Session, run: Run, step_index: int) -> None:
    _bring_back(session)


@hookimpl
def srd_restore_model(session: Session, role: str, model: torch.nn.Module) -> None:
    if role == SKETCH:
        _bring_back(session)


def _bring_back(session: Session) -> None:
    """Return the sketcher to the execution device if this plugin had moved it away."""
    state = _state(session)
    if not state.away:
        return
    device = placement.execution_device(session)
    # not when the user moved the whole pipeline to the CPU meanwhile, or gave it to the host's offloading
    if placement.offloading_applies(device) and not host_offloading(session.sketcher):
        placement.move(session.sketcher, device)
    state.away = False
