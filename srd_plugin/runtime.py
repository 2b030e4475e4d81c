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

from .adapters.base import Adapter, all_finite, module_device, module_dtype
from .config import SRDConfig
from .errors import RendererFailureError
from .switching import RENDER, SKETCH, SwitchPolicy, make_policy
from .trace import RunTrace

ROUTER_HOOK_NAME = "srd_router"

_SESSIONS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()
_LAST_TRACES: weakref.WeakKeyDictionary[Any, RunTrace] = weakref.WeakKeyDictionary()


def session_of(pipe: Any) -> Session | None:
    """The active SRD session of a pipeline, or None."""
    return _SESSIONS.get(pipe)


def last_trace_of(pipe: Any) -> RunTrace | None:
    return _LAST_TRACES.get(pipe)


@dataclass
class Run:
    """State of one pipeline call; created fresh by `set_timesteps`."""

    policy: SwitchPolicy
    trace: RunTrace
    num_steps: int
    phase: str = SKETCH
    step_index: int = 0
    policy_done: bool = False
    fell_back: bool = False
    last_time: float = field(default_factory=time.perf_counter)
    plugin_state: dict[str, Any] = field(default_factory=dict)


def _is_class_forward(module: torch.nn.Module) -> bool:
    """True when the instance attribute `forward` (if any) is the class's own method, bound to `module`."""
    forward = module.__dict__.get("forward")
    return forward is None or (
        getattr(forward, "__func__", None) is type(module).forward and getattr(forward, "__self__", None) is module
    )


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
            if run.phase == RENDER:
                return session.render(run, args, kwargs, self.context._context)
            return self.fn_ref.original_forward(*args, **kwargs)
        except BaseException as error:
            session.abort_run(run, error)
            raise

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module


