"""Context parallelism (diffusers' `enable_parallelism`) for the sketcher and the renderer alike.

diffusers splits a transformer's token sequence across processes with hooks taken from
the class's `_cp_plan`, and swaps its attention for Ulysses (an all-to-all that gives each
process a share of the heads) or ring attention (key/value blocks passed around). Every
process of the group receives the same full inputs from the host pipeline and gets the
full prediction back. SRD keeps that contract when the renderer takes over by splitting
the renderer exactly like the sketcher: same degrees, same device mesh, same processes.

The constraint to check up front: Ulysses hands each process `heads / ulysses_degree`
heads, so the degree must divide the head count of *both* models (Wan2.1 14B/1.3B: 40 and
12 heads -> 1, 2, 4; CogVideoX 5B/2B: 48 and 30 -> 1, 2, 3, 6). Ring attention has no
such constraint.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterable
from typing import Any

import torch
from diffusers import ContextParallelConfig

from ..config import PARALLEL_CONFIG_FIELDS, describe_parallel_config


def context_parallel_config(model: torch.nn.Module) -> ContextParallelConfig | None:
    """The context-parallel config diffusers recorded on `model` (None if it runs whole)."""
    parallel = getattr(model, "_parallel_config", None)
    return getattr(parallel, "context_parallel_config", None)


def tensor_parallel_config(model: torch.nn.Module) -> Any:
    parallel = getattr(model, "_parallel_config", None)
    return getattr(parallel, "tensor_parallel_config", None)


def config_text(ulysses_degree: int, ring_degree: int) -> str:
    """How a user writes these degrees: `ContextParallelConfig(ulysses_degree=2, ring_degree=2)`."""
    parts = [f"ulysses_degree={ulysses_degree}"] if ulysses_degree > 1 else []
    parts += [f"ring_degree={ring_degree}"] if ring_degree > 1 else []
    return f"ContextParallelConfig({', '.join(parts)})"


def same_degrees(a: ContextParallelConfig, b: ContextParallelConfig) -> bool:
    return describe_parallel_config(a) == describe_parallel_config(b)


def copy_config(config: ContextParallelConfig, mesh: Any = None) -> ContextParallelConfig:
    """A fresh, not yet set-up config with the same settings (on `mesh` if given, else the config's own).

    diffusers' `setup` writes the mesh and ranks into the config it is given; a copy keeps
    the user's object (and the frozen SRDConfig holding it) unchanged, and lets the renderer
    share the sketcher's mesh instead of building a second one.
    """
    settings = {name: getattr(config, name) for name in PARALLEL_CONFIG_FIELDS}
    return ContextParallelConfig(**settings, mesh=mesh if mesh is not None else config.mesh)


def process_group(config: ContextParallelConfig) -> Any:
    """The process group of every rank that runs one generation together (ring x ulysses)."""
    return config._flattened_mesh.get_group()


def num_heads(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    return heads if isinstance(heads, int) else None


# -- the head-count rule -----------------------------------------------------------------
def fitting_ulysses_degrees(head_counts: Iterable[int]) -> list[int]:
    """Ulysses degrees that divide every head count: the divisors of their greatest common divisor."""
    common = math.gcd(*head_counts)
    return [d for d in range(1, common + 1) if common % d == 0]


def degree_problems(config: ContextParallelConfig, heads: dict[str, int]) -> list[str]:
    """Why `config` cannot split every model in `heads` (role -> head count), with degrees that would.

    The alternatives keep the same number of processes (ulysses_degree x ring_degree):
    a smaller Ulysses degree that fits both models, the rest as ring attention.
    """
    ulysses, ring = config.ulysses_degree, config.ring_degree
    if ulysses == 1 or config.ulysses_anything:
        return []
    misfits = [f"the {role}'s {count}" for role, count in heads.items() if count % ulysses]
    if not misfits:
        return []
    fitting = fitting_ulysses_degrees(heads.values())
    processes = ulysses * ring
    alternatives = [config_text(u, processes // u) for u in reversed(fitting) if processes % u == 0]
    counts = ", ".join(f"{role} {count}" for role, count in heads.items())
    return [
        f"context parallelism: ulysses_degree={ulysses} does not divide {' and '.join(misfits)} attention heads "
        f"({counts}); Ulysses degrees that fit both models: {', '.join(map(str, fitting))}. For the same "
        f"{processes} processes use {' or '.join(alternatives)} (ring attention has no head-count constraint)"
    ]


def setup_problems(model: torch.nn.Module, role: str, config: ContextParallelConfig) -> list[str]:
    """What keeps diffusers from running this model split by `config` (checked before any change)."""
    name = type(model).__name__
    problems = []
    if getattr(model, "_cp_plan", None) is None:
        problems.append(
            f"context parallelism: the {role} ({name}) has no context-parallel plan (`_cp_plan`) in diffusers, "
            "so it cannot be split across processes"
        )
    backend = _attention_backend(model)
    if backend is not None and not _backend_supports_context_parallel(backend):
        problems.append(
            f"context parallelism: the {role} ({name}) uses the attention backend {backend!r}, which diffusers cannot "
            f"run context-parallel; call {role}.set_attention_backend('native') (or another backend that supports it)"
        )
    if backend == "native" and config.ring_degree > 1:
        problems.append(
            f"context parallelism: ring attention (ring_degree={config.ring_degree}) needs the log-sum-exp of each "
            f"attention block, which the {role}'s 'native' attention backend does not return; call "
            f"{role}.set_attention_backend('_native_cudnn') (or '_native_flash', 'flash') first"
        )
    return problems


def _attention_backend(model: torch.nn.Module) -> str | None:
    """The attention backend of the model's first attention processor (what diffusers itself checks)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            backend = processor._attention_backend
            if backend is None:
                backend, _ = _AttentionBackendRegistry.get_active_backend()
            return getattr(backend, "value", backend)
    return None


def _backend_supports_context_parallel(backend: str) -> bool:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    return backend in _AttentionBackendRegistry._supports_context_parallel


# -- apply / remove ----------------------------------------------------------------------
def apply_context_parallel(model: torch.nn.Module, config: ContextParallelConfig) -> None:
    """Split `model` with diffusers' own `enable_parallelism` (its `_cp_plan`, its hooks)."""
    model.enable_parallelism(config=config)


def remove_context_parallel(model: torch.nn.Module) -> None:
    """Undo `apply_context_parallel`: the hooks, the processors' config, the model's config.

    diffusers has no `disable_parallelism`; this removes what `enable_parallelism` added
    for context parallelism, including the hook registries and instance `forward`s it left
    on submodules, so the model is what it was before.
    """
    from diffusers.hooks.context_parallel import remove_context_parallel as remove_hooks

    remove_hooks(model, model._cp_plan)
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and "_parallel_config" in vars(processor):
            del processor._parallel_config  # back to the class default (None)
    model.__dict__.pop("_parallel_config", None)
    for module in model.modules():
        _drop_empty_registry(module)


def _drop_empty_registry(module: torch.nn.Module) -> None:
    registry = module.__dict__.get("_diffusers_hook")
    if registry is None or registry.hooks:
        return
    forward = module.__dict__.get("forward")
    if forward is not None and forward != types.MethodType(type(module).forward, module):
        return  # someone else's forward: leave the module as it is
    module.__dict__.pop("forward", None)
    del module._diffusers_hook
