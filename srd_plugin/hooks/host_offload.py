"""The renderer joins the offloading the user enabled on the host pipeline.

diffusers offers three ways to run a pipeline that does not fit the accelerator; the renderer
is not a pipeline component, so none of them reaches it by itself. At the start of every call
this plugin finds the technique on the sketcher and gives the renderer the same one, with the
host's settings:

* model CPU offload (`enable_model_cpu_offload`, accelerate's `cpu_offload_with_hook`): the
  renderer gets its own hook, chained to the sketcher's (`prev_module_hook`), so the renderer's
  first forward sends the sketcher to the CPU and brings the renderer in; at the end of the
  call's denoising (`srd_run_end`, before the VAE runs) the renderer goes back to the CPU.
  diffusers re-creates its hooks after every call (`maybe_free_model_hooks`), so the chaining
  is refreshed at every call's start.
* group offloading (`enable_group_offload` / `apply_group_offloading`): applied to the renderer
  with the settings of the sketcher's group-offloading hook (a disk path gets a `srd_renderer`
  subfolder, so the two models' files cannot collide).
* sequential CPU offload (`enable_sequential_cpu_offload`): accelerate's `cpu_offload` on the
  renderer, with the execution device of the sketcher's hooks.

Either order of calls works (`srd.enable` before or after the host's offload call): what
`enable` can see it checks there, the rest is checked and applied at each call's start, before
any denoising. `disable` takes the renderer's offloading off again, weights back on the CPU.

The router must stay the sketcher's outermost `forward` wrapper; otherwise a render step would
pass through the sketcher's offloading hook and load the sketcher for nothing. Two mechanisms
fight over `forward`, so the router is put back on top at every call's start (and when SRD is
enabled or disabled):

* accelerate's `add_hook_to_module` wraps whatever `forward` is (the router, when offloading
  is enabled after SRD), and its `remove_hook_from_module` (diffusers calls it after every
  call) restores the `forward` *it* once saw, which drops the router when SRD came second.
  The fix moves accelerate's wrapper under the router (`_relink_over_accelerate`).
* diffusers' `HookRegistry.remove_hook` rewires the `forward` of the hook above the removed one,
  which bypasses a hook with its own `new_forward` such as the router: group offloading's
  lazy-prefetch hook removes itself after its first forward, right under the router. The fix
  re-registers the router above every group-offloading hook with a pass-through guard hook
  between them to absorb that rewiring (`_restack_over_group_offloading`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from accelerate import cpu_offload, cpu_offload_with_hook
from accelerate.hooks import AlignDevicesHook, CpuOffload, SequentialHook, UserCpuOffloadHook, remove_hook_from_module
from diffusers.hooks import HookRegistry, ModelHook, apply_group_offloading
from diffusers.hooks.group_offloading import (
    _GROUP_OFFLOADING,
    _LAYER_EXECUTION_TRACKER,
    _LAZY_PREFETCH_GROUP_OFFLOADING,
    _get_top_level_group_offload_hook,
)

from .. import attachments
from ..hookspecs import hookimpl
from ..runtime import ROUTER_HOOK_NAME
from ..switching import RENDER, SKETCH
from . import _registry

if TYPE_CHECKING:  # pragma: no cover - types only
    from ..runtime import Run, Session

STATE_KEY = "host_offload"
GUARD_HOOK_NAME = "srd_router_guard"
GROUP_HOOK_NAMES = (_GROUP_OFFLOADING, _LAZY_PREFETCH_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER)

MODEL = "model CPU offloading"
GROUP = "group offloading"
SEQUENTIAL = "sequential CPU offloading"


@dataclass
class HostOffloadState:
    """Per pipeline: what SRD applied to the renderer, and the top of the sketcher's forward chain."""

    applied: str | None = None  # MODEL, GROUP or SEQUENTIAL once given to the renderer
    renderer_hook: UserCpuOffloadHook | None = None  # model CPU offloading: the renderer's hook
    #: id of each routed module (the sketcher; Wan2.2's second expert too) -> its `forward` as its router set it
    router_forwards: dict[int, Any] = field(default_factory=dict)


