"""Register and remove named diffusers hooks so that removal leaves a module as it was found.

`HookRegistry.remove_hook` restores the forward chain but leaves two traces behind: an
empty `_diffusers_hook` registry and a `forward` instance attribute holding the bound
class method. Both are harmless, but "removed" should mean "as if never applied", so the
hooks of `srd_plugin.hooks` remember what the module looked like and clean up after
themselves when they were the last ones there.
"""

from __future__ import annotations

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
