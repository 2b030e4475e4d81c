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
from .runtime import _SESSIONS, Session, last_trace_of, other_sessions, session_of
from .sharing import sharing_problems
from .trace import RunTrace

#: held while a setup is checked against the other enabled pipelines and swapped in or out
_SETUP_LOCK = threading.RLock()


def enable(pipe: Any, renderer: Any, config: SRDConfig | None = None, **overrides: Any) -> Any:
    """Make every later `pipe(...)` sketch with `pipe.transformer` and render with `renderer`.

    Args:
        pipe: a diffusers pipeline some adapter supports (WanPipeline built in).
        renderer: a transformer module, or a path / hub repo id loaded with the host's own
            transformer class (a pipeline folder means its `transformer` subfolder), in the
            sketcher's dtype and on its device.
        config: an `SRDConfig` (default: adaptive switching with the paper's settings).
        **overrides: `SRDConfig` fields to change, e.g. `switch="step", switch_step=10`.

    Returns the same pipeline. Enabling again replaces the previous setup.

    Raises (before any change to the pipeline):
        UnsupportedPipelineError: no adapter recognises the pipeline.
        IncompatibleRendererError: the renderer cannot replace the sketcher (every mismatch named).
        ValueError: a bad config value, a missing renderer path, a plugin-reported problem, a
            sketcher or scheduler already used by another enabled pipeline (`sharing.py`).
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
    session = Session(pipe, adapter, sketcher, renderer_module, config, manager, renderer_source=source)
    with _SETUP_LOCK:  # enable / disable in other threads must not interleave with the checks and the swap
        problems = sharing_problems(pipe, sketcher, renderer_module, config, other_sessions(session_of(pipe)))
        problems += [p for result in manager.hook.srd_check_setup(session=session) for p in (result or [])]
        if problems:
            raise ValueError("srd_plugin cannot enable this setup:\n" + "\n".join(f"  - {p}" for p in problems))
        _place(session)
        previous = _SESSIONS.pop(pipe, None)
        if previous is not None:
            previous.uninstall()
        session.refresh_dtypes()
        try:
            session.install()  # removes its own partial work if it fails
        except BaseException:
            if previous is not None:  # a failed enable leaves the previous setup in place
                previous.install()
                _SESSIONS[pipe] = previous
            raise
        _SESSIONS[pipe] = session
    return pipe


def disable(pipe: Any) -> Any:
    """Remove SRD from the pipeline; afterwards it behaves exactly as if never enabled. Idempotent."""
    with _SETUP_LOCK:
        session = _SESSIONS.pop(pipe, None)
        if session is not None:
            session.uninstall()
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
    return session_of(pipe) is not None


# -- helpers ------------------------------------------------------------------------------
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
