"""The pipelines the diffusers-client suite (`test_diffusers_clients.py`) runs every behaviour on.

A supported pipeline family joins the suite by adding one `CompatCase` to `CASES`: how to build a
fresh plain pipeline (the same weights every time), a renderer with *other* weights that can take
the sketcher's place, and the call arguments. Everything else the suite derives from these.

Two renderer modes are run for each case:

* ``"same"``: a separate module with the sketcher's weights (a deep copy taken before `enable`),
  so the router really routes to another module, yet the output must equal the plain pipeline's;
* ``"other"``: the case's different renderer; the output differs from the plain pipeline's, and
  must equal the universal oracle: the plain pipeline whose `callback_on_step_end` puts the
  renderer in `pipe.transformer` after step k-1.

The different renderer must therefore be a plain swap for its pipeline (no latent alignment, and
for CogVideoX a renderer with rotary embeddings, since the pipeline computes the rotary tables once
from the first transformer's config): the swap oracle cannot express an alignment.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDIMScheduler

from srd_plugin.testing import (
    COGVIDEOX_5B_LIKE,
    cogvideox_2b_alignment,
    make_cogvideox_scheduler,
    make_scheduler,
    tiny_cogvideox_pipeline,
    tiny_cogvideox_renderer,
    tiny_cogvideox_transformer,
    tiny_wan_pipeline,
    tiny_wan_renderer,
)

MODES = ("same", "other")


@dataclass(frozen=True)
class CompatCase:
    """One supported pipeline family, as the client suite needs it.

    Attributes:
        name: the test id.
        build_pipe: a fresh plain pipeline with seeded weights (two calls give equal weights),
            progress bar off.
        build_other_renderer: a fresh renderer with other weights that the pipeline can use by a
            plain swap of `pipe.transformer`.
        call_kwargs_factory: "module:function" of `f(num_inference_steps, seed=0, **overrides)` giving
            the call arguments (latent output); a reference so that programs run under `srd-run` can
            import it too.
        enable_vae_tiling: turns tiling on with tiles small enough that the tiny VAE really tiles.
        latent_format: the latent layout, as diffusers' FasterCache names it ("BCFHW", "BFCHW").
        batched_cfg: True when the conditional and unconditional branches are one batched call.
        block_pattern: a regex matching the transformer blocks (for TaylorSeer's identifiers).
        schedulers: schedulers the host pipeline runs with, by name, covering each parametrization it
            accepts ("ddim_epsilon" marks a pipeline that takes diffusers' DDIMScheduler).
        aligned_renderer: for a family whose real renderer has another parametrization, a fresh such
            renderer and the `SRDConfig` fields that describe it (the swap oracle cannot express the
            alignment, so these are checked for consistency with SRD itself); None if not needed.
    """

    name: str
    build_pipe: Callable[[], Any]
    build_other_renderer: Callable[[], torch.nn.Module]
    call_kwargs_factory: str
    enable_vae_tiling: Callable[[Any], None]
    latent_format: str
    batched_cfg: bool
    block_pattern: str
    schedulers: dict[str, Callable[[], Any]]
    aligned_renderer: Callable[[], tuple[torch.nn.Module, dict[str, Any]]] | None = None

    def call_kwargs(self, steps: int, seed: int = 0, **overrides: Any) -> dict[str, Any]:
        return load_reference(self.call_kwargs_factory)(steps, seed=seed, **overrides)

    def renderer(self, mode: str, pipe: Any) -> torch.nn.Module:
        """The renderer for `mode`; call it before `enable` (a copy of an enabled sketcher is not wanted)."""
        if mode == "same":
            return copy.deepcopy(pipe.transformer)
        if mode == "other":
            return self.build_other_renderer()
        raise ValueError(f"mode {mode!r}: choose one of {MODES}")


def load_reference(spec: str) -> Callable[..., Any]:
    """The object a "package.module:function" string names."""
    module_name, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _quiet(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _wan_tiling(vae: Any) -> None:
    vae.enable_tiling(
        tile_sample_min_height=16, tile_sample_min_width=16, tile_sample_stride_height=8, tile_sample_stride_width=8
    )


def _cogvideox_tiling(vae: Any) -> None:
    vae.enable_tiling(
        tile_sample_min_height=16,
        tile_sample_min_width=16,
        tile_overlap_factor_height=0.25,
        tile_overlap_factor_width=0.25,
    )


CASES = [
    CompatCase(
        name="wan",
        build_pipe=lambda: _quiet(tiny_wan_pipeline()),
        build_other_renderer=lambda: tiny_wan_renderer(seed=1),
        call_kwargs_factory="srd_plugin.testing:tiny_call_kwargs",
        enable_vae_tiling=_wan_tiling,
        latent_format="BCFHW",
        batched_cfg=False,
        block_pattern=r"blocks\.\d+",
        schedulers={"unipc_flow": lambda: make_scheduler("unipc"), "flow_match_euler": lambda: make_scheduler("euler")},
    ),
    CompatCase(
        name="cogvideox",
        build_pipe=lambda: _quiet(tiny_cogvideox_pipeline()),
        # rotary like the sketcher (the pipeline's rotary tables fit it), half the heads, other weights; two
        # layers, since diffusers' FirstBlockCache needs a first and a last block
        build_other_renderer=lambda: tiny_cogvideox_transformer(COGVIDEOX_5B_LIKE, seed=1, num_attention_heads=2),
        call_kwargs_factory="srd_plugin.testing:tiny_cogvideox_call_kwargs",
        enable_vae_tiling=_cogvideox_tiling,
        latent_format="BFCHW",
        batched_cfg=True,
        block_pattern=r"transformer_blocks\.\d+",
        schedulers={
            "cogvideox_ddim": make_cogvideox_scheduler,
            "ddim_epsilon": lambda: DDIMScheduler(clip_sample=False),
            "ddim_v_prediction": lambda: DDIMScheduler(prediction_type="v_prediction", clip_sample=False),
            "unipc_flow": lambda: make_scheduler("unipc"),
        },
        aligned_renderer=lambda: (tiny_cogvideox_renderer(), cogvideox_2b_alignment()),
    ),
]
