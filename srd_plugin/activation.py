"""`activate(pipe)`: the one-line opt-in for host code, steered by a config file and `SRD_*` flags.

    pipe = WanPipeline.from_pretrained(...)
    srd_plugin.activate(pipe)          # SRD if SRD_ENABLE (or `enable` in the config file) is on

With the flag off, `activate` returns the pipeline untouched, so the host's outputs stay bit
for bit what they were. Settings come from `srd_plugin.settings` (arguments > environment >
config file > defaults); every bad value is reported before the pipeline is touched.
Whatever `activate` does (importing and calling a renderer factory, loading a renderer, `enable`)
leaves the global torch, numpy and `random` streams as they were (`random_state`), so a program
that samples without a `generator` draws the same numbers with or without it.
"""

from __future__ import annotations

import os
from typing import Any

from .api import enable
from .random_state import preserved_random_state
from .runtime import _SESSIONS, session_of, sketcher_of
from .settings import Settings, load_settings
from .trace_files import write_traces_to

#: `session.plugin_state` key: the settings a session was built from (pipelines sharing it join it)
SETTINGS_KEY = "srd_plugin.activation"


def activate(pipe: Any, config_file: str | os.PathLike | None = None, **arguments: Any) -> Any:
    """Enable SRD on `pipe` when the settings' flag is on; return `pipe` either way.

    Args:
        pipe: a pipeline some adapter supports.
        config_file: a TOML file with an `[srd]` table (default: the file `SRD_CONFIG` names).
        **arguments: the highest-precedence settings: `enable`, `renderer` (a path, hub repo
            id, "package.module:function" factory, or a module), `trace_dir`, and any
            `SRDConfig` field.

    Raises `ValueError` naming the key and its source for a malformed setting (also when
    the flag is off: a broken setting is reported, not ignored), and what `enable` raises
    for an unsupported pipeline or an incompatible renderer. The global random streams are
    left as they were, also when it raises.
    """
    with preserved_random_state():
        settings = load_settings(config_file, **arguments)
        if settings.enabled:
            apply_settings(pipe, settings)
    return pipe


def apply_settings(pipe: Any, settings: Settings) -> Any:
    """Enable SRD on `pipe` as `settings` say (the renderer built fresh from a factory).

    A pipeline that shares its sketcher with one these same settings already enabled (`from_pipe`,
    `Pipeline(**pipe.components)`) joins that setup with its renderer instead of building another.
    """
    if settings.trace_dir is not None:  # before `enable`, so a bad folder leaves the pipeline untouched
        try:
            settings.trace_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            origin = settings.origins.get("trace_dir", "trace_dir")
            raise ValueError(
                f"{origin}: cannot create the trace folder {str(settings.trace_dir)!r} ({error})"
            ) from error
    sketcher = sketcher_of(pipe)
    shared = _SESSIONS.get(sketcher) if sketcher is not None else None
    if shared is not None and shared.plugin_state.get(SETTINGS_KEY) is settings:
        enable(pipe, shared.renderer, settings.config)  # the same renderer and settings: joins the setup
    else:
        enable(pipe, settings.make_renderer(), settings.config)
        session_of(pipe).plugin_state[SETTINGS_KEY] = settings
    if settings.trace_dir is not None:
        write_traces_to(session_of(pipe), settings.trace_dir)
    return pipe


def describe_policy(settings: Settings) -> str:
    """The switching policy and its parameter, as one short phrase (for `srd-run`'s report)."""
    config = settings.config
    if config.switch == "adaptive":
        upper = config.max_sketch_steps if config.max_sketch_steps is not None else "ceil(0.6 N)"
        return f"adaptive (threshold {config.threshold:g}, {config.min_sketch_steps}..{upper} sketch steps)"
    parameter = {"step": "switch_step", "ratio": "switch_ratio", "boundary": "boundary_ratio"}[config.switch]
    return f"{config.switch} ({parameter} {getattr(config, parameter)})"
