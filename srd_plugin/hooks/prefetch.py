"""`SRDConfig.prefetch_renderer=True`: the renderer lives on the CPU and is copied in during the sketch phase.

Where the renderer lives: between calls on the CPU, in pinned memory; from the start of a call
that sketches it is copied to the execution device on a side CUDA stream, overlapping the
sketch steps; at the end of the call's denoising (`srd_run_end`, before the VAE decode) it goes
back to the CPU. So the accelerator holds the renderer only while a call denoises, and the
switch does not wait for a 2.6 GB copy (Wan2.1-1.3B in bf16).

Ordering: the copy is issued on the side stream after everything already queued on the main
stream; the main stream waits for the copy's event at the switch (`srd_switch`), a wait on the
GPU that does not block the host, so the router never uses weights still being copied. The
GPU tensors are allocated while the side stream is current but are only freed at the call's
end, after a synchronising copy back, so no `record_stream` bookkeeping is needed.

A call that renders from step 0 has nothing to overlap with: the renderer is copied in
synchronously at its start. On a device without CUDA streams the copy is synchronous too; when
the pipeline computes on the CPU nothing moves at all. An out-of-memory error during the copy
puts the renderer back on the CPU and lets the core's fallback make the sketcher finish the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..adapters.base import module_device
from ..hookspecs import hookimpl
from ..switching import SKETCH
from . import placement
from .host_offload import host_offloading

if TYPE_CHECKING:  # pragma: no cover - types only
    from ..runtime import Run, Session

STATE_KEY = "prefetch_renderer"


@dataclass
class PrefetchState:
    """Per pipeline: the side stream, and the copy in flight for the current call."""

    stream: Any = None  # torch.cuda.Stream, created on first use
    ready: Any = None  # torch.cuda.Event recorded after the copy; None once waited for
    in_use: bool = False  # the renderer is on the execution device for the current call


def _state(session: Session) -> PrefetchState:
    return session.plugin_state.setdefault(STATE_KEY, PrefetchState())


def _applies(session: Session) -> bool:
    """Prefetch only where it frees memory and the host's offloading does not own the renderer."""
    return (
        session.config.prefetch_renderer
        and session.renderer is not session.sketcher
        and placement.offloading_applies(placement.execution_device(session))
        and not host_offloading(session.sketcher)
    )


@hookimpl
def srd_check_setup(session: Session) -> list[str]:
    config = session.config
    if not config.prefetch_renderer:
        return []
    if not config.move_renderer:
        return [
            "prefetch_renderer=True moves the renderer between the CPU and the accelerator, which "
            "move_renderer=False forbids; set move_renderer=True or prefetch_renderer=False"
        ]
    if session.renderer is session.sketcher:
        return ["prefetch_renderer=True has nothing to prefetch: the renderer is the sketcher itself"]
    return []


@hookimpl(tryfirst=True)
def srd_place_renderer(session: Session, run: Run | None) -> bool | None:
    if not _applies(session):
        return None
    renderer = session.renderer
    if run is None:  # at enable: the renderer's home between calls is the CPU, pinned
        _send_home(session)
        return True
    device = placement.execution_device(session)
    state = _state(session)
    state.in_use = True  # set first: a copy that fails halfway is undone by `_send_home`
    try:
        if run.phase == SKETCH and device.type == "cuda":
            _copy_in_background(renderer, device, state)
        else:
            placement.move(renderer, device)
    except RuntimeError:  # out of memory: leave the renderer whole, on the CPU; the core falls back
        _send_home(session)
        raise
    return True


@hookimpl
def srd_switch(session: Session, run: Run, step_index: int) -> None:
    _wait_for_copy(session)


@hookimpl(tryfirst=True)
def srd_fallback(session: Session, run: Run, step_index: int) -> None:
    """Release the renderer before the sketcher (possibly offloaded) comes back."""
    if _state(session).in_use:
        _send_home(session)


@hookimpl
def srd_run_end(session: Session, run: Run) -> None:
    if _state(session).in_use:
        _send_home(session)


def _copy_in_background(renderer: torch.nn.Module, device: torch.device, state: PrefetchState) -> None:
    placement.pin(renderer)
    main = torch.cuda.current_stream(device)
    if state.stream is None:
        state.stream = torch.cuda.Stream(device)
    state.stream.wait_stream(main)  # the copy starts after the work already queued (the text encoder's)
    with torch.cuda.stream(state.stream):
        placement.move(renderer, device)
    state.ready = torch.cuda.Event()
    state.ready.record(state.stream)


def _wait_for_copy(session: Session) -> None:
    """Make the main stream wait (on the GPU) until the renderer's weights have arrived."""
    state = _state(session)
    if state.ready is not None:
        device = placement.execution_device(session)
        torch.cuda.current_stream(device).wait_event(state.ready)
        state.ready = None


def _send_home(session: Session) -> None:
    """Back to the CPU (pinned on CUDA): after any copy in flight, then synchronised."""
    _wait_for_copy(session)
    state = _state(session)
    renderer = session.renderer
    if state.in_use or module_device(renderer) != placement.OFFLOAD_DEVICE:
        placement.move(renderer, placement.OFFLOAD_DEVICE)
    placement.pin(renderer)
    state.in_use = False
