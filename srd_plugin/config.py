"""`SRDConfig`: every user-facing setting of a sketch-render run, validated up front.

Validation happens at construction (and again when `enable` applies keyword overrides),
so a bad value is reported before any model is touched, never in the middle of a
generation. Each error names the field, the value and the allowed range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

SWITCH_POLICIES = ("adaptive", "step", "ratio", "boundary")
RENDERER_FAILURE_MODES = ("fallback", "raise")
RENDERER_DTYPES = ("float32", "float16", "bfloat16")
OFFLOAD_SKETCHER_MODES = ("never", "after_switch")


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"SRDConfig.{field}={value!r} is invalid: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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

    Faults:
        on_renderer_failure: "fallback" (default) hands the rest of the call back to the
            sketcher when the renderer returns NaN/Inf; "raise" raises
            `RendererFailureError`.

    Memory (see docs/memory.md):
        offload_sketcher: "never" (default) keeps the sketcher on the accelerator;
            "after_switch" moves its weights to the CPU at the switch and back at the start of
            the next call that sketches (a call that renders from step 0 leaves it on the CPU).
        prefetch_renderer: keep the renderer on the CPU (pinned memory) between calls and copy
            it to the accelerator on a side CUDA stream during the sketch phase, so the switch
            does not wait for the copy; it goes back to the CPU when the call's denoising ends.
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
    offload_sketcher: str = "never"
    prefetch_renderer: bool = False

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
        """The settings as plain JSON-serialisable values (stored in every trace)."""
        return dataclasses.asdict(self)
