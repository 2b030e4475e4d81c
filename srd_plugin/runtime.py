"""The per-pipeline session and the per-call run: where sketching hands over to rendering.

Two instance-level interceptions carry everything (no host class is modified):

* the **Router**, a diffusers `ModelHook` on the sketcher instance: in the render phase it
  sends the call to the renderer (through the adapter), otherwise to the original forward;
* the **scheduler wrapper**, instance attributes `set_timesteps` and `step` on the
  pipeline's scheduler: `set_timesteps` starts a fresh run (every pipeline call sets its
  timesteps before its loop), `step` closes a step, asks the policy, and switches.

So one step is one decision: both CFG calls of a step see the same phase, because the
phase only changes inside `scheduler.step`, after the step's model calls.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

import pluggy
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from . import attachments
from .adapters.base import Adapter, all_finite, module_device, module_dtype
from .config import SRDConfig
from .errors import RendererFailureError
from .guidance import make_guidance
from .speed import BASIS_NAMES, SpeedTarget
from .switching import RENDER, SKETCH, SwitchPolicy, make_policy
from .trace import MIXED, RunTrace

ROUTER_HOOK_NAME = "srd_router"

# SRD's state belongs to the components it intercepts, not to a pipeline object: pipelines built
# from the same components (`WanPipeline(**pipe.components)`, `from_pipe`) call the same sketcher and
# scheduler, so they share one session, one run at a time and one last trace.
#: the sketcher module -> its session
_SESSIONS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()
#: the sketcher module -> the trace of the latest call through it (kept after `disable`)
_LAST_TRACES: weakref.WeakKeyDictionary[Any, RunTrace] = weakref.WeakKeyDictionary()
#: a pipeline -> the sketcher it was enabled with (for pipelines whose sketcher is not `transformer`)
_SKETCHER_OF: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def sketcher_of(pipe: Any) -> Any:
    """The module SRD would intercept in this pipeline (its `transformer` unless an adapter said otherwise)."""
    return _SKETCHER_OF.get(pipe) or getattr(pipe, "transformer", None)


def session_of(pipe: Any) -> Session | None:
    """The session that serves this pipeline's calls, or None.

    A pipeline is served when its sketcher carries a session and its calls reach that session's
    run: it was enabled (or joined), or it shares the scheduler of one that was.
    """
    try:
        session = _SESSIONS.get(sketcher_of(pipe))
    except TypeError:  # an unhashable or non-weakrefable stand-in
        return None
    if session is None or not session.serves(pipe):
        return None
    return session


def last_trace_of(pipe: Any) -> RunTrace | None:
    """The trace of the latest SRD call through this pipeline's sketcher (every pipeline sharing it agrees)."""
    try:
        return _LAST_TRACES.get(sketcher_of(pipe))
    except TypeError:
        return None


def other_sessions(session: Session | None) -> list[Session]:
    """Every other installed session (a snapshot, safe while other threads enable)."""
    return [s for s in list(_SESSIONS.values()) if s is not session]


@dataclass
class Run:
    """State of one pipeline call; created fresh by `set_timesteps`."""

    policy: SwitchPolicy
    trace: RunTrace
    num_steps: int
    #: the scheduler whose `set_timesteps` started this call (a session may serve several)
    scheduler: Any = None
    phase: str = SKETCH
    step_index: int = 0
    policy_done: bool = False
    fell_back: bool = False
    #: the models that served the transformer calls of the current step (normally exactly one)
    step_models: set[str] = field(default_factory=set)
    last_time: float = field(default_factory=time.perf_counter)
    plugin_state: dict[str, Any] = field(default_factory=dict)
    #: render_guidance="off": this call's `guidance.GuidanceFreeRender` (None: the host's guidance)
    guidance: Any = None
    #: target_speedup set: this call's `speed.SpeedTarget`
    speed: Any = None
    #: the index in the scheduler's schedule of the loop's first step (video-to-video `strength`
    #: runs only the tail of the schedule); found at the run's first model call (`anchor_run`)
    schedule_offset: int = 0
    anchored: bool = False


