"""Decide once, share everywhere: the agreement helper for every per-step decision of a distributed run.

Under context parallelism each process runs the same generation on its share of the
tokens, and every collective inside a transformer call must be entered by all of them with
matching shapes. A decision that picks *which* model runs, or whether a model's blocks run
at all (SRD's switch, a TeaCache skip), therefore has to be the same on every process. The
inputs of such decisions are gathered, hence identical in exact arithmetic, but computing
the decision on each process from its local copy only agrees by luck of the floating point;
so one process (the group's first rank) decides and the others take its answer.

Use from any plugin:

    from srd_plugin.parallel import broadcast_from_rank0, session_process_group
    skip = broadcast_from_rank0(skip, session_process_group(session))

`broadcast_from_rank0` with `group=None` (a single-process run) returns the value as is, so
callers need no separate code path.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")

#: key of the parallel plugin's state in `session.plugin_state`
STATE_KEY = "srd_plugin.parallel"


def broadcast_from_rank0(value: T, group: Any) -> T:
    """Return the value the first rank of `group` passed; every rank of `group` must call this.

    `value` is any picklable object (a bool, a float, a `Decision`, a list of step times).
    With `group=None`, or when torch.distributed is not initialised, the value is returned
    unchanged. On NCCL the exchange goes through the current CUDA device, so each process
    must have called `torch.cuda.set_device(local_rank)` (as every torchrun script does).
    """
    if group is None or not dist.is_available() or not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
    return box[0]


def session_process_group(session: Any) -> Any:
    """The process group a session's generation runs on, or None when it runs in one process."""
    state = session.plugin_state.get(STATE_KEY)
    return None if state is None else state.group
