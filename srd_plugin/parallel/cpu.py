"""Running diffusers' context parallelism on CPU processes (gloo), for tests and `--tiny` examples.

torch 2.13 runs every collective diffusers' context parallelism needs over gloo, so the
whole logic can be checked on a CPU-only machine. One obstacle remains in diffusers 0.42:
`enable_parallelism` picks each process's device as `rank % torch.accelerator.device_count()`,
which is 0 without an accelerator (ZeroDivisionError). The shim below makes the count 1
while the models are being split; nothing else reads it afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def cpu_device_count_shim() -> Iterator[None]:
    """Inside the block `torch.accelerator.device_count()` is at least 1 (no-op with an accelerator)."""
    original = torch.accelerator.device_count
    if original() > 0:
        yield
        return
    torch.accelerator.device_count = lambda *args, **kwargs: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original
