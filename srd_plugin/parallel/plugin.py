"""The built-in lifecycle plugin that keeps SRD correct under diffusers' context parallelism.

What it does, hook by hook:

* `srd_check_setup`: when the sketcher is split across processes (the user called
  `pipe.transformer.enable_parallelism(config=ContextParallelConfig(...))`) or SRD is asked
  to split it (`srd.enable(..., parallel_config=...)`), check before any change that the
  same split fits the renderer too (head counts, a `_cp_plan`, an attention backend
  that supports it, enough processes) and name the degrees that would fit if not.
* `srd_before_install`: apply the requested split to the sketcher (inside the router, see
  the hookspec) and the same degrees, on the sketcher's device mesh, to the renderer.
* `srd_restore_model`: remove exactly the splits SRD applied (a user's own stays).
* `srd_agree_decision`: the first rank of the group decides each switch; all follow.
* `srd_run_end`: the trace's `step_seconds` become the first rank's on every rank, so the
  whole trace is identical everywhere (each process measures its own wall time, which
  differs a little; the first rank's is the one reported).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..config import describe_parallel_config
from ..hookspecs import hookimpl
from ..runtime import session_of
from ..switching import RENDER, SKETCH, Decision
from .agree import STATE_KEY, broadcast_from_rank0, session_process_group
from .context_parallel import (
    ContextParallelConfig,
    apply_context_parallel,
    config_text,
    context_parallel_config,
    copy_config,
    degree_problems,
    num_heads,
    process_group,
    remove_context_parallel,
    same_degrees,
    setup_problems,
    tensor_parallel_config,
)


@dataclass(frozen=True)
class ParallelState:
    """Per-session facts: the sketcher's (set-up) config, its process group, the roles SRD split."""

    config: ContextParallelConfig
    group: Any
    applied: tuple[str, ...]


# -- checks ------------------------------------------------------------------------------
@hookimpl
def srd_check_setup(session: Any) -> list[str]:
    sketcher, renderer = session.sketcher, session.renderer
    shared = renderer is sketcher
    leaving = _split_by_current_session(session)  # removed by `enable` before it installs the new setup
    sketcher_cp = None if id(sketcher) in leaving else context_parallel_config(sketcher)
    renderer_cp = None if shared or id(renderer) in leaving else context_parallel_config(renderer)
    requested = session.config.parallel_config

    problems = [
        f"tensor parallelism: the {role} runs with diffusers' TensorParallelConfig; srd_plugin carries only "
        "context parallelism (ContextParallelConfig) over to the renderer"
        for role, model in (("sketcher", sketcher), ("renderer", renderer))
        if tensor_parallel_config(model) is not None
    ]
    if requested is not None and sketcher_cp is not None:
        return problems + [
            "context parallelism: the sketcher already runs with enable_parallelism(...) and parallel_config was "
            "given too; pass only one of them (diffusers cannot split a model twice)"
        ]
    config = requested if requested is not None else sketcher_cp
    if config is None:
        if renderer_cp is not None:
            problems.append(
                "context parallelism: the renderer is split across processes but the sketcher is not; split both "
                "(pipe.transformer.enable_parallelism(config=...) or srd.enable(..., parallel_config=...)) or neither"
            )
        return problems
    if renderer_cp is not None and not same_degrees(renderer_cp, config):
        problems.append(
            f"context parallelism: the renderer already runs with {describe_parallel_config(renderer_cp)}, "
            f"the sketcher with {describe_parallel_config(config)}; both models must be split the same way"
        )
    to_split = [("sketcher", sketcher)] if requested is not None else []
    if not shared and renderer_cp is None:
        to_split.append(("renderer", renderer))
    if to_split:
        problems += _environment_problems(config, check_world=requested is not None)
    for role, model in to_split:
        problems += setup_problems(model, role, config)
    heads = {role: num_heads(model) for role, model in (("sketcher", sketcher), ("renderer", renderer))}
    problems += degree_problems(config, {role: count for role, count in heads.items() if count is not None})
    return problems


