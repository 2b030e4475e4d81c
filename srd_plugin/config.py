"""`SRDConfig`: every user-facing setting of a sketch-render run, validated up front.

Validation happens at construction (and again when `enable` applies keyword overrides),
so a bad value is reported before any model is touched, never in the middle of a
generation. Each error names the field, the value and the allowed range.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# a runtime import (not TYPE_CHECKING): the config readers resolve field types at run time.
# The class lives in the core so that this module imports no accelerator plugin.
from .accelerator_configs import TeaCacheConfig

SWITCH_POLICIES = ("adaptive", "step", "ratio", "boundary")
RENDERER_FAILURE_MODES = ("fallback", "raise")
RENDERER_DTYPES = ("float32", "float16", "bfloat16")
ALIGN_MODES = ("auto", "none")
OFFLOAD_SKETCHER_MODES = ("never", "after_switch")
#: the public settings of a diffusers ContextParallelConfig (the rest is the device mesh diffusers fills in)
PARALLEL_CONFIG_FIELDS = (
    "ulysses_degree",
    "ring_degree",
    "convert_to_fp32",
    "rotate_method",
    "ulysses_anything",
    "ring_anything",
)

RENDER_GUIDANCE_MODES = ("host", "off")


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"SRDConfig.{field}={value!r} is invalid: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def describe_parallel_config(config: Any) -> dict[str, Any]:
    """The settings of a `ContextParallelConfig` as plain values (for traces and messages); the mesh is left out.

    Here rather than in `parallel/` so that writing a config (every trace does) needs no plugin.
    """
    return {"type": type(config).__name__, **{name: getattr(config, name) for name in PARALLEL_CONFIG_FIELDS}}


@dataclass(frozen=True)
class SRDConfig:
    """How the sketcher and the renderer share the denoising steps.

    Switching (see docs/architecture.md, "Switching policies"):
        switch: "adaptive" (default) switches when the guided x0 prediction stops changing
            fast; "step" after `switch_step` sketch steps; "ratio" after
            `round(switch_ratio * N)`; "boundary" while `t >= boundary_ratio *
            num_train_timesteps` (the rule of diffusers' Wan2.2 `boundary_ratio`).
        threshold: adaptive switch when 0 < s_i < threshold (the SRDiffusion default 0.01).
        min_sketch_steps / max_sketch_steps: adaptive bounds on the number of sketch steps;
            `max_sketch_steps=None` means ceil(0.6 * N), never below `min_sketch_steps`.

    Renderer placement:
        move_renderer: move the renderer to the sketcher's device (and `renderer_dtype`)
            when needed; with False a renderer on another device is refused by `enable`.
        renderer_dtype: None keeps a given module's dtype (inputs and outputs are cast at
            the border) and loads a renderer path in the sketcher's dtype; "float32",
            "float16" or "bfloat16" converts the renderer to that dtype.

    Several processes (see docs/multi_gpu.md):
        parallel_config: None, or a diffusers `ContextParallelConfig` that `enable` applies to
            the sketcher and, with the same degrees on the same device mesh, to the renderer
            (launch with torchrun). A sketcher already parallelised with
            `enable_parallelism(config=...)` needs nothing here: the renderer follows it.

    Faults:
        on_renderer_failure: "fallback" (default) hands the rest of the call back to the
            sketcher when the renderer returns NaN/Inf; "raise" raises
            `RendererFailureError`.

    Cross-model alignment (CogVideoX; see docs/alignment.md):
        align: "auto" (default) maps the host latent into the renderer's parametrization
            (VAE scale, noise schedule) whenever the two differ, and is the identity when
            they match; "none" is the naive swap (a measurable baseline).
        renderer_scaling_factor: the renderer's VAE scaling factor (e.g. 1.15258426 for
            CogVideoX-2B); None: read from the renderer's pipeline folder, else the host's.
        renderer_scheduler_config: the renderer's scheduler config, a dict as in its
            `scheduler_config.json`; None: read from the renderer's pipeline folder, else the
            host's. Explicit values win over the folder's.

    Accelerators (docs/accelerators.md):
        teacache: a `TeaCacheConfig` puts TeaCache on the sketcher, and on the renderer too
            unless `teacache_renderer` is set; each model gets its own state and, with
            `threshold=None` / `coefficients=None`, its own recommended values.
        teacache_renderer: the renderer's own `TeaCacheConfig` (e.g. another threshold), or
            False for no TeaCache on the renderer; None (default) follows `teacache`.
        sage_attention: route both models' attention to SageAttention where it can run.

    Memory (see docs/memory.md):
        offload_sketcher: "never" (default) keeps the sketcher on the accelerator;
            "after_switch" moves its weights to the CPU at the switch and back at the start of
            the next call that sketches (a call that renders from step 0 leaves it on the CPU).
        prefetch_renderer: keep the renderer on the CPU (pinned memory) between calls and copy
            it to the accelerator on a side CUDA stream during the sketch phase, so the switch
            does not wait for the copy; it goes back to the CPU when the call's denoising ends.

    Speed (see docs/architecture.md, "Guidance-free rendering and the speed target"):
        render_guidance: "host" (default) keeps the host's classifier-free guidance in the
            render phase (the paper's behaviour); "off" renders the conditional prediction only
            and the step's guided prediction equals it (guidance matters little at low noise):
            a two-call host's negative-prompt call is served without running any model, a
            batched host's renderer runs on the conditional half. The sketch phase keeps the
            host's guidance; with guidance already off (scale <= 1) nothing changes.
        target_speedup: None, or the whole-denoising speedup over the sketcher alone the
            adaptive policy must reach: it still decides, but never later than the last
            switch step whose predicted speedup is at least this (from the run's measured
            sketcher steps, the renderer's measured steps of earlier calls, else the adapter's
            FLOP model). Unreachable even at `min_sketch_steps`: a warning with the best
            reachable figure, and the switch at `min_sketch_steps`. Only with switch="adaptive".
    """

    switch: str = "adaptive"
    threshold: float = 0.01
    min_sketch_steps: int = 5
    max_sketch_steps: int | None = None
    switch_step: int | None = None
    switch_ratio: float | None = None
    boundary_ratio: float | None = None
    move_renderer: bool = True
    renderer_dtype: str | None = None
    on_renderer_failure: str = "fallback"
    align: str = "auto"
    renderer_scaling_factor: float | None = None
    renderer_scheduler_config: dict[str, Any] | None = None
    parallel_config: Any = field(default=None, metadata={"from_text": False})
    teacache: TeaCacheConfig | None = None
    teacache_renderer: TeaCacheConfig | bool | None = None
    sage_attention: bool = False
    offload_sketcher: str = "never"
    prefetch_renderer: bool = False
    render_guidance: str = "host"
    target_speedup: float | None = None

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if self.switch not in SWITCH_POLICIES:
            _fail("switch", self.switch, f"choose one of {', '.join(SWITCH_POLICIES)}")
        if not _is_number(self.threshold) or not (0.0 < self.threshold <= 1.0) or math.isnan(self.threshold):
            _fail("threshold", self.threshold, "a number in (0, 1]")
        if not _is_int(self.min_sketch_steps) or self.min_sketch_steps < 1:
            _fail("min_sketch_steps", self.min_sketch_steps, "an integer >= 1")
        if self.max_sketch_steps is not None:
            if not _is_int(self.max_sketch_steps) or self.max_sketch_steps < 1:
                _fail("max_sketch_steps", self.max_sketch_steps, "None or an integer >= 1")
            if self.max_sketch_steps < self.min_sketch_steps:
                _fail(
                    "max_sketch_steps",
                    self.max_sketch_steps,
                    f"must be >= min_sketch_steps ({self.min_sketch_steps}); "
                    "lower min_sketch_steps or raise max_sketch_steps",
                )
        self._validate_policy_parameter("switch_step", "step", "an integer >= 0", lambda v: _is_int(v) and v >= 0)
        self._validate_policy_parameter(
            "switch_ratio", "ratio", "a number in [0, 1]", lambda v: _is_number(v) and 0.0 <= v <= 1.0
        )
        self._validate_policy_parameter(
            "boundary_ratio", "boundary", "a number in [0, 1]", lambda v: _is_number(v) and 0.0 <= v <= 1.0
        )
        if not isinstance(self.move_renderer, bool):
            _fail("move_renderer", self.move_renderer, "True or False")
        if self.renderer_dtype is not None and self.renderer_dtype not in RENDERER_DTYPES:
            _fail("renderer_dtype", self.renderer_dtype, f"None or one of {', '.join(RENDERER_DTYPES)}")
        if self.on_renderer_failure not in RENDERER_FAILURE_MODES:
            _fail("on_renderer_failure", self.on_renderer_failure, f"choose one of {', '.join(RENDERER_FAILURE_MODES)}")
        if self.align not in ALIGN_MODES:
            _fail("align", self.align, f"choose one of {', '.join(ALIGN_MODES)}")
        factor = self.renderer_scaling_factor
        if factor is not None and (not _is_number(factor) or not math.isfinite(factor) or factor <= 0):
            _fail("renderer_scaling_factor", factor, "None or a positive finite number (CogVideoX-2B: 1.15258426)")
        scheduler_config = self.renderer_scheduler_config
        if scheduler_config is not None and (
            not isinstance(scheduler_config, dict) or not all(isinstance(k, str) for k in scheduler_config)
        ):
            _fail(
                "renderer_scheduler_config",
                scheduler_config,
                "None or a dict with string keys, as in the renderer's scheduler_config.json",
            )
        if self.parallel_config is not None:
            from diffusers import ContextParallelConfig

            if not isinstance(self.parallel_config, ContextParallelConfig):
                _fail(
                    "parallel_config",
                    self.parallel_config,
                    "None or a diffusers ContextParallelConfig(ulysses_degree=..., ring_degree=...)",
                )
        self._validate_accelerators()
        self._validate_speed()

    def _validate_speed(self) -> None:
        if self.render_guidance not in RENDER_GUIDANCE_MODES:
            _fail("render_guidance", self.render_guidance, f"choose one of {', '.join(RENDER_GUIDANCE_MODES)}")
        target = self.target_speedup
        if target is None:
            return
        if not _is_number(target) or not math.isfinite(target) or target < 1.0:
            _fail("target_speedup", target, "None or a finite number >= 1 (e.g. 3.0 for three times faster)")
        if self.switch != "adaptive":
            _fail(
                "target_speedup",
                target,
                f"switch={self.switch!r} already fixes the switch step; a target needs switch='adaptive' "
                "(or drop target_speedup)",
            )

    def _validate_accelerators(self) -> None:
        if self.teacache is not None and not isinstance(self.teacache, TeaCacheConfig):
            _fail("teacache", self.teacache, "None or a srd_plugin.TeaCacheConfig(threshold=..., coefficients=...)")
        renderer = self.teacache_renderer
        if renderer is not None and renderer is not False and not isinstance(renderer, TeaCacheConfig):
            _fail("teacache_renderer", renderer, "None (as teacache), False (none on the renderer) or a TeaCacheConfig")
        if not isinstance(self.sage_attention, bool):
            _fail("sage_attention", self.sage_attention, "True or False")
        if self.offload_sketcher not in OFFLOAD_SKETCHER_MODES:
            _fail("offload_sketcher", self.offload_sketcher, f"choose one of {', '.join(OFFLOAD_SKETCHER_MODES)}")
        if not isinstance(self.prefetch_renderer, bool):
            _fail("prefetch_renderer", self.prefetch_renderer, "True or False")

    def _validate_policy_parameter(self, field: str, policy: str, allowed: str, ok: Any) -> None:
        value = getattr(self, field)
        if self.switch == policy:
            if value is None:
                _fail(field, value, f"switch={policy!r} needs {field}: {allowed}")
            if not ok(value):
                _fail(field, value, allowed)
        elif value is not None:
            _fail(field, value, f"{field} is only used with switch={policy!r}; set switch={policy!r} or drop {field}")

    def replace(self, **overrides: Any) -> SRDConfig:
        """A copy with some fields changed; unknown names are a `ValueError` listing the known ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown SRDConfig field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self, **overrides)

    def resolved_max_sketch_steps(self, num_steps: int) -> int:
        """The adaptive upper bound for a run of `num_steps` steps (see the class docstring)."""
        if self.max_sketch_steps is not None:
            return self.max_sketch_steps
        return max(math.ceil(0.6 * num_steps), self.min_sketch_steps)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-serialisable values (stored in every trace).

        `parallel_config` holds a device mesh after use, so it is written as its settings only.
        """
        if self.parallel_config is None:
            return dataclasses.asdict(self)
        data = dataclasses.asdict(dataclasses.replace(self, parallel_config=None))
        data["parallel_config"] = describe_parallel_config(self.parallel_config)
        return data

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SRDConfig:
        """The settings of the `[srd]` table of a TOML file over the defaults (see `srd_plugin.settings`)."""
        from .settings import config_from_file

        return config_from_file(path, cls)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SRDConfig:
        """The `SRD_*` variables over the file `SRD_CONFIG` names over the defaults (see `srd_plugin.settings`)."""
        from .settings import config_from_env

        return config_from_env(environ, cls)
