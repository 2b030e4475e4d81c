"""The speed target (`SRDConfig.target_speedup`): the latest switch step that still reaches it.

With N steps of which the first k sketch, and a sketcher step costing r times a renderer
step, the whole-denoising speedup over the sketcher alone is

    S(k) = N r / (k r + (N - k))                       (S(0) = r, S(N) = 1, falling in k)

so a target X allows switching at any k <= k_X, the last step with S(k) >= X. The adaptive
policy still decides; k_X is only its latest allowed switch (a tighter `max_sketch_steps`).

r comes from what this session has measured: the sketcher's step time in this call (its
sketch steps after the first, which carries the call's set-up; before there is one, the
sketcher's typical step of the earlier call) over the renderer's typical step measured in an
earlier call of the same session at the same call shapes. Before the renderer has been
measured, r is the FLOP ratio of one sketch step to one render step at this call's token
counts (`Adapter.flops_per_call`, summed over the model calls of the first step as each model
would run them, so guidance-free rendering counts).
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

import torch

from .guidance import bind_call

if TYPE_CHECKING:  # pragma: no cover - types only
    from .runtime import Run, Session
    from .trace import RunTrace

MEASURED = "measured"  # the session's step times
FLOPS = "flops"  # the adapters' FLOP model
BASIS_NAMES = {MEASURED: "measured step times", FLOPS: "FLOP model"}


def predicted_speedup(num_steps: int, switch_step: int, ratio: float) -> float:
    """S(k) = N r / (k r + N - k): the whole denoising with k sketch steps against N sketch steps."""
    return num_steps * ratio / (switch_step * ratio + (num_steps - switch_step))


def latest_switch_step(num_steps: int, ratio: float, target: float) -> int | None:
    """The last k in 0..N with S(k) >= target, None when even k = 0 (renderer only) falls short."""
    for k in range(num_steps, -1, -1):
        if predicted_speedup(num_steps, k, ratio) >= target * (1 - 1e-12):
            return k
    return None


def typical_step(seconds: list[float]) -> float | None:
    """The median step time, leaving out the first one when there are others (it carries set-up)."""
    if not seconds:
        return None
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


class SpeedTarget:
    """One call's speed target: FLOPs of the first step's calls, the ratio r, and the bound k_X.

    measured: the session's memory {call shapes: (sketcher, renderer) typical step seconds} of
        earlier calls (a model that did not run in a call keeps its earlier figure).
    """

    def __init__(self, target: float, num_steps: int, measured: dict[Any, tuple[float | None, float | None]]) -> None:
        self.target = target
        self.num_steps = num_steps
        self.measured = measured
        self.flops = {"sketch": 0.0, "render": 0.0}
        self.shapes: list[tuple] = []
        self.basis: str | None = None
        self.ratio: float | None = None

    @torch.compiler.disable
    def observe_call(self, session: Session, run: Run, args: tuple, kwargs: dict[str, Any], context: Any) -> None:
        """Count one host model call of the first step: its shapes, and what each model would spend on it."""
        adapter = session.adapter
        arguments = bind_call(session.sketcher, args, kwargs)
        self.shapes.append(_shape_key(arguments, context))
        self.flops["sketch"] += adapter.flops_per_call(session.sketcher, arguments) or 0.0
        guidance = run.guidance
        planned = (args, kwargs) if guidance is None else guidance.renderer_call(args, kwargs, context, run.step_index)
        if planned is not None:
            rendered = bind_call(session.sketcher, planned[0], planned[1])
            self.flops["render"] += adapter.flops_per_call(session.renderer, rendered) or 0.0

    @property
    def key(self) -> tuple:
        """The call shapes of the first step: measurements are reused only for calls that look alike."""
        return tuple(self.shapes)

    def update(self, trace: RunTrace) -> int | None:
        """Recompute r from the latest measurements; return k_X (None: unreachable at any switch step)."""
        sketch_seconds = _seconds(trace, "sketch")
        earlier_sketch, render = self.measured.get(self.key, (None, None))
        sketch = (
            typical_step(sketch_seconds) if len(sketch_seconds) > 1 else earlier_sketch or typical_step(sketch_seconds)
        )
        if sketch is not None and render:
            self.ratio, self.basis = sketch / render, MEASURED
        elif self.flops["render"] > 0:
            self.ratio, self.basis = self.flops["sketch"] / self.flops["render"], FLOPS
        if self.ratio is None:
            return self.num_steps
        return latest_switch_step(self.num_steps, self.ratio, self.target)

    def predicted(self, switch_step: int) -> float | None:
        return None if self.ratio is None else predicted_speedup(self.num_steps, switch_step, self.ratio)

    def finish(self, trace: RunTrace) -> None:
        """At the call's end: the achieved speedup, and the renderer's step time remembered for later calls."""
        sketch = typical_step(_seconds(trace, "sketch"))
        render = typical_step(_seconds(trace, "render"))
        if trace.completed:
            earlier_sketch, earlier_render = self.measured.get(self.key, (None, None))
            self.measured[self.key] = (sketch or earlier_sketch, render or earlier_render)
        if sketch is None and render is not None and self.ratio is not None:
            sketch = render * self.ratio
        if sketch is not None and trace.completed and trace.total_seconds > 0:
            trace.achieved_speedup = trace.num_steps * sketch / trace.total_seconds


def _seconds(trace: RunTrace, role: str) -> list[float]:
    return [seconds for seconds, r in zip(trace.step_seconds, trace.roles) if r == role]


def _shape_key(arguments: dict[str, Any], context: Any) -> tuple:
    shapes = tuple((name, tuple(value.shape)) for name, value in arguments.items() if isinstance(value, torch.Tensor))
    return (getattr(context, "name", None), shapes)
