"""Peak accelerator memory per step, recorded in the trace (`RunTrace.memory_allocated` / `memory_reserved`).

Where the pipeline computes on CUDA, each step's entry is the high-water mark of the caching
allocator (`torch.cuda.max_memory_allocated` / `max_memory_reserved`) since the previous mark:
the peak statistics are reset at the call's start and after every step. At the switch they are
reset once more, after every other `srd_switch` hook ran (`trylast`): the sketcher's weights,
when `offload_sketcher="after_switch"` sends them away, are then no longer counted, so the first
render step's figure is the render phase's own. `RunTrace.summary()` shows the peak per phase.

Nothing is recorded elsewhere (CPU, other accelerators): the lists stay empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..hookspecs import hookimpl
from . import placement

if TYPE_CHECKING:  # pragma: no cover - types only
    from ..runtime import Run, Session

STATE_KEY = "memory"


def read_peak(device: torch.device) -> tuple[int, int]:
    """(allocated, reserved) high-water marks in bytes since the last `reset_peak`."""
    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def reset_peak(device: torch.device) -> None:
    torch.cuda.reset_peak_memory_stats(device)


@hookimpl
def srd_run_start(session: Session, run: Run) -> None:
    device = placement.execution_device(session)
    if device.type == "cuda":
        run.plugin_state[STATE_KEY] = device
        reset_peak(device)


@hookimpl
def srd_step_end(session: Session, run: Run, step_index: int) -> None:
    device = run.plugin_state.get(STATE_KEY)
    if device is None:
        return
    allocated, reserved = read_peak(device)
    run.trace.memory_allocated.append(allocated)
    run.trace.memory_reserved.append(reserved)
    reset_peak(device)


@hookimpl(trylast=True)
def srd_switch(session: Session, run: Run, step_index: int) -> None:
    device = run.plugin_state.get(STATE_KEY)
    if device is not None:
        reset_peak(device)
