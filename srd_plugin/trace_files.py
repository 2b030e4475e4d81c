"""Built-in plugin: write the trace of every call of an enabled pipeline to a folder as JSON.

Turned on per pipeline by `trace_dir` (the `[srd] trace_dir` key, `SRD_TRACE_DIR`, or
`activate(pipe, trace_dir=...)`), which is how an unmodified host program run under
`srd-run` leaves a record of what SRD did. The folder lives in the session's
`plugin_state`, so the plugin itself holds no state.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover - types only
    from .runtime import Run, Session

STATE_KEY = "trace_files"


def write_traces_to(session: Session, folder: str | os.PathLike) -> Path:
    """Write every later call's trace of this session into `folder` (created if missing)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    session.plugin_state[STATE_KEY] = {"folder": folder, "calls": 0}
    return folder


@hookimpl
def srd_run_end(session: Session, run: Run) -> None:
    state = session.plugin_state.get(STATE_KEY)
    if state is None:
        return
    state["calls"] += 1
    # pid and session id keep files apart when several processes or pipelines share a folder
    name = f"{session.pipeline_name}-{os.getpid()}-{id(session):x}-call{state['calls']:03d}.json"
    try:
        run.trace.save(state["folder"] / name)
    except OSError as error:  # a full disk must not break the host's generation
        warnings.warn(f"srd_plugin: could not write the trace to {state['folder']}: {error}", stacklevel=2)