def _state(session: Session) -> HostOffloadState:
    return session.plugin_state.setdefault(STATE_KEY, HostOffloadState())


# -- detection ---------------------------------------------------------------------------
def _accelerate_hooks(module: torch.nn.Module) -> list[Any]:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(hook.hooks) if isinstance(hook, SequentialHook) else [hook]


def _model_offload_hook(module: torch.nn.Module) -> CpuOffload | None:
    return next((h for h in _accelerate_hooks(module) if isinstance(h, CpuOffload)), None)


def _sequential_execution_device(module: torch.nn.Module) -> torch.device | None:
    for submodule in module.modules():
        for hook in _accelerate_hooks(submodule):
            if isinstance(hook, AlignDevicesHook) and hook.offload and hook.execution_device is not None:
                return torch.device(hook.execution_device)
    return None


def host_offloading(module: torch.nn.Module) -> str | None:
    """Which of diffusers' offloading techniques manages `module`: MODEL, GROUP, SEQUENTIAL or None."""
    if _get_top_level_group_offload_hook(module) is not None:
        return GROUP
    if _model_offload_hook(module) is not None:
        return MODEL
    if _sequential_execution_device(module) is not None:
        return SEQUENTIAL
    return None


def _problems(session: Session, technique: str) -> list[str]:
    """Settings that cannot work with the host's offloading."""
    problems = []
    if session.config.prefetch_renderer:
        problems.append(
            f"prefetch_renderer=True conflicts with the pipeline's {technique}: that offloading decides when the "
            "renderer is on the accelerator (group offloading with use_stream=True prefetches by itself); set "
            "prefetch_renderer=False or remove the host's offloading"
        )
    if not session.config.move_renderer:
        problems.append(
            f"move_renderer=False forbids moving the renderer, but the pipeline's {technique} has to move it like "
            "every model it runs; set move_renderer=True"
        )
    return problems


def _refuse_problems(session: Session, technique: str) -> None:
    """At a call's start, before any denoising: the host's offloading was enabled after `srd.enable`."""
    problems = _problems(session, technique)
    if problems:
        raise ValueError("srd_plugin cannot run this setup:\n" + "\n".join(f"  - {p}" for p in problems))


# -- plugin hooks --------------------------------------------------------------------------
@hookimpl
def srd_check_setup(session: Session) -> list[str]:
    technique = host_offloading(session.sketcher)
    if technique is None or session.renderer is session.sketcher:
        return []
    return _problems(session, technique)


@hookimpl(tryfirst=True)
def srd_prepare_model(session: Session, role: str, model: torch.nn.Module) -> None:
    if role == SKETCH:  # tryfirst: the routers were the last to set `forward`
        for module in session.routed:
            _state(session).router_forwards[id(module)] = module.__dict__.get("forward")
        keep_router_on_top(session)


@hookimpl
def srd_place_renderer(session: Session, run: Run | None) -> bool | None:
    technique = host_offloading(session.sketcher)
    if technique is None:
        if run is not None:
            _take_off_renderer(session)  # the user removed the host's offloading since the last call
        return None
    if run is not None:  # at enable nothing moves: the previous session may still own the renderer
        _refuse_problems(session, technique)
        _join(session, technique)
    return True


@hookimpl(tryfirst=True)
def srd_run_start(session: Session, run: Run) -> None:
    keep_router_on_top(session)
    technique = host_offloading(session.sketcher)
    if technique is not None and session.renderer is not session.sketcher:
        _refuse_problems(session, technique)  # (placement is skipped with move_renderer=False)


@hookimpl
def srd_switch(session: Session, run: Run, step_index: int) -> None:
    """Model CPU offloading: do what the renderer's hook would do at its first forward (release the
    sketcher, load the renderer), here, where a failure (out of memory) makes the sketcher finish the call."""
    state = _state(session)
    if state.applied != MODEL:
        return
    hook = state.renderer_hook.hook
    run.plugin_state[STATE_KEY] = True  # set first: a move that fails halfway is undone by `_release_renderer`
    hook.prev_module_hook.offload()
    session.renderer.to(hook.execution_device)


@hookimpl
def srd_fallback(session: Session, run: Run, step_index: int) -> None:
    _release_renderer(session, run)  # the sketcher's own hook brings the sketcher back at its next forward


