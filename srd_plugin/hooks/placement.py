"""What the memory plugins share: where the models compute, where offloaded weights go, how they move.

Two devices matter. The *execution device* is where the pipeline puts its latents (diffusers'
`pipe._execution_device`: the accelerator; it reads the offloading hooks when the host uses
them). The *offload device* is the CPU. Weights move only between the two, and always through
`module.to(...)`, so a test that wraps a module's `to` sees every move.

On CUDA a move to the CPU is issued non-blocking: PyTorch then allocates the destination in
pinned (page-locked) memory, which makes the copy back to the accelerator fast and lets it run
asynchronously on a side stream. The move synchronises before returning, so the CPU copy is
complete whenever the host can look at it.

On a CPU-only machine the execution device is the CPU and nothing moves. Tests exercise the
logic by replacing `execution_device` with `torch.device("cpu", 0)`, a device that compares
unequal to `OFFLOAD_DEVICE` while staying on the CPU: the same stand-in diffusers uses for
accelerate's hooks in `enable_model_cpu_offload(device="cpu")`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..adapters.base import module_device

if TYPE_CHECKING:  # pragma: no cover - types only
    from ..runtime import Session

#: where weights go when they leave the accelerator
OFFLOAD_DEVICE = torch.device("cpu")


def execution_device(session: Session) -> torch.device:
    """The device the pipeline computes on (replaced in CPU tests, see the module docstring).

    A host that is not a diffusers pipeline (a hand-written loop with a third-party adapter)
    has no `_execution_device`: its sketcher's device is where it computes.
    """
    device = getattr(session.pipe, "_execution_device", None)
    return torch.device(device) if device is not None else module_device(session.sketcher)


def offloading_applies(device: torch.device) -> bool:
    """True when moving weights between `device` and `OFFLOAD_DEVICE` frees accelerator memory."""
    return device != OFFLOAD_DEVICE and device.type != "meta"


def move(module: torch.nn.Module, device: torch.device) -> None:
    """Move every weight of `module` to `device`.

    Towards the accelerator the copy is non-blocking (asynchronous from pinned memory; later work
    on the same stream is ordered after it). Towards the CPU from CUDA it is non-blocking too, so
    the destination is pinned, and then synchronised: the accelerator memory is released and the
    CPU copy is complete when this returns.
    """
    source = module_device(module)
    module.to(device, non_blocking=True)
    if device.type == "cpu" and source.type == "cuda":
        torch.cuda.current_stream(source).synchronize()


def pin(module: torch.nn.Module) -> None:
    """Page-lock the CPU weights of `module` (CUDA only), so copies to the accelerator can be asynchronous."""
    if torch.cuda.is_available() and module_device(module).type == "cpu":
        module._apply(lambda tensor: tensor if tensor.is_pinned() else tensor.pin_memory())
