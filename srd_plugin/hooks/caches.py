"""Composition with the caches users already put on their models: diffusers' `enable_cache` and cache-dit.

diffusers' caches (FirstBlockCache, MagCache, TaylorSeer, FasterCache, PAB, ...) are
stateful hooks keyed by `cache_context`. A diffusers pipeline resets them at the END of a
call (`maybe_free_model_hooks`), and only on its own components: the renderer is not one,
and a call that raised skips the reset. So SRD resets every stateful hook of both models
at the START of each call; the router's own hook is stateful only to receive the cache
context and its reset does nothing. The router already mirrors the host's cache context
(cond / uncond) onto the renderer, so a cache on the renderer keeps one state per branch.

cache-dit (`cache_dit.enable_cache(pipe)`) replaces `pipe.transformer.forward` with its own
wrapper around whatever forward it finds, and restores it on `disable_cache`. Enabled
BEFORE `srd.enable` it works: SRD's router sits outside it, the sketch steps run cache-dit's
cached blocks, the render steps bypass it (cache-dit does not know the renderer). Enabled
AFTER `srd.enable`, cache-dit wraps SRD's router, and neither side can be removed cleanly
(cache-dit's `disable_cache` fails on the router's forward; `srd.disable` drops cache-dit's
wrapper). Removing cache-dit while SRD is enabled drops SRD's router from the call path.
Both wrong orders are detected at the next call and refused with the way back.
"""

from __future__ import annotations

from typing import Any

import torch

from ..hookspecs import hookimpl

PLUGIN_STATE_KEY = "cache_dit_at_enable"


class CacheOrderError(RuntimeError):
    """cache-dit and SRD were enabled or disabled in an order that cannot work; the message says how to recover."""


def reset_caches(model: torch.nn.Module) -> None:
    """Reset every stateful diffusers hook on `model` and its children (what diffusers' pipelines do at the end)."""
    for module in model.modules():  # without creating registries where there are none
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            registry.reset_stateful_hooks(recurse=False)


def uses_cache_dit(model: torch.nn.Module) -> bool:
    """True while cache-dit's wrapper is on this transformer (cache-dit marks it with `_is_cached`)."""
    return bool(getattr(model, "_is_cached", False))


@hookimpl
def srd_prepare_model(session: Any, role: str, model: torch.nn.Module) -> None:
    if model is session.sketcher:
        session.plugin_state[PLUGIN_STATE_KEY] = uses_cache_dit(model)


@hookimpl
def srd_run_start(session: Any, run: Any) -> None:
    _check_cache_dit(session)
    reset_caches(session.sketcher)
    if session.renderer is not session.sketcher:
        reset_caches(session.renderer)


def _check_cache_dit(session: Any) -> None:
    before = session.plugin_state.get(PLUGIN_STATE_KEY, False)
    now = uses_cache_dit(session.sketcher)
    if now and not before:
        raise CacheOrderError(
            "cache-dit's enable_cache(pipe) was called after srd.enable(pipe): cache-dit now wraps SRD's router, and "
            "neither can be removed cleanly afterwards. Enable cache-dit first, then SRD. To get back: "
            "srd.disable(pipe); pipe.transformer._original_forward = pipe.transformer.forward; "
            "cache_dit.disable_cache(pipe)"
        )
    if before and not now:
        raise CacheOrderError(
            "cache_dit.disable_cache(pipe) was called while SRD was enabled: it put back the transformer's own forward "
            "and so dropped SRD's router. Disable SRD before cache-dit. To get back: srd.disable(pipe); "
            "del pipe.transformer.forward; then srd.enable(pipe, ...) again if you want SRD"
        )