@hookimpl
def srd_run_end(session: Session, run: Run) -> None:
    _release_renderer(session, run)  # before the VAE decode, which diffusers chains to the sketcher only


@hookimpl
def srd_restore_model(session: Session, role: str, model: torch.nn.Module) -> None:
    if role == RENDER:
        _take_off_renderer(session)
    else:
        keep_router_on_top(session)
        _remove_guard(session)


# -- the renderer --------------------------------------------------------------------------
def _join(session: Session, technique: str) -> None:
    """Give the renderer the sketcher's offloading (once), and refresh what changes per call."""
    state = _state(session)
    sketcher, renderer = session.sketcher, session.renderer
    if state.applied not in (None, technique):
        _take_off_renderer(session)
    if state.applied is None:
        own = host_offloading(renderer)
        if own is not None:
            raise ValueError(
                f"the renderer already has its own {own}; SRD gives it the pipeline's {technique} itself. Remove the "
                "renderer's hooks (accelerate.hooks.remove_hook_from_module(renderer, recurse=True), or the group "
                "offloading hooks) before the call"
            )
        if technique == MODEL:
            _, state.renderer_hook = cpu_offload_with_hook(renderer, _model_offload_hook(sketcher).execution_device)
        elif technique == GROUP:
            _apply_group_offloading_like(renderer, _get_top_level_group_offload_hook(sketcher).config)
        else:
            device = _sequential_execution_device(sketcher)
            cpu_offload(renderer, device, offload_buffers=len(renderer._parameters) > 0)
        state.applied = technique
    if technique == MODEL:  # diffusers made new hooks for the sketcher at the end of the last call
        sketcher_hook = _model_offload_hook(sketcher)
        state.renderer_hook.hook.execution_device = sketcher_hook.execution_device
        state.renderer_hook.hook.prev_module_hook = UserCpuOffloadHook(sketcher, sketcher_hook)


def _apply_group_offloading_like(renderer: torch.nn.Module, config: Any) -> None:
    disk = config.offload_to_disk_path
    apply_group_offloading(
        renderer,
        onload_device=config.onload_device,
        offload_device=config.offload_device,
        offload_type=config.offload_type,
        num_blocks_per_group=config.num_blocks_per_group,
        non_blocking=config.non_blocking,
        use_stream=config.stream is not None,
        record_stream=config.record_stream,
        low_cpu_mem_usage=config.low_cpu_mem_usage,
        offload_to_disk_path=os.path.join(disk, "srd_renderer") if disk else None,
        block_modules=config.block_modules,
        exclude_kwargs=config.exclude_kwargs,
    )


def _release_renderer(session: Session, run: Run) -> None:
    """Model CPU offloading: back to the CPU if the switch brought the renderer in (even halfway)."""
    if run.plugin_state.pop(STATE_KEY, False):
        _state(session).renderer_hook.offload()


def _take_off_renderer(session: Session) -> None:
    """Remove the offloading SRD gave the renderer; its weights end up on the CPU, usable as before."""
    state = _state(session)
    renderer = session.renderer
    if state.applied in (MODEL, SEQUENTIAL):
        # accelerate's AlignDevicesHook.detach_hook puts offloaded weights back on their original device
        remove_hook_from_module(renderer, recurse=True)
    elif state.applied == GROUP:
        _remove_group_offloading(renderer)
    state.applied, state.renderer_hook = None, None


def _remove_group_offloading(module: torch.nn.Module) -> None:
    groups = {}
    for submodule in module.modules():
        registry = getattr(submodule, "_diffusers_hook", None)
        hook = registry.get_hook(_GROUP_OFFLOADING) if registry is not None else None
        if hook is not None:
            groups[id(hook.group)] = hook.group
    for group in groups.values():
        if group.offload_to_disk_path and getattr(group, "_is_offloaded_to_disk", False):
            _load_group_from_disk(group)
    registry = HookRegistry.check_if_exists_or_initialize(module)
    for name in (_LAZY_PREFETCH_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _GROUP_OFFLOADING):
        registry.remove_hook(name, recurse=True)


