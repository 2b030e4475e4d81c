"""The process-wide pluggy PluginManager: built-in plugins plus the "srd_plugin" entry points.

Built in are the adapters (one module per host family) and the accelerator / lifecycle
plugins of `srd_plugin.hooks`. Plugins are stateless modules (state lives on the session),
so one manager serves every pipeline.
"""

from __future__ import annotations

import importlib
import threading

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "srd_plugin"

BUILTIN_PLUGINS: tuple[str, ...] = (
    "srd_plugin.adapters.wan",
    "srd_plugin.adapters.cogvideox",
    "srd_plugin.adapters.ltx",
    "srd_plugin.adapters.cosmos",
    "srd_plugin.adapters.kandinsky5",
    "srd_plugin.adapters.skyreels",
    "srd_plugin.trace_files",
    "srd_plugin.parallel.plugin",
    "srd_plugin.hooks.progress",
    "srd_plugin.hooks.caches",
    "srd_plugin.hooks.teacache",
    "srd_plugin.hooks.sageattention",
    "srd_plugin.hooks.host_offload",
    "srd_plugin.hooks.offload",
    "srd_plugin.hooks.prefetch",
    "srd_plugin.hooks.memory",
    "srd_plugin.hooks.speed_checks",
)

_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The shared manager, created on first use."""
    global _manager
    with _lock:
        if _manager is None:
            manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
            manager.add_hookspecs(hookspecs)
            for name in BUILTIN_PLUGINS:
                manager.register(importlib.import_module(name), name=name)
            manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
            _manager = manager
        return _manager


def reload_plugin_manager() -> pluggy.PluginManager:
    """Build the shared manager afresh, re-reading the "srd_plugin" entry points.

    For an adapter package installed while the process runs (tests do this). Pipelines
    enabled before keep the plugins they were enabled with; plugins registered by hand on
    the old manager are not carried over.
    """
    global _manager
    with _lock:
        _manager = None
    return get_plugin_manager()


def supported_pipelines() -> list[str]:
    """Names of every pipeline class some registered adapter supports."""
    names: list[str] = []
    for result in get_plugin_manager().hook.srd_supported_pipelines():
        names.extend(result or [])
    return sorted(set(names))
