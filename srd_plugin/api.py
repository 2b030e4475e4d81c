"""The public entry points: `enable`, `disable`, `sketch_render`, `last_trace`.

`enable` does all checking before it touches the pipeline: it finds the adapter, resolves
and checks the renderer, asks every plugin for problems, and only then replaces any
previous setup and installs the new one.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from .adapters.base import module_device, module_dtype
from .config import SRDConfig
from .errors import IncompatibleRendererError, UnsupportedPipelineError
from .manager import get_plugin_manager, supported_pipelines
from .runtime import _SESSIONS, _SKETCHER_OF, Session, last_trace_of, other_sessions, session_of
from .sharing import sharing_problems
from .switching import make_policy
from .trace import RunTrace

#: held while a setup is checked against the other enabled pipelines and swapped in or out
_SETUP_LOCK = threading.RLock()


def enable(pipe: Any, renderer: Any, config: SRDConfig | None = None, **overrides: Any) -> Any:
    """Make every later `pipe(...)` sketch with `pipe.transformer` and render with `renderer`.

    Args:
        pipe: a diffusers pipeline some adapter supports (see `srd doctor`).
        renderer: a transformer module, or a path / hub repo id loaded with the host's own
            transformer class (a pipeline folder means its `transformer` subfolder), in the
            sketcher's dtype and on its device.
        config: an `SRDConfig` (default: adaptive switching with the paper's settings).
        **overrides: `SRDConfig` fields to change, e.g. `switch="step", switch_step=10`.

    Returns the same pipeline. Enabling again replaces the previous setup.

    SRD's setup belongs to the components it intercepts (the sketcher and its scheduler), not to
    the pipeline object. A pipeline built from the components of an enabled one
    (`DiffusionPipeline.from_pipe(pipe)`, `WanPipeline(**pipe.components)`) joins that setup when
    enabled with the same renderer and settings; with another renderer or other settings the new
    setup replaces the old one for every pipeline sharing the sketcher, with one warning naming them.

    Raises (before any change to the pipeline):
        UnsupportedPipelineError: no adapter recognises the pipeline.
        IncompatibleRendererError: the renderer cannot replace the sketcher (every mismatch named).
        ValueError: a bad config value, a missing renderer path, a plugin-reported problem, a
            scheduler the adaptive policy cannot derive x0 from, components that are another
            setup's in a way that cannot be shared (`sharing.py`).
    If installing fails half-way (a plugin's `srd_prepare_model` raising), the partial work is
    undone and a previous setup of this pipeline is put back before the error propagates.
    """
    config = _resolve_config(config, overrides)
    manager = get_plugin_manager()
    adapter = manager.hook.srd_get_adapter(pipe=pipe)
    if adapter is None:
        raise UnsupportedPipelineError(pipe, supported_pipelines())
    adapter.check_pipeline(pipe)
    sketcher = adapter.sketcher(pipe)
    scheduler_problems = _scheduler_problems(pipe, adapter, config)
    with _SETUP_LOCK:
        existing = _SESSIONS.get(sketcher)
        if existing is not None and _same_setup(existing, renderer, config, adapter.routed_modules(pipe)):
            others = other_sessions(existing)
            problems = scheduler_problems + sharing_problems(pipe, sketcher, existing.renderer, config, others)
            _raise_setup_problems(problems)
            _leave_other_session(pipe, existing)
            existing.join(pipe)
            _SKETCHER_OF[pipe] = sketcher
            return pipe
    renderer_module = _resolve_renderer(renderer, pipe, adapter, config)
    problems = adapter.compatibility_problems(sketcher, renderer_module)
    if problems:
        raise IncompatibleRendererError(problems)
    _check_placement(sketcher, renderer_module, config)
    if renderer_module is sketcher:
        warnings.warn(
            "srd_plugin: the renderer is the sketcher itself; every step runs the same model, so SRD cannot speed "
            "anything up (useful only as a test of the plumbing)",
            stacklevel=2,
        )
    source = os.fspath(renderer) if isinstance(renderer, (str, os.PathLike)) else None
    with _SETUP_LOCK:  # enable / disable in other threads must not interleave with the checks and the swap
        previous = _SESSIONS.get(sketcher)
        session = Session(pipe, adapter, sketcher, renderer_module, config, manager, renderer_source=source)
        if previous is not None:  # the same components, another renderer or other settings: replace for all
            session.take_pipelines_of(previous)
        others = other_sessions(previous)
        problems = scheduler_problems + sharing_problems(pipe, sketcher, renderer_module, config, others)
        problems += [p for result in manager.hook.srd_check_setup(session=session) for p in (result or [])]
        _raise_setup_problems(problems)
        _place(session)
        if previous is not None:
            previous.uninstall()
            if previous.renderer is not renderer_module or previous.config != config:
                _warn_replaced(pipe, previous)
        _leave_other_session(pipe, previous)
        session.refresh_dtypes()
        try:
            session.install()  # removes its own partial work if it fails
        except BaseException:
            if previous is not None:  # a failed enable leaves the previous setup in place
                previous.install()
                _SESSIONS[sketcher] = previous
            raise
        _SESSIONS[sketcher] = session
        _SKETCHER_OF[pipe] = sketcher
    return pipe


def disable(pipe: Any) -> Any:
    """Remove SRD from the pipeline's components; afterwards it behaves exactly as if never enabled.

    SRD's setup belongs to the sketcher and its scheduler, so every pipeline sharing them (`from_pipe`,
    `Pipeline(**pipe.components)`) runs plain afterwards too; a warning names them. Idempotent.
    """
    with _SETUP_LOCK:
        session = session_of(pipe) or _session_listing(pipe)
        if session is None:
            return pipe
        if _SESSIONS.get(session.sketcher) is session:
            del _SESSIONS[session.sketcher]
        others = [p for p in session.pipes if p is not pipe]
        session.uninstall()
    if others:
        warnings.warn(
            f"srd_plugin: disabled SRD on the components this {type(pipe).__name__} shares with "
            f"{_names(others)}; those pipelines run plain now too",
            stacklevel=2,
        )
    return pipe


@contextlib.contextmanager
def sketch_render(pipe: Any, renderer: Any, config: SRDConfig | None = None, **overrides: Any) -> Iterator[Any]:
    """`with sketch_render(pipe, renderer): pipe(...)` — enabled inside the block, restored after it."""
    enable(pipe, renderer, config, **overrides)
    try:
        yield pipe
    finally:
        disable(pipe)


def last_trace(pipe: Any) -> RunTrace | None:
    """The trace of the pipeline's latest SRD call (kept after `disable`), or None."""
    return last_trace_of(pipe)


def is_enabled(pipe: Any) -> bool:
    """True when the pipeline's calls go through SRD (enabled on it, or on a pipeline sharing its components)."""
    return session_of(pipe) is not None


# -- helpers ------------------------------------------------------------------------------
def _scheduler_problems(pipe: Any, adapter: Any, config: SRDConfig) -> list[str]:
    """The adaptive policy needs x0 from the scheduler: refuse one it cannot derive it from, now."""
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None or not make_policy(config).needs_x0:
        return []
    problem = adapter.scheduler_problem(scheduler)
    return [f"scheduler: {problem}"] if problem else []


def _same_setup(session: Session, renderer: Any, config: SRDConfig, routed: Any) -> bool:
    """Would enabling with these arguments build exactly this session's setup (same renderer, same
    settings, the same host modules routed: a Wan2.2 pipeline sharing a Wan2.1 one's transformer also
    routes its `transformer_2`)?"""
    if not session.installed or session.config != config or tuple(routed) != session.routed:
        return False
    if isinstance(renderer, (str, os.PathLike)):
        return session.renderer_source == os.fspath(renderer)
    return renderer is session.renderer


def _raise_setup_problems(problems: list[str]) -> None:
    if problems:
        raise ValueError("srd_plugin cannot enable this setup:\n" + "\n".join(f"  - {p}" for p in problems))


def _session_listing(pipe: Any) -> Session | None:
    """The installed session this pipeline was enabled on, whatever its components are now."""
    for session in list(_SESSIONS.values()):
        if any(p is pipe for p in session.pipes):
            return session
    return None


def _leave_other_session(pipe: Any, keep: Session | None) -> None:
    """A pipeline enabled on another sketcher before (the user swapped `pipe.transformer`) leaves that session."""
    session = _session_listing(pipe)
    if session is None or session is keep:
        return
    if len(session.pipes) == 1:
        if _SESSIONS.get(session.sketcher) is session:
            del _SESSIONS[session.sketcher]
        session.uninstall()
    else:
        session.leave(pipe)


def _warn_replaced(pipe: Any, previous: Session) -> None:
    others = [p for p in previous.pipes if p is not pipe]
    if others:
        warnings.warn(
            f"srd_plugin: this setup replaces the SRD setup of the components this {type(pipe).__name__} shares "
            f"with {_names(others)}; those pipelines now use the new renderer and settings too",
            stacklevel=3,
        )


def _names(pipes: list[Any]) -> str:
    return f"{len(pipes)} other pipeline(s) ({', '.join(type(p).__name__ for p in pipes)})"


def _resolve_config(config: SRDConfig | None, overrides: dict[str, Any]) -> SRDConfig:
    if config is None:
        config = SRDConfig()
    elif not isinstance(config, SRDConfig):
        raise TypeError(f"config must be an SRDConfig, got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config


def _resolve_renderer(renderer: Any, pipe: Any, adapter: Any, config: SRDConfig) -> torch.nn.Module:
    if renderer is None:
        raise ValueError(
            "renderer is None: pass the small model as a loaded transformer module, a local folder, or a hub repo "
            "id such as 'Wan-AI/Wan2.1-T2V-1.3B-Diffusers'"
        )
    if isinstance(renderer, (str, os.PathLike)):
        return adapter.load_renderer(renderer, pipe, config)
    if isinstance(renderer, torch.nn.Module):
        return renderer
    raise TypeError(f"renderer must be a torch.nn.Module, a path or a hub repo id, got {type(renderer).__name__}")


def _check_placement(sketcher: torch.nn.Module, renderer: torch.nn.Module, config: SRDConfig) -> None:
    if config.move_renderer or renderer is sketcher:
        return
    problems = []
    sketcher_device, renderer_device = module_device(sketcher), module_device(renderer)
    if sketcher_device != renderer_device and sketcher_device.type != "meta":  # meta: sequential CPU offloading
        problems.append(
            f"device: the sketcher is on {sketcher_device}, the renderer on {renderer_device}, and "
            f"move_renderer=False forbids moving it; call renderer.to({str(sketcher_device)!r}) "
            "or set move_renderer=True"
        )
    if config.renderer_dtype is not None and str(module_dtype(renderer)) != f"torch.{config.renderer_dtype}":
        problems.append(
            f"dtype: renderer_dtype={config.renderer_dtype!r} asks for a conversion, but the renderer is "
            f"{module_dtype(renderer)} and move_renderer=False forbids changing it"
        )
    if problems:
        raise IncompatibleRendererError(problems)


def _place(session: Session) -> None:
    """Convert the renderer's dtype, then put it on the sketcher's device, unless a placement
    plugin (offloading, prefetch: `srd_place_renderer`) owns where the renderer lives."""
    sketcher, renderer, config = session.sketcher, session.renderer, session.config
    if renderer is sketcher or not config.move_renderer:
        return
    if config.renderer_dtype is not None:
        renderer.to(getattr(torch, config.renderer_dtype))
    if session.hook.srd_place_renderer(session=session, run=None):
        return
    device = module_device(sketcher)
    if device.type != "meta" and module_device(renderer) != device:
        renderer.to(device)
