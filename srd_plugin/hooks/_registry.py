"""Register and remove named diffusers hooks so that removal leaves a module as it was found.

`HookRegistry.remove_hook` restores the forward chain but leaves two traces behind: an
empty `_diffusers_hook` registry and a `forward` instance attribute holding the bound
class method. Both are harmless, but "removed" should mean "as if never applied", so the
hooks of `srd_plugin.hooks` remember what the module looked like and clean up after
themselves when they were the last ones there.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .. import attachments

_RESTORE_ATTRIBUTE = "_srd_found_module_as"


def register(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    """Register `hook` under `name` on `module`, remembering whether a registry and a forward attribute existed."""
    found = (hasattr(module, "_diffusers_hook"), "forward" in module.__dict__)
    setattr(hook, _RESTORE_ATTRIBUTE, found)
    attachments.claim_hook(module, name)  # copies of the module leave the hook behind
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)


def unregister(module: torch.nn.Module, name: str) -> bool:
    """Remove the hook `name` from `module` (not its children); False if it was not there."""
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or name not in registry.hooks:
        return False
    registry_existed, forward_was_attribute = getattr(registry.hooks[name], _RESTORE_ATTRIBUTE, (True, True))
    registry.remove_hook(name, recurse=False)
    attachments.release_hook(module, name)
    if not registry.hooks and not registry_existed:
        del module._diffusers_hook
        if not forward_was_attribute:
            module.__dict__.pop("forward", None)
    return True


def ensure_root_registry(module: torch.nn.Module) -> bool:
    """Give `module` a hook registry so that `module.cache_context(...)` reaches hooks on its children.

    Returns True if the registry was created here (remove it with `drop_root_registry_if_empty`).
    """
    created = not hasattr(module, "_diffusers_hook")
    HookRegistry.check_if_exists_or_initialize(module).invalidate_child_registries_cache()
    return created


def drop_root_registry_if_empty(module: torch.nn.Module, created: bool) -> None:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None:
        return
    registry.invalidate_child_registries_cache()
    if created and not registry.hooks:
        del module._diffusers_hook


def move_hook_to_top(registry: HookRegistry, name: str) -> None:
    """Make hook `name` the outermost of `registry`'s module, keeping the others' order and state.

    `HookRegistry.remove_hook` cannot do this: removing a hook below one that has its own
    `new_forward` (FasterCache's denoiser hook) overwrites that hook's forward with the plain
    one, which silently switches the hook off. Here the chain is relinked instead: each hook
    records what it calls next (`original_forward` for a `new_forward` hook, else `forward`), and
    the function registration built for it is what the hook above it calls.
    """
    order = list(registry._hook_order)
    index = order.index(name)
    if index == len(order) - 1:
        return
    refs = list(registry._fn_refs)
    module = registry._module_ref
    # what each hook's registration put on the module: the next hook's "previous", or the top's forward
    built = [_previous(ref) for ref in refs[1:]] + [module.forward]
    base = _previous(refs[0])
    new_order = [i for i in range(len(order)) if i != index] + [index]
    for position, i in enumerate(new_order):
        _set_previous(refs[i], base if position == 0 else built[new_order[position - 1]])
    module.forward = built[index]
    registry._hook_order = [order[i] for i in new_order]
    registry._fn_refs = [refs[i] for i in new_order]
    registry.hooks = {order[i]: registry.hooks[order[i]] for i in new_order}


def _previous(ref: Any) -> Any:
    return ref.original_forward if ref.original_forward is not None else ref.forward


def _set_previous(ref: Any, forward: Any) -> None:
    if ref.original_forward is not None:
        ref.original_forward = forward
    else:
        ref.forward = forward