def _step_role(run: Run) -> str:
    """The model that served the step's transformer calls: its role, or "mixed" when the
    renderer failed after an earlier call of the same step had used it (see `_renderer_failed`).
    A step without any transformer call (a host that skips the model) gets the run's phase."""
    if len(run.step_models) > 1:
        return MIXED
    return next(iter(run.step_models), run.phase)


class _NoState(BaseState):
    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass


class RouterHook(ModelHook):
    """Sends the sketcher's forward to the renderer during the render phase.

    Declared stateful only so that diffusers' `cache_context` hands it the current
    context (cond / uncond); the router mirrors that context onto the renderer.
    """

    _is_stateful = True

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.context = StateManager(_NoState)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        session = self.session
        run = session.active_run
        if run is None:
            run = session.adopt_replaced_scheduler()
        if run is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        try:
            # eager: anchor before the first forward; a compiled module (`module.compile()`) leaves it
            # to the first scheduler step (`scheduler_step`), so its graph holds no Python-side bookkeeping
            if not run.anchored and getattr(module, "_compiled_call_impl", None) is None:
                session.anchor_run(run, session.adapter.loop_timestep(args, kwargs))
            if run.speed is not None and run.step_index == 0:
                run.speed.observe_call(session, run, args, kwargs, self.context._context)
            if run.phase == RENDER:
                return session.render(run, args, kwargs, self.context._context, self)
            run.step_models.add(SKETCH)
            return self.fn_ref.original_forward(*args, **kwargs)
        except BaseException as error:
            session.abort_run(run, error)
            raise

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module


