"""Every hook srd_plugin calls, documented where it is declared (pytest's hookspec.py is the model).

Plugins are modules or objects with functions marked `@hookimpl` and named like the specs
below. Built-in adapters and accelerators are plugins of exactly this kind; third-party
ones register through the "srd_plugin" entry-point group:

    [project.entry-points.srd_plugin]
    my_adapter = "my_package.srd_adapter"

Plugins keep no per-pipeline state of their own: everything they need lives on the
`session` (one per enabled pipeline: `session.plugin_state[name]`) and the `run` (one per
pipeline call) passed to them. That keeps two pipelines, or two threads, apart.

Call order of one `pipe(...)`:
    srd_run_start -> (srd_step_end per step, srd_switch once at the switch) -> srd_run_end
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - types only
    import torch

    from .adapters.base import Adapter
    from .runtime import Run, Session
    from .switching import Decision

PROJECT_NAME = "srd_plugin"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- adapter discovery ----------------------------------------------------------------
@hookspec(firstresult=True)
def srd_get_adapter(pipe: Any) -> Adapter | None:
    """Return an adapter for `pipe` if this plugin knows its family, else None.

    Called by `enable`. The first non-None answer wins; later-registered plugins are asked
    first, so a third-party adapter can override a built-in one for a subclass.
    """


@hookspec
def srd_supported_pipelines() -> list[str]:
    """Return the names of the pipeline classes this plugin supports.

    Used for the message of `UnsupportedPipelineError` and by `srd doctor`.
    """


@hookspec
def srd_pipeline_classes() -> list[type]:
    """Return the host classes whose construction `srd-run` watches (optional).

    `srd-run` enables SRD on every instance of these classes right after it is built, and
    on everything `DiffusionPipeline.from_pretrained` / `from_pipe` returns. Diffusers
    classes named by `srd_supported_pipelines` are watched without this hook; implement it
    for hosts outside diffusers (a hand-written denoising loop class).
    """


# -- set-up and tear-down ---------------------------------------------------------------
@hookspec
def srd_check_setup(session: Session) -> list[str] | None:
    """Return problems that make this setup unworkable (empty or None if it is fine).

    Called by `enable` after the renderer was resolved and checked by the adapter, before
    anything is installed. Every problem from every plugin is reported in one ValueError.
    """


@hookspec
def srd_prepare_model(session: Session, role: str, model: torch.nn.Module) -> None:
    """Prepare one model for its role ("sketch" or "render") when SRD is enabled.

    Accelerator plugins attach their per-instance hooks here (e.g. TeaCache with the
    coefficients of this model's architecture). Undo it in `srd_restore_model`.
    """


@hookspec
def srd_restore_model(session: Session, role: str, model: torch.nn.Module) -> None:
    """Undo `srd_prepare_model` for one model; called by `disable` (and by a re-`enable`).

    Also called after an `enable` that failed half-way, possibly for a model this plugin
    never prepared: undo only what is there. If it raises, SRD's own interceptions are
    still removed and the error propagates.
    """


@hookspec
def srd_add_pipeline(session: Session, pipe: Any) -> None:
    """A pipeline now goes through this session: the one `enable` was called on, or one that joined.

    A session belongs to its sketcher and schedulers, and several pipelines built from the same
    components (`from_pipe`, `Pipeline(**pipe.components)`) can share it. Plugins that attach
    something to the *pipeline object* (the phase-aware progress bar) do it here, per pipeline,
    and undo it in `srd_remove_pipeline`.
    """


@hookspec
def srd_remove_pipeline(session: Session, pipe: Any) -> None:
    """Undo `srd_add_pipeline` for one pipeline; called by `disable` for every pipeline of the session."""


# -- one pipeline call ------------------------------------------------------------------
@hookspec
def srd_run_start(session: Session, run: Run) -> None:
    """A pipeline call has set its timesteps; the run's policy, trace and phase are fresh.

    Reset any per-call state here. `run.phase` is the role of step 0 (a run that renders
    from step 0 receives `srd_switch` with step_index 0 right after this hook).
    """


@hookspec
def srd_step_end(session: Session, run: Run, step_index: int) -> None:
    """Step `step_index` is done: the scheduler has stepped and the trace has its entry."""


@hookspec
def srd_switch(session: Session, run: Run, step_index: int) -> None:
    """The renderer takes over from step `step_index` on (once per call, one-way).

    Typical uses: reset caches that must not carry sketcher state into the render phase,
    move the sketcher's weights off the accelerator.
    """


@hookspec
def srd_run_end(session: Session, run: Run) -> None:
    """The call ended: after its last step, or when it was aborted (`run.trace.completed` is False)."""


# -- distributed runs (appended: context parallelism) ----------------------------------------
@hookspec
def srd_before_install(session: Session) -> None:
    """`enable` passed every check; the router is about to be registered on the sketcher.

    Hooks a plugin registers on the sketcher's top module here sit *inside* the router, so
    they see only the calls the sketcher itself runs. The router must stay the outermost
    hook: a hook outside it would also transform the calls it forwards to the renderer
    (diffusers' context-parallel split hook would shard the renderer's inputs twice).
    Undo it in `srd_restore_model`.
    """


@hookspec(firstresult=True)
def srd_agree_decision(session: Session, run: Run, step_index: int, decision: Decision) -> Decision | None:
    """Return the switch decision every process of a distributed run must follow (None: keep the local one).

    Called after the policy decided on step `step_index`, before the decision is recorded
    or acted on. When several processes run one generation together (context
    parallelism), each must switch at the same step or their collectives no longer match:
    a plugin decides once (e.g. rank 0) and shares the result.
    """


# -- placement and faults (memory plugins) -------------------------------------------------
@hookspec(firstresult=True)
def srd_place_renderer(session: Session, run: Run | None) -> bool | None:
    """Put the renderer where the coming work needs it; return True if this plugin did.

    Called by `enable` (with `run=None`, after the checks, before anything is installed) and at
    the start of every call (after the run's policy decided `run.phase`, the role of step 0,
    before `srd_run_start`). When no plugin answers True, the core's default applies: the
    renderer follows the sketcher's device (`SRDConfig.move_renderer`). Offloading plugins own
    the placement instead (renderer kept on the CPU and prefetched, or handed to the host's
    offloading hooks). At a call's start a `RuntimeError` raised here (out of memory) makes the
    sketcher run the whole call (`SRDConfig.on_renderer_failure`); leave the renderer whole.
    """


@hookspec
def srd_fallback(session: Session, run: Run, step_index: int) -> None:
    """The renderer cannot be used: the sketcher runs this call from step `step_index` on.

    Called when the renderer returned NaN/Inf, could not be moved in at the call's start, or a
    `srd_switch` implementation raised a `RuntimeError` (e.g. out of memory while moving the
    renderer in). Bring the sketcher back to the accelerator and release the renderer here.
    """