def _split_by_current_session(session: Any) -> set[int]:
    """Ids of the models the pipeline's current SRD session split (a re-`enable` removes those splits first)."""
    current = session_of(session.pipe)
    state = current.plugin_state.get(STATE_KEY) if current is not None else None
    return set() if state is None else {id(current.model(role)) for role in state.applied}


def _environment_problems(config: ContextParallelConfig, check_world: bool) -> list[str]:
    if not dist.is_available() or not dist.is_initialized():
        return [
            "context parallelism: torch.distributed is not initialised; launch with torchrun and call "
            "torch.distributed.init_process_group() before srd.enable (see docs/multi_gpu.md)"
        ]
    problems = []
    processes = config.ulysses_degree * config.ring_degree
    if check_world and processes > dist.get_world_size():
        problems.append(
            f"context parallelism: {config_text(config.ulysses_degree, config.ring_degree)} needs {processes} "
            f"processes, torch.distributed has {dist.get_world_size()}; launch torchrun with "
            f"--nproc-per-node {processes} (or lower the degrees)"
        )
    if torch.accelerator.device_count() == 0:
        problems.append(
            "context parallelism: torch.accelerator.device_count() is 0, and diffusers' enable_parallelism picks "
            "a device by rank % device_count; run on GPUs (on a CPU-only machine, for tests, wrap the set-up in "
            "srd_plugin.parallel.cpu_device_count_shim())"
        )
    return problems


# -- install / uninstall ---------------------------------------------------------------
@hookimpl
def srd_before_install(session: Any) -> None:
    sketcher, renderer = session.sketcher, session.renderer
    requested = session.config.parallel_config
    if requested is None and context_parallel_config(sketcher) is None:
        return
    applied: list[str] = []
    try:
        if requested is not None:
            apply_context_parallel(sketcher, copy_config(requested))
            applied.append(SKETCH)
        config = context_parallel_config(sketcher)
        if renderer is not sketcher and context_parallel_config(renderer) is None:
            apply_context_parallel(renderer, copy_config(config, mesh=config._mesh))
            applied.append(RENDER)
    except BaseException:
        for role in reversed(applied):
            remove_context_parallel(session.model(role))
        raise
    session.plugin_state[STATE_KEY] = ParallelState(config=config, group=process_group(config), applied=tuple(applied))


@hookimpl
def srd_restore_model(session: Any, role: str, model: torch.nn.Module) -> None:
    state = session.plugin_state.get(STATE_KEY)
    if state is not None and role in state.applied:
        remove_context_parallel(model)


# -- one call ----------------------------------------------------------------------------
@hookimpl
def srd_run_start(session: Any, run: Any) -> None:
    state = session.plugin_state.get(STATE_KEY)
    if state is None:
        if session.renderer is not session.sketcher and context_parallel_config(session.sketcher) is not None:
            raise ValueError(
                "context parallelism: the sketcher was split across processes after srd.enable, the renderer was "
                "not; call srd.enable(pipe, renderer, ...) again after enable_parallelism"
            )
        return
    config = state.config
    run.trace.events.append(
        f"context parallel over {dist.get_world_size(state.group)} processes "
        f"({config_text(config.ulysses_degree, config.ring_degree)}): switch decisions and step_seconds "
        "are those of the group's first rank"
    )


@hookimpl
def srd_agree_decision(session: Any, run: Any, step_index: int, decision: Decision) -> Decision | None:
    group = session_process_group(session)
    return None if group is None else broadcast_from_rank0(decision, group)


@hookimpl
def srd_run_end(session: Any, run: Any) -> None:
    group = session_process_group(session)
    # only a completed call: an aborted one may have ended on this rank alone, and a collective would hang
    if group is not None and run.trace.completed:
        run.trace.step_seconds = broadcast_from_rank0(list(run.trace.step_seconds), group)