def _load_group_from_disk(group: Any) -> None:
    """Disk offloading keeps only empty tensors in memory: read the group's file back into them."""
    import safetensors.torch

    tensors = safetensors.torch.load_file(group.safetensors_file_path, device=str(group.offload_device))
    for tensor, key in group.tensor_to_key.items():
        tensor.data = tensors[key]


# -- the router on top of the sketcher's forward chain ------------------------------------------
class _RouterGuard(ModelHook):
    """Pass-through hook under the router: absorbs the rewiring of `HookRegistry.remove_hook`."""


def keep_router_on_top(session: Session) -> None:
    """Make each router the outermost forward of its module again (see the module docstring): the
    sketcher's, and that of every other routed module (Wan2.2's second expert), which accelerate's
    per-call hooks rewire the same way."""
    for module in session.routed:
        _keep_on_top(session, module)


def _keep_on_top(session: Session, module: torch.nn.Module) -> None:
    registry = getattr(module, "_diffusers_hook", None)
    router = registry.get_hook(ROUTER_HOOK_NAME) if registry is not None else None
    if router is None:
        return
    names = list(registry.hooks)
    if any(name in GROUP_HOOK_NAMES for name in names):
        _restack_over_group_offloading(session, module, registry, router)
    elif names[-1] != ROUTER_HOOK_NAME:
        # a diffusers hook registered after `enable` (FasterCache's denoiser hook, say) wraps the router:
        # it would act on the render steps too, so the router goes back on top, the chain relinked
        _registry.move_hook_to_top(registry, ROUTER_HOOK_NAME)
        _state(session).router_forwards[id(module)] = module.__dict__["forward"]
    elif names[-1] == ROUTER_HOOK_NAME and hasattr(module, "_hf_hook"):
        # no later diffusers hook wraps the router, but accelerate's offloading hook took `forward`;
        # any other owner of `forward` (cache-dit, say) is left alone for its own checks to report
        _relink_over_accelerate(session, module, router)


def _restack_over_group_offloading(
    session: Session, module: torch.nn.Module, registry: HookRegistry, router: ModelHook
) -> None:
    names = list(registry.hooks)
    index = names.index(ROUTER_HOOK_NAME)
    guarded = index > 0 and names[index - 1] == GUARD_HOOK_NAME
    if guarded and not any(name in GROUP_HOOK_NAMES for name in names[index + 1 :]):
        return
    registry.remove_hook(ROUTER_HOOK_NAME, recurse=False)
    if GUARD_HOOK_NAME in registry.hooks:
        registry.remove_hook(GUARD_HOOK_NAME, recurse=False)
    attachments.claim_hook(module, GUARD_HOOK_NAME)  # copies of the module leave it behind
    registry.register_hook(_RouterGuard(), GUARD_HOOK_NAME)
    registry.register_hook(router, ROUTER_HOOK_NAME)
    _state(session).router_forwards[id(module)] = module.__dict__["forward"]


def _relink_over_accelerate(session: Session, module: torch.nn.Module, router: ModelHook) -> None:
    top = _state(session).router_forwards.get(id(module))
    current = module.__dict__.get("forward")
    if top is None or current is top:
        return
    if getattr(module, "_old_forward", None) is top:
        # accelerate wrapped the router: its wrapper now calls what the router used to call
        module._old_forward = router.fn_ref.original_forward
    # else accelerate restored a forward it saw before the router: that (re-wrapped) forward goes under the router
    router.fn_ref.original_forward = current if current is not None else module.forward
    module.forward = top


def _remove_guard(session: Session) -> None:
    """Leave each registry as the core installed it (router directly on top), so `disable` removes it cleanly."""
    for module in session.routed:
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None or GUARD_HOOK_NAME not in registry.hooks:
            continue
        router = registry.get_hook(ROUTER_HOOK_NAME)
        registry.remove_hook(ROUTER_HOOK_NAME, recurse=False)  # on top: `forward` becomes the guard's wrapper
        registry.remove_hook(GUARD_HOOK_NAME, recurse=False)  # now on top: `forward` becomes what it wrapped
        attachments.release_hook(module, GUARD_HOOK_NAME)
        registry.register_hook(router, ROUTER_HOOK_NAME)