class Session:
    """SRD on one sketcher: the models, the plugins, the installed interceptions.

    A session belongs to the sketcher module it routes (and the schedulers it wraps), so every
    pipeline that calls that sketcher through a wrapped scheduler is served by it: the pipeline
    it was enabled on, pipelines enabled later on the same components (`join`), and pipelines
    sharing the scheduler of one of those (`from_pipe`, `Pipeline(**pipe.components)`).
    """

    def __init__(
        self,
        pipe: Any,
        adapter: Adapter,
        sketcher: torch.nn.Module,
        renderer: torch.nn.Module,
        config: SRDConfig,
        plugin_manager: pluggy.PluginManager,
        renderer_source: str | None = None,
    ) -> None:
        #: the pipelines enabled on this session, oldest first (weak: a dropped pipeline goes away)
        self._pipe_refs: list[weakref.ref] = [weakref.ref(pipe)]
        #: the pipeline of the current call (the one whose scheduler started it), while it runs
        self._current_pipe: weakref.ref | None = None
        self.pipeline_name = type(pipe).__name__
        self.adapter = adapter
        self.sketcher = sketcher
        self.renderer = renderer
        #: the path or hub repo id the renderer was loaded from (None for a given module): adapters
        #: read facts the transformer alone does not carry from it (e.g. its VAE's scaling factor)
        self.renderer_source = renderer_source
        self.config = config
        self.hook = plugin_manager.hook
        self.plugin_state: dict[str, Any] = {}
        self.active_run: Run | None = None
        #: the scheduler of the current (or latest) call
        self.scheduler: Any = None
        self.installed = False
        self._router: RouterHook | None = None  # the sketcher's router (the first of `_routers`)
        self._routers: list[RouterHook] = []
        #: every host module the renderer replaces (`Adapter.routed_modules`: the sketcher; Wan2.2: both experts)
        self._routed: tuple[torch.nn.Module, ...] = ()
        #: scheduler -> its (set_timesteps, step) wrappers; weak, so a dropped scheduler goes away
        self._wrapped: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()
        self._step_signature: inspect.Signature | None = None
        #: (sketcher, renderer) typical step seconds of earlier calls, by the first step's call shapes (target_speedup)
        self.measured_step_times: dict[Any, tuple[float | None, float | None]] = {}
        self.refresh_dtypes()

    # -- properties ----------------------------------------------------------------------
    @property
    def pipe(self) -> Any:
        """The pipeline of the current call, else the latest one enabled on this session."""
        current = self._current_pipe() if self._current_pipe is not None else None
        if current is not None:
            return current
        pipes = self.pipes
        return pipes[-1] if pipes else None

    @property
    def pipes(self) -> list[Any]:
        """The live pipelines enabled (or joined) on this session, oldest first."""
        return [p for p in (ref() for ref in self._pipe_refs) if p is not None]

    def serves(self, pipe: Any) -> bool:
        """True when this pipeline's calls go through this session."""
        if not self.installed:
            return False
        if any(p is pipe for p in self.pipes):
            return True
        return self.serves_scheduler(getattr(pipe, "scheduler", None))

    @property
    def routed(self) -> tuple[torch.nn.Module, ...]:
        """The host modules the routers sit on (the sketcher first)."""
        return self._routed

    def serves_scheduler(self, scheduler: Any) -> bool:
        """True when this session wraps `scheduler` (its `set_timesteps` starts this session's runs)."""
        return scheduler is not None and scheduler in self._wrapped

    def model(self, role: str) -> torch.nn.Module:
        return self.sketcher if role == SKETCH else self.renderer

    def refresh_dtypes(self) -> None:
        self.sketcher_dtype = module_dtype(self.sketcher)
        self.renderer_dtype = module_dtype(self.renderer)

    # -- install / uninstall ---------------------------------------------------------------
    def install(self) -> None:
        """Install the router, the scheduler wrappers and the plugins' preparations.

        If any part fails (a plugin's `srd_prepare_model` raising, say), whatever was
        already installed is removed again before the error propagates, so a failed
        install leaves the pipeline as it was.
        """
        self._routed = tuple(self.adapter.routed_modules(self.pipe))
        self._routers = []
        self.installed = True
        try:
            # claimed first, so that "as SRD found it" means before any plugin's hooks, too
            for module in self._routed:
                attachments.claim_hook(module, ROUTER_HOOK_NAME)
            self.adapter.prepare_session(self)
            self.hook.srd_before_install(session=self)  # e.g. context parallelism, which must sit inside the router
            for module in self._routed:  # the sketcher, and any other host module the renderer replaces
                registry = HookRegistry.check_if_exists_or_initialize(module)
                router = RouterHook(self)
                registry.register_hook(router, ROUTER_HOOK_NAME)
                self._routers.append(router)
            self._router = self._routers[0]
            for pipe in self.pipes:
                self._wrap_scheduler(pipe.scheduler)
            for role in (SKETCH, RENDER):
                self.hook.srd_prepare_model(session=self, role=role, model=self.model(role))
            for pipe in self.pipes:
                self.hook.srd_add_pipeline(session=self, pipe=pipe)
        except BaseException:
            self.uninstall()
            raise

    def join(self, pipe: Any) -> None:
        """Serve one more pipeline built from this session's components (same sketcher, same settings)."""
        if not any(p is pipe for p in self.pipes):
            self._pipe_refs.append(weakref.ref(pipe))
        self._wrap_scheduler(pipe.scheduler)
        self.hook.srd_add_pipeline(session=self, pipe=pipe)

    def take_pipelines_of(self, previous: Session) -> None:
        """Serve the pipelines of the session this one replaces too (before this session's own pipeline)."""
        own = self._pipe_refs
        self._pipe_refs = [ref for ref in previous._pipe_refs if ref() is not None and ref() not in self.pipes]
        self._pipe_refs += own

    def leave(self, pipe: Any) -> None:
        """Stop serving one pipeline (enabled again elsewhere); its scheduler is unwrapped unless shared."""
        self._pipe_refs = [ref for ref in self._pipe_refs if ref() is not None and ref() is not pipe]
        self.hook.srd_remove_pipeline(session=self, pipe=pipe)
        scheduler = getattr(pipe, "scheduler", None)
        if scheduler in self._wrapped and not any(p.scheduler is scheduler for p in self.pipes):
            self._unwrap_scheduler(scheduler)

    def uninstall(self) -> None:
        """Undo `install`. Our own interceptions are removed even when a plugin's hook raises
        on the way (the error still propagates), so `disable` always restores the host."""
        if not self.installed:
            return
        with contextlib.ExitStack() as cleanup:  # callbacks run last-in first-out, each even if another raised
            cleanup.callback(self._remove_interceptions)
            for role in (SKETCH, RENDER):
                cleanup.callback(self.hook.srd_restore_model, session=self, role=role, model=self.model(role))
            for pipe in self.pipes:
                cleanup.callback(self.hook.srd_remove_pipeline, session=self, pipe=pipe)
            if self.active_run is not None:
                self.abort_run(self.active_run, None)

    def _remove_interceptions(self) -> None:
        routers = self._routers + [None] * (len(self._routed) - len(self._routers))
        for module, router in zip(self._routed, routers):
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None and router is not None and registry.get_hook(ROUTER_HOOK_NAME) is router:
                registry.remove_hook(ROUTER_HOOK_NAME, recurse=False)
                _drop_leftovers(module, registry)
            attachments.release_hook(module, ROUTER_HOOK_NAME)
        for scheduler in list(self._wrapped):
            self._unwrap_scheduler(scheduler)
        self.installed = False

    def _wrap_scheduler(self, scheduler: Any) -> None:
        if scheduler is None or scheduler in self._wrapped:
            return
        session = self
        original_set_timesteps = scheduler.set_timesteps
        original_step = scheduler.step
        self._step_signature = inspect.signature(original_step)
        scheduler_ref = weakref.ref(scheduler)

        @functools.wraps(original_set_timesteps)
        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            result = original_set_timesteps(*args, **kwargs)
            if session.installed and scheduler_ref() in session._wrapped:
                session.start_run(scheduler_ref())
            return result

        @functools.wraps(original_step)
        def step(*args: Any, **kwargs: Any) -> Any:
            run = session.active_run
            if not session.installed or run is None or run.scheduler is not scheduler_ref():
                return original_step(*args, **kwargs)
            return session.scheduler_step(run, original_step, args, kwargs)

        attachments.attach_attribute(scheduler, "set_timesteps", set_timesteps)
        attachments.attach_attribute(scheduler, "step", step)
        self._wrapped[scheduler] = (set_timesteps, step)
        self.scheduler = scheduler

    def _unwrap_scheduler(self, scheduler: Any) -> None:
        wrappers = self._wrapped.pop(scheduler, None)
        if wrappers is None:
            return
        for name, wrapper in zip(("set_timesteps", "step"), wrappers):
            # someone who wrapped after us keeps theirs; ours is inert once the scheduler is unwrapped
            attachments.detach_attribute(scheduler, name, wrapper)
        if self.scheduler is scheduler:
            self.scheduler = None

    def adopt_replaced_scheduler(self) -> Run | None:
        """The user swapped `pipe.scheduler` after `enable`: wrap the new one and start the run now.

        Only an unambiguous case is adopted: exactly one of the session's pipelines holds a scheduler
        that is not wrapped and has its timesteps set (that pipeline is the one calling).
        """
        if not self.installed:
            return None
        candidates = [
            p.scheduler
            for p in self.pipes
            if getattr(p, "scheduler", None) is not None and p.scheduler not in self._wrapped
        ]
        ready = [
            s
            for s in candidates
            if getattr(s, "timesteps", None) is not None and getattr(s, "num_inference_steps", None) is not None
        ]
        for scheduler in candidates:
            self._wrap_scheduler(scheduler)
        for scheduler in list(self._wrapped):
            if not any(p.scheduler is scheduler for p in self.pipes):
                self._unwrap_scheduler(scheduler)  # replaced everywhere: hand it back plain
        if len(ready) != 1:
            return None
        self.start_run(ready[0])
        return self.active_run

    # -- a run -----------------------------------------------------------------------------
    def start_run(self, scheduler: Any) -> None:
        if self.active_run is not None:
            self.abort_run(self.active_run, None, note="a new call started before this one finished")
        self.scheduler = scheduler
        callers = [p for p in self.pipes if getattr(p, "scheduler", None) is scheduler]
        caller = callers[-1] if callers else self.pipe  # a pipeline sharing a wrapped scheduler
        self._current_pipe = weakref.ref(caller) if caller is not None else None
        timesteps = [float(t) for t in scheduler.timesteps]
        policy = make_policy(self.config)
        if policy.needs_x0:
            problem = self.adapter.scheduler_problem(scheduler)
            if problem:
                raise ValueError(problem)
        first_phase = self._start_policy(policy, timesteps, scheduler)
        trace = RunTrace(
            pipeline=type(caller).__name__ if caller is not None else self.pipeline_name,
            policy=policy.name,
            config=self.config.to_dict(),
            num_steps=len(timesteps),
            timesteps=timesteps,
        )
        # phase = the role of step 0 already, so placement plugins and srd_run_start know whether
        # this call sketches at all (a render-from-step-0 call must not bring the sketcher back)
        run = Run(policy=policy, trace=trace, num_steps=len(timesteps), scheduler=scheduler, phase=first_phase)
        self._start_speed_features(run)
        _LAST_TRACES[self.sketcher] = trace
        self.active_run = run
        try:
            try:
                self._place_renderer(run)
            except RuntimeError as error:  # torch.OutOfMemoryError is one
                self.fall_back(run, f"moving the renderer to the sketcher's device failed ({error})", error)
            self.hook.srd_run_start(session=self, run=run)
            if first_phase == RENDER:
                self._switch(run, 0)
            if run.num_steps == 0:
                self._end_run(run)
        except BaseException as error:  # a plugin's hook, or on_renderer_failure="raise"
            self.abort_run(run, error)
            raise

    def _start_speed_features(self, run: Run) -> None:
        """Guidance-free rendering and the speed target of this call (see guidance.py, speed.py)."""
        config, pipe = self.config, self.pipe
        active = pipe is not None and self.adapter.guidance_active(pipe)
        run.guidance = make_guidance(config.render_guidance, self.adapter.cfg_layout, active, self.sketcher)
        if config.target_speedup is not None:
            run.speed = SpeedTarget(config.target_speedup, run.num_steps, self.measured_step_times)
            run.trace.target_speedup = config.target_speedup

    def _bound_switch_by_target(self, run: Run) -> None:
        """Before the policy decides: the latest switch step the target allows, from the latest step times."""
        latest = run.speed.update(run.trace)
        run.trace.target_switch_step = latest
        run.trace.speed_basis = run.speed.basis
        run.policy.latest_switch = latest if latest is not None else 0

    def _record_predicted_speedup(self, run: Run, switch_step: int) -> None:
        """At the switch (or the end without one): the predicted speedup, and a warning if it misses the target."""
        predicted = run.speed.predicted(switch_step)
        run.trace.predicted_speedup = predicted
        if predicted is not None and predicted < run.speed.target * (1 - 1e-9):
            note = (
                f"target_speedup {run.speed.target:g}x cannot be reached: the best reachable, switching at step "
                f"{switch_step} (as early as min_sketch_steps={self.config.min_sketch_steps} and the step times "
                f"allowed), is predicted at {predicted:.2f}x (from the {BASIS_NAMES[run.speed.basis]}); the run goes "
                "on switching there"
            )
            run.trace.events.append(note)
            warnings.warn(f"srd_plugin: {note}", stacklevel=4)

    def _start_policy(self, policy: SwitchPolicy, timesteps: list[float], scheduler: Any) -> str:
        """Start the policy on the steps the loop runs; the adapter says from which of them an
        adaptive policy may observe and switch (e.g. Wan2.2: from the low-noise expert on)."""
        num_train_timesteps = scheduler.config.get("num_train_timesteps", 1000)
        policy.observe_from = self.adapter.first_observed_step(self.pipe, timesteps, num_train_timesteps)
        return policy.start(timesteps, num_train_timesteps)

    def anchor_run(self, run: Run, timestep: float | None, before_forward: bool = True) -> None:
        """At the run's first model call: if the loop starts inside the schedule (video-to-video
        `strength` slices `timesteps[t_start:]`), size the run to the steps the loop really runs.

        Called before the first forward, so a switch step beyond those steps fails before any
        denoising. The loop's first timestep is looked up in the scheduler's schedule; a value not
        found there (a host that rescales its timesteps) leaves the run as `set_timesteps` sized it.
        A model call without one timestep for the whole batch (LTX's per-token timesteps) leaves it
        to the first scheduler step, which has the step's own timestep; so does a compiled sketcher
        (`before_forward` False). Step 0 has run on the sketcher by then, so a run that should render
        from step 0 renders from step 1 (said in the trace).
        """
        if timestep is None and before_forward:
            return  # the first scheduler step anchors the run
        run.anchored = True
        full = run.trace.timesteps
        if run.step_index != 0 or timestep is None or timestep not in full:
            return
        offset = full.index(timestep)
        if offset == 0:
            return
        timesteps = full[offset:]
        first_phase = self._start_policy(run.policy, timesteps, run.scheduler)
        run.schedule_offset = offset
        run.num_steps = run.trace.num_steps = len(timesteps)
        run.trace.timesteps = timesteps
        run.trace.events.append(
            f"the loop starts at step {offset} of the scheduler's {len(full)}-step schedule (e.g. video-to-video "
            f"strength): this call runs {len(timesteps)} steps"
        )
        if first_phase == RENDER and run.phase != RENDER:
            if before_forward:
                self._switch(run, 0)
            else:
                run.trace.events.append("step 0 had run on the sketcher before the run was sized: rendering from 1")
                self._switch(run, 1)

    def _place_renderer(self, run: Run) -> None:
        """Follow the sketcher when the user moved the pipeline after `enable` (`pipe.to(...)`),
        unless a placement plugin (offloading, prefetch: `srd_place_renderer`) owns the renderer's placement.

        A renderer that another enabled pipeline shares is not pulled away from it (that
        pipeline may be in the middle of a call in another thread): the RuntimeError makes
        this call fall back to the sketcher. A move that fails half-way (out of memory) is
        undone, so the renderer's weights do not keep device memory the sketcher now needs.
        """
        if self.renderer is self.sketcher or not self.config.move_renderer:
            return
        if self.hook.srd_place_renderer(session=self, run=run):
            self.refresh_dtypes()
            return
        device = module_device(self.sketcher)
        home = module_device(self.renderer)
        if device.type != "meta" and home != device:
            others = [
                s for s in other_sessions(self) if s.renderer is self.renderer and module_device(s.sketcher) != device
            ]
            if others:
                raise RuntimeError(
                    f"the renderer is shared with another SRD-enabled {others[0].pipeline_name} on {home}; moving it "
                    f"to {device} would pull it away from that pipeline (give each pipeline its own renderer)"
                )
            try:
                self.renderer.to(device)
            except BaseException:
                self.renderer.to(home)
                raise
        self.refresh_dtypes()

    def scheduler_step(self, run: Run, original_step: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        try:
            bound = self._step_signature.bind(*args, **kwargs)
            if not run.anchored:  # no eager model call anchored the run (a compiled sketcher)
                self.anchor_run(run, self.adapter.loop_timestep((), bound.arguments), before_forward=False)
            x0 = None
            if run.phase == SKETCH and not run.policy_done and run.policy.observes(run.step_index):
                index = run.schedule_offset + run.step_index  # the scheduler's own index of this step
                x0 = self.adapter.predict_x0_from_step(run.scheduler, bound.arguments, index)
            result = original_step(*args, **kwargs)
            self._finish_step(run, x0, bound.arguments["sample"])
            return result
        except BaseException as error:
            self.abort_run(run, error)
            raise

    def _finish_step(self, run: Run, x0: torch.Tensor | None, sample: torch.Tensor) -> None:
        if isinstance(sample, torch.Tensor) and sample.is_cuda:
            torch.cuda.synchronize(sample.device)  # honest per-step wall time
        now = time.perf_counter()
        index = run.step_index
        trace = run.trace
        trace.roles.append(_step_role(run))
        run.step_models.clear()
        trace.step_seconds.append(now - run.last_time)
        run.last_time = now
        decision = None
        if run.phase == SKETCH and not run.policy_done:
            if run.speed is not None:
                self._bound_switch_by_target(run)
            decision = run.policy.after_step(index, x0)
            # distributed runs: every process follows one shared decision (see srd_agree_decision)
            agreed = self.hook.srd_agree_decision(session=self, run=run, step_index=index, decision=decision)
            decision = agreed if agreed is not None else decision
        trace.metrics.append(decision.metric if decision else None)
        trace.distances.append(decision.distance if decision else None)
        self.hook.srd_step_end(session=self, run=run, step_index=index)
        run.step_index += 1
        if decision is not None and decision.switch:
            self._switch(run, run.step_index)
        if run.step_index >= run.num_steps:
            self._end_run(run)

    def _switch(self, run: Run, step_index: int) -> None:
        run.policy_done = True
        if run.fell_back:
            return
        run.phase = RENDER
        run.trace.switch_step = step_index
        if run.speed is not None:
            self._record_predicted_speedup(run, step_index)
        try:
            self.hook.srd_switch(session=self, run=run, step_index=step_index)
        except RuntimeError as error:  # e.g. out of memory while a plugin moves the renderer in
            run.trace.switch_step = None
            self.fall_back(run, f"switching to the renderer failed ({error})", error)

    def _end_run(self, run: Run) -> None:
        run.trace.completed = run.step_index >= run.num_steps
        if run.guidance is not None:
            run.trace.guidance_calls_saved = run.guidance.saved
        if run.speed is not None:
            if run.trace.predicted_speedup is None and run.trace.switch_step is None:
                run.trace.predicted_speedup = run.speed.predicted(run.num_steps)
            run.speed.finish(run.trace)
        if self.active_run is run:
            self.active_run = None
        self.hook.srd_run_end(session=self, run=run)

    def abort_run(self, run: Run, error: BaseException | None, note: str = "") -> None:
        """End a run that cannot go on; the pipeline stays enabled and the next call starts fresh."""
        if self.active_run is not run:
            return
        if error is not None:
            note = f"aborted at step {run.step_index}: {type(error).__name__}: {error}"
        if note:
            run.trace.events.append(note)
        self._end_run(run)

    # -- the render call -----------------------------------------------------------------
    # Kept out of torch.compile: a compiled sketcher (`transformer.compile()`) hands the
    # render phase over here, and the NaN/Inf check needs a host sync that would break the
    # sketcher's graph; the renderer runs eagerly, or in its own compiled region if the user
    # compiled it. The sketch phase stays one graph (the router itself is traced through).
    @torch.compiler.disable
    def render(self, run: Run, args: tuple, kwargs: dict[str, Any], context: Any, router: RouterHook) -> Any:
        """The renderer in place of the module `router` sits on (the sketcher, or another routed module)."""
        call = self._renderer_call(router)
        try:
            output = self._render_once(run, call, args, kwargs, context)
        except Exception as error:
            error.add_note(
                f"srd_plugin: raised by the renderer ({type(self.renderer).__name__}) at step {run.step_index}; "
                "the pipeline stays enabled and the next call starts fresh"
            )
            raise
        if all_finite(output):
            run.step_models.add(RENDER)
            return output
        return self._renderer_failed(run, args, kwargs, router)

    def _render_once(self, run: Run, call: Any, args: tuple, kwargs: dict[str, Any], context: Any) -> Any:
        """The adapter's render call under the host's cache context; with render_guidance="off"
        the call's `GuidanceFreeRender` decides what the renderer computes (guidance.py)."""

        def rendered(call_args: tuple, call_kwargs: dict[str, Any]) -> Any:
            with self._renderer_cache_context(context):
                return self.adapter.render(self, call, call_args, call_kwargs)

        if run.guidance is None:
            return rendered(args, kwargs)
        return run.guidance.render(run.step_index, args, kwargs, context, rendered)

    def _renderer_call(self, router: RouterHook) -> Any:
        """The renderer's forward; a renderer that is itself a routed module (the sketcher, allowed with a
        warning at enable, or Wan2.2's low-noise expert) is called past its router, not back into it."""
        for module, own in zip(self._routed, self._routers):
            if module is self.renderer:
                return own.fn_ref.original_forward
        return self.renderer

    def _renderer_cache_context(self, context: Any) -> Any:
        """Mirror the host's cache context (cond / uncond) onto the renderer's own stateful hooks."""
        renderer = self.renderer
        if context is None or renderer is self.sketcher or not hasattr(renderer, "_diffusers_hook"):
            return contextlib.nullcontext()
        return renderer.cache_context(
            context.name,
            step_index=context.step_index,
            num_inference_steps=context.num_inference_steps,
            timestep=context.timestep,
            sigma=context.sigma,
        )

    def _renderer_failed(self, run: Run, args: tuple, kwargs: dict[str, Any], router: RouterHook) -> Any:
        """The sketcher redoes this call; the reason says what the user needs to know.

        The output is only checked (never the inputs, which would double the cost); the inputs
        are looked at once it failed, so that NaN latents coming from upstream (the sketcher's
        steps, the scheduler) are not blamed on the renderer. A failure in a later CFG call of
        a step whose earlier call the renderer served cannot be undone (the host holds that
        output already): the step is then recorded as "mixed" in the trace.
        """
        reason = f"the renderer returned NaN or Inf at step {run.step_index}"
        if not all_finite((args, kwargs)):
            reason += " from inputs that already held NaN or Inf (the fault is upstream of the renderer)"
        if RENDER in run.step_models:
            reason += (
                "; an earlier call of this step used the renderer's output, so this step mixes both models"
                " (recorded as 'mixed' in the trace)"
            )
        self.fall_back(run, reason)
        run.step_models.add(SKETCH)
        return router.fn_ref.original_forward(*args, **kwargs)

    def fall_back(self, run: Run, reason: str, error: BaseException | None = None) -> None:
        """The renderer cannot be used: the sketcher runs the rest of this call (or raise, if so configured).

        Used for a renderer that returns NaN/Inf and for a renderer that cannot be moved to the
        device (out of memory). The next call tries the renderer again.
        """
        if self.config.on_renderer_failure == "raise":
            self.abort_run(run, None, note=reason)
            raise RendererFailureError(
                f"{reason}; set on_renderer_failure='fallback' to let the sketcher finish the call instead"
            ) from error
        step = run.step_index
        warnings.warn(f"srd_plugin: {reason}; the sketcher takes over from step {step} of this call", stacklevel=3)
        run.phase = SKETCH
        run.fell_back = True
        run.trace.fallback_step = step
        run.trace.events.append(f"{reason}: the sketcher took over from step {step}")
        self.hook.srd_fallback(session=self, run=run, step_index=step)



def _drop_leftovers(module: torch.nn.Module, registry: Any) -> None:
    """After the router's removal, leave the module exactly as SRD found it: with no diffusers hook
    left, an instance `forward` is a stale wrapper of ours (or of a plugin's, removed before the
    router), unless accelerate's offloading hook took `forward` after enable (it owns it then)."""
    if registry.hooks:
        return
    registry_existed, forward_was_attribute = attachments.found_before_hooks(module)
    if not forward_was_attribute and not hasattr(module, "_hf_hook"):
        module.__dict__.pop("forward", None)
    if not registry_existed:
        module.__dict__.pop("_diffusers_hook", None)