class Session:
    """SRD on one pipeline: the models, the plugins, the installed interceptions."""

    def __init__(
        self,
        pipe: Any,
        adapter: Adapter,
        sketcher: torch.nn.Module,
        renderer: torch.nn.Module,
        config: SRDConfig,
        plugin_manager: pluggy.PluginManager,
    ) -> None:
        self._pipe_ref = weakref.ref(pipe)
        self.pipeline_name = type(pipe).__name__
        self.adapter = adapter
        self.sketcher = sketcher
        self.renderer = renderer
        self.config = config
        self.hook = plugin_manager.hook
        self.plugin_state: dict[str, Any] = {}
        self.active_run: Run | None = None
        self.scheduler: Any = None
        self.installed = False
        self._router: RouterHook | None = None
        self._registry_existed = False
        self._saved_scheduler_attrs: dict[str, Any] = {}
        self._step_signature: inspect.Signature | None = None
        self.refresh_dtypes()

    # -- properties ----------------------------------------------------------------------
    @property
    def pipe(self) -> Any:
        return self._pipe_ref()

    def model(self, role: str) -> torch.nn.Module:
        return self.sketcher if role == SKETCH else self.renderer

    def refresh_dtypes(self) -> None:
        self.sketcher_dtype = module_dtype(self.sketcher)
        self.renderer_dtype = module_dtype(self.renderer)

    # -- install / uninstall ---------------------------------------------------------------
    def install(self) -> None:
        self.adapter.prepare_session(self)
        self._registry_existed = hasattr(self.sketcher, "_diffusers_hook")
        self._forward_was_instance_attr = "forward" in self.sketcher.__dict__
        registry = HookRegistry.check_if_exists_or_initialize(self.sketcher)
        self._router = RouterHook(self)
        registry.register_hook(self._router, ROUTER_HOOK_NAME)
        self._wrap_scheduler(self.pipe.scheduler)
        self.installed = True
        for role in (SKETCH, RENDER):
            self.hook.srd_prepare_model(session=self, role=role, model=self.model(role))

    def uninstall(self) -> None:
        if not self.installed:
            return
        if self.active_run is not None:
            self.abort_run(self.active_run, None)
        for role in (RENDER, SKETCH):
            self.hook.srd_restore_model(session=self, role=role, model=self.model(role))
        registry = HookRegistry.check_if_exists_or_initialize(self.sketcher)
        registry.remove_hook(ROUTER_HOOK_NAME, recurse=False)
        if not registry.hooks:
            # leave the module exactly as we found it; a forward that is no longer the class's own
            # (accelerate's offloading hook, added after enable) now belongs to its owner
            if not self._forward_was_instance_attr and _is_class_forward(self.sketcher):
                self.sketcher.__dict__.pop("forward", None)
            if not self._registry_existed:
                del self.sketcher._diffusers_hook
        self._unwrap_scheduler()
        self.installed = False

    def _wrap_scheduler(self, scheduler: Any) -> None:
        session = self
        original_set_timesteps = scheduler.set_timesteps
        original_step = scheduler.step
        self._saved_scheduler_attrs = {
            name: scheduler.__dict__[name] for name in ("set_timesteps", "step") if name in scheduler.__dict__
        }
        self._step_signature = inspect.signature(original_step)

        @functools.wraps(original_set_timesteps)
        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            result = original_set_timesteps(*args, **kwargs)
            if session.installed and session.scheduler is scheduler:
                session.start_run(scheduler)
            return result

        @functools.wraps(original_step)
        def step(*args: Any, **kwargs: Any) -> Any:
            run = session.active_run
            if not session.installed or session.scheduler is not scheduler or run is None:
                return original_step(*args, **kwargs)
            return session.scheduler_step(run, original_step, args, kwargs)

        scheduler.set_timesteps = set_timesteps
        scheduler.step = step
        self._wrappers = (set_timesteps, step)
        self.scheduler = scheduler

    def _unwrap_scheduler(self) -> None:
        scheduler = self.scheduler
        if scheduler is None:
            return
        for name, wrapper in zip(("set_timesteps", "step"), self._wrappers):
            if scheduler.__dict__.get(name) is wrapper:
                if name in self._saved_scheduler_attrs:
                    setattr(scheduler, name, self._saved_scheduler_attrs[name])
                else:
                    del scheduler.__dict__[name]
            # else: someone wrapped after us; our wrapper is inert once `scheduler` is cleared
        self.scheduler = None

    def adopt_replaced_scheduler(self) -> Run | None:
        """The user swapped `pipe.scheduler` after `enable`: wrap the new one and start the run now."""
        pipe = self.pipe
        current = getattr(pipe, "scheduler", None) if pipe is not None else None
        if current is None or current is self.scheduler or not self.installed:
            return None
        self._unwrap_scheduler()
        self._wrap_scheduler(current)
        if getattr(current, "timesteps", None) is None or getattr(current, "num_inference_steps", None) is None:
            return None
        self.start_run(current)
        return self.active_run

    # -- a run -----------------------------------------------------------------------------
    def start_run(self, scheduler: Any) -> None:
        if self.active_run is not None:
            self.abort_run(self.active_run, None, note="a new call started before this one finished")
        timesteps = [float(t) for t in scheduler.timesteps]
        policy = make_policy(self.config)
        if policy.needs_x0:
            problem = self.adapter.scheduler_problem(scheduler)
            if problem:
                raise ValueError(problem)
        first_phase = policy.start(timesteps, scheduler.config.get("num_train_timesteps", 1000))
        trace = RunTrace(
            pipeline=self.pipeline_name,
            policy=policy.name,
            config=self.config.to_dict(),
            num_steps=len(timesteps),
            timesteps=timesteps,
        )
        # phase = the role of step 0 already, so placement plugins and srd_run_start know whether
        # this call sketches at all (a render-from-step-0 call must not bring the sketcher back)
        run = Run(policy=policy, trace=trace, num_steps=len(timesteps), phase=first_phase)
        pipe = self.pipe
        if pipe is not None:
            _LAST_TRACES[pipe] = trace
        self.active_run = run
        try:
            self._place_renderer(run)
        except RuntimeError as error:  # torch.OutOfMemoryError is one
            self.fall_back(run, f"moving the renderer to the sketcher's device failed ({error})", error)
        self.hook.srd_run_start(session=self, run=run)
        if first_phase == RENDER:
            self._switch(run, 0)
        if run.num_steps == 0:
            self._end_run(run)

    def _place_renderer(self, run: Run) -> None:
        """Follow the sketcher when the user moved the pipeline after `enable` (`pipe.to(...)`),
        unless a placement plugin (offloading, prefetch) owns the renderer's placement."""
        if self.renderer is self.sketcher or not self.config.move_renderer:
            return
        if self.hook.srd_place_renderer(session=self, run=run):
            self.refresh_dtypes()
            return
        device = module_device(self.sketcher)
        if device.type != "meta" and module_device(self.renderer) != device:
            self.renderer.to(device)
        self.refresh_dtypes()

    def scheduler_step(self, run: Run, original_step: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        try:
            bound = self._step_signature.bind(*args, **kwargs)
            x0 = None
            if run.phase == SKETCH and not run.policy_done and run.policy.needs_x0:
                x0 = self.adapter.predict_x0(
                    self.scheduler,
                    bound.arguments["model_output"],
                    bound.arguments.get("timestep"),
                    bound.arguments["sample"],
                    run.step_index,
                )
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
        trace.roles.append(run.phase)
        trace.step_seconds.append(now - run.last_time)
        run.last_time = now
        decision = None
        if run.phase == SKETCH and not run.policy_done:
            decision = run.policy.after_step(index, x0)
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
        try:
            self.hook.srd_switch(session=self, run=run, step_index=step_index)
        except RuntimeError as error:  # e.g. out of memory while a plugin moves the renderer in
            run.trace.switch_step = None
            self.fall_back(run, f"switching to the renderer failed ({error})", error)

    def _end_run(self, run: Run) -> None:
        run.trace.completed = run.step_index >= run.num_steps
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
    def render(self, run: Run, args: tuple, kwargs: dict[str, Any], context: Any) -> Any:
        call = self._renderer_call()
        try:
            with self._renderer_cache_context(context):
                output = self.adapter.render(self, call, args, kwargs)
        except Exception as error:
            error.add_note(
                f"srd_plugin: raised by the renderer ({type(self.renderer).__name__}) at step {run.step_index}; "
                "the pipeline stays enabled and the next call starts fresh"
            )
            raise
        if all_finite(output):
            return output
        return self._renderer_failed(run, args, kwargs)

    def _renderer_call(self) -> Any:
        if self.renderer is self.sketcher:  # allowed (with a warning at enable): skip our own router
            return self._router.fn_ref.original_forward
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

    def _renderer_failed(self, run: Run, args: tuple, kwargs: dict[str, Any]) -> Any:
        self.fall_back(run, f"the renderer returned NaN or Inf at step {run.step_index}")
        return self._router.fn_ref.original_forward(*args, **kwargs)

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
