"""Phase-aware progress: the host's own progress bar says whether the sketcher or the renderer runs.

diffusers pipelines create their tqdm bar inside `__call__` through `self.progress_bar(...)`.
While SRD is enabled this plugin puts an instance attribute `progress_bar` on the pipeline
that calls the original and labels the new bar with the current phase ("SRD sketch", then
"SRD render" from the switch on). `disable` deletes the attribute again (or puts back one the
user had set), so the pipeline is exactly as before. Every pipeline a session serves gets its
own wrapper (`srd_add_pipeline`); copies of a pipeline get the plain method (`attachments.py`).

Why an instance attribute is safe: `DiffusionPipeline.__setattr__` registers a config entry
only for names already in both the instance `__dict__` and the config, which `progress_bar`
never is; so nothing reaches `model_index.json` or `save_pretrained`. The wrapper holds the
pipeline weakly (like the session) and reads the user's `set_progress_bar_config` at every
call, so `disable=True` keeps working.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import attachments
from ..hookspecs import hookimpl
from ..switching import SKETCH

if TYPE_CHECKING:  # pragma: no cover - types only
    from ..runtime import Run, Session

STATE_KEY = "progress"
ATTRIBUTE = "progress_bar"
CONFIG_ATTRIBUTE = "_progress_bar_config"  # what `set_progress_bar_config` sets
_MISSING = object()
LABELS = {SKETCH: "SRD sketch", "render": "SRD render"}


class _ProgressState:
    """What the plugin keeps on `session.plugin_state[STATE_KEY]`: the current bar and, per pipeline
    the session serves, the wrapper installed on it."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.wrappers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def phase_label(phase: str, user_description: str | None = None) -> str:
    """The bar's description for a phase, after the user's own `desc` if they set one."""
    label = LABELS.get(phase, f"SRD {phase}")
    return f"{user_description} ({label})" if user_description else label


def _describe(session: Session, phase: str) -> None:
    """Relabel the current bar (shown at its next update)."""
    state: _ProgressState | None = session.plugin_state.get(STATE_KEY)
    if state is None or state.bar is None:
        return
    config = getattr(session.pipe, CONFIG_ATTRIBUTE, None)
    config = config if isinstance(config, dict) else {}
    state.bar.set_description(phase_label(phase, config.get("desc")), refresh=False)


@contextlib.contextmanager
def _labelled_config(pipe: Any, phase: str) -> Iterator[None]:
    """The user's progress-bar config with the phase as `desc`, for the creation of one bar only.

    Passing the label at creation (rather than relabelling afterwards) makes the bar's very
    first line carry it too. The user's config object is put back untouched (or removed
    again if there was none), so `set_progress_bar_config` behaves as without SRD.
    """
    saved = pipe.__dict__.get(CONFIG_ATTRIBUTE, _MISSING)
    if saved is _MISSING or isinstance(saved, dict):  # anything else: the host reports its own error
        user_config = {} if saved is _MISSING else saved
        pipe.__dict__[CONFIG_ATTRIBUTE] = {**user_config, "desc": phase_label(phase, user_config.get("desc"))}
    try:
        yield
    finally:
        if saved is _MISSING:
            pipe.__dict__.pop(CONFIG_ATTRIBUTE, None)
        else:
            pipe.__dict__[CONFIG_ATTRIBUTE] = saved


def install(session: Session, pipe: Any) -> None:
    """Wrap `pipe.progress_bar` on the instance (idempotent per session and pipeline)."""
    state: _ProgressState = session.plugin_state.setdefault(STATE_KEY, _ProgressState())
    if pipe in state.wrappers or not callable(getattr(pipe, ATTRIBUTE, None)):
        return
    had_attribute = ATTRIBUTE in pipe.__dict__
    pipe_ref = weakref.ref(pipe)
    original = pipe.__dict__[ATTRIBUTE] if had_attribute else getattr(type(pipe), ATTRIBUTE)

    @functools.wraps(original)
    def progress_bar(*args: Any, **kwargs: Any) -> Any:
        target = pipe_ref()
        run = session.active_run
        with _labelled_config(target, run.phase if run is not None else SKETCH):
            bar = original(*args, **kwargs) if had_attribute else original(target, *args, **kwargs)
        state.bar = bar
        return bar

    state.wrappers[pipe] = progress_bar
    # an attachment: copies and pickles of the pipeline get the plain `progress_bar` (attachments.py)
    attachments.attach_attribute(pipe, ATTRIBUTE, progress_bar)


def uninstall(session: Session, pipe: Any) -> None:
    """Put the pipeline's `progress_bar` back exactly as it was (unless someone replaced our wrapper)."""
    state: _ProgressState | None = session.plugin_state.get(STATE_KEY)
    wrapper = state.wrappers.pop(pipe, None) if state is not None else None
    if wrapper is not None:
        attachments.detach_attribute(pipe, ATTRIBUTE, wrapper)


# -- hooks -----------------------------------------------------------------------------------
@hookimpl
def srd_add_pipeline(session: Session, pipe: Any) -> None:
    install(session, pipe)


@hookimpl
def srd_remove_pipeline(session: Session, pipe: Any) -> None:
    uninstall(session, pipe)


@hookimpl
def srd_run_start(session: Session, run: Run) -> None:
    _describe(session, run.phase)


@hookimpl
def srd_switch(session: Session, run: Run, step_index: int) -> None:
    _describe(session, run.phase)


@hookimpl
def srd_run_end(session: Session, run: Run) -> None:
    state: _ProgressState | None = session.plugin_state.get(STATE_KEY)
    if state is not None:
        state.bar = None  # the host closes its bar; do not keep it alive between calls
