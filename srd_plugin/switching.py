"""Switching policies: which step is the first one the renderer runs.

A policy sees the run from the outside: at the start it is told the timesteps and
returns the role of step 0; after each sketch step it is told the step index (and, for
the adaptive policy, the guided x0 prediction of that step) and answers whether the
*next* step renders. The switch is one-way: once a policy has said "switch", the runtime
stops asking it.

The adaptive rule (SRDiffusion, arXiv 2505.19151) watches how much the guided x0
prediction o_i still moves:

    d_i = tanh(mean|o_i - o_{i-1}| / max(mean|o_{i-1}|, 1e-8))      for i >= 1
    s_i = d_{i-1} - d_i                                               for i >= 2

After step i, with n = i + 1 sketch steps done, it switches when n >= min_sketch_steps
and either 0 < s_i < threshold (the change has started to settle, slowly) or
n >= max_sketch_steps. A speed target (`target_speedup`, see speed.py) tightens the last
bound to the latest switch step that still reaches it.

A host that changes model itself (Wan2.2's two experts) has the adaptive rule start at
`observe_from` (set by the runtime from the adapter): earlier steps are neither observed nor
allowed to switch, and the first observed step plays the part of step 0 for d_i.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover - types only
    from .config import SRDConfig

SKETCH = "sketch"
RENDER = "render"


@dataclass(frozen=True)
class Decision:
    """What a policy says after a sketch step: the step's metric (or None) and whether to switch."""

    metric: float | None
    switch: bool
    distance: float | None = None


def relative_change(previous: torch.Tensor, current: torch.Tensor) -> float:
    """d = tanh(mean|current - previous| / max(mean|previous|, 1e-8)), in float32 over the whole batch."""
    previous = previous.detach().float()
    current = current.detach().float()
    numerator = (current - previous).abs().mean()
    denominator = previous.abs().mean().clamp_min(1e-8)
    return float(torch.tanh(numerator / denominator))


class SwitchPolicy:
    """Base class. Subclasses set `name` and `needs_x0` and implement the two decisions."""

    name = "base"
    needs_x0 = False

    def __init__(self, config: SRDConfig) -> None:
        self.config = config
        #: the latest switch step a speed target allows (set by the runtime before each decision; None: no target)
        self.latest_switch: int | None = None
        self.num_steps = 0
        self.timesteps: list[float] = []
        self.num_train_timesteps = 1000
        #: the first step the adaptive policy observes and may switch after (set by the runtime from
        #: the adapter's `first_observed_step`; Wan2.2: the low-noise expert's first step)
        self.observe_from = 0

    def observes(self, step_index: int) -> bool:
        """Whether this step's guided x0 prediction is needed."""
        return self.needs_x0 and step_index >= self.observe_from

    def start(self, timesteps: Sequence[float], num_train_timesteps: int) -> str:
        """Begin a run; validate against its step count; return the role of step 0."""
        self.timesteps = [float(t) for t in timesteps]
        self.num_steps = len(self.timesteps)
        self.num_train_timesteps = int(num_train_timesteps)
        return RENDER if self.num_steps > 0 and self.sketch_steps_before_start() == 0 else SKETCH

    def sketch_steps_before_start(self) -> int | None:
        """For fixed policies, how many steps sketch (None: decided on the way)."""
        return None

    def after_step(self, step_index: int, x0: torch.Tensor | None) -> Decision:
        raise NotImplementedError


class FixedStepPolicy(SwitchPolicy):
    """Shared logic of `step` and `ratio`: k steps sketch, known at the start."""

    def sketch_steps(self) -> int:
        raise NotImplementedError

    def sketch_steps_before_start(self) -> int | None:
        return self.sketch_steps()

    def after_step(self, step_index: int, x0: torch.Tensor | None) -> Decision:
        n = step_index + 1
        return Decision(metric=None, switch=n == self.sketch_steps() and n < self.num_steps)


class StepPolicy(FixedStepPolicy):
    """`switch_step` steps sketch: 0 is renderer-only, N is sketcher-only."""

    name = "step"

    def start(self, timesteps: Sequence[float], num_train_timesteps: int) -> str:
        num_steps = len(timesteps)
        if self.config.switch_step > num_steps:
            raise ValueError(
                f"SRDConfig.switch_step={self.config.switch_step} is beyond the {num_steps} denoising steps of this "
                f"call; use a value in 0..{num_steps} (0: renderer only, {num_steps}: sketcher only)"
            )
        return super().start(timesteps, num_train_timesteps)

    def sketch_steps(self) -> int:
        return self.config.switch_step


class RatioPolicy(FixedStepPolicy):
    """round(switch_ratio * N) steps sketch, rounded half up in exact arithmetic on the float given: in floats,
    0.85 * 10 rounds to 8.5 and up to 9, while the float 0.85 is a little below 0.85 and its share of 10 is 8."""

    name = "ratio"

    def sketch_steps(self) -> int:
        return math.floor(Fraction(self.config.switch_ratio) * self.num_steps + Fraction(1, 2))


class BoundaryPolicy(SwitchPolicy):
    """Sketch while t >= boundary_ratio * num_train_timesteps (diffusers' Wan2.2 rule)."""

    name = "boundary"

    def _sketches(self, step_index: int) -> bool:
        boundary = self.config.boundary_ratio * self.num_train_timesteps
        return self.timesteps[step_index] >= boundary

    def start(self, timesteps: Sequence[float], num_train_timesteps: int) -> str:
        super().start(timesteps, num_train_timesteps)
        return SKETCH if self.num_steps == 0 or self._sketches(0) else RENDER

    def after_step(self, step_index: int, x0: torch.Tensor | None) -> Decision:
        following = step_index + 1
        switch = following < self.num_steps and not self._sketches(following)
        return Decision(metric=None, switch=switch)


class AdaptivePolicy(SwitchPolicy):
    """The self-difference rule of SRDiffusion (see the module docstring)."""

    name = "adaptive"
    needs_x0 = True

    def start(self, timesteps: Sequence[float], num_train_timesteps: int) -> str:
        self._previous_x0: torch.Tensor | None = None
        self._previous_distance: float | None = None
        self.max_sketch_steps = self.config.resolved_max_sketch_steps(len(timesteps))
        return super().start(timesteps, num_train_timesteps)

    def after_step(self, step_index: int, x0: torch.Tensor | None) -> Decision:
        if step_index < self.observe_from:  # not observed: no evidence, no switch
            return Decision(metric=None, switch=False)
        if x0 is None:
            raise ValueError("the adaptive policy needs the guided x0 prediction of every sketch step")
        distance = None if self._previous_x0 is None else relative_change(self._previous_x0, x0)
        self._previous_x0 = x0.detach().float()
        return self.update(step_index, distance)

    def update(self, step_index: int, distance: float | None) -> Decision:
        """The scalar part of the rule: from d_i (None at step 0) to (s_i, switch).

        A NaN or infinite d_i (the sketcher's own x0 prediction held NaN/Inf) is treated as
        undefined, like d_0: it is no evidence of settling, so only `max_sketch_steps` can
        switch until two finite values follow, and the trace stays plain JSON (None, not NaN).
        """
        if distance is not None and not math.isfinite(distance):
            distance = None
        metric = None
        if distance is not None and self._previous_distance is not None:
            metric = self._previous_distance - distance
        self._previous_distance = distance
        n = step_index + 1
        settled = metric is not None and 0.0 < metric < self.config.threshold
        latest = self.latest_sketch_steps()
        switch = n < self.num_steps and n >= self.config.min_sketch_steps and (settled or n >= latest)
        return Decision(metric=metric, switch=switch, distance=distance)

    def latest_sketch_steps(self) -> int:
        """max_sketch_steps, tightened by a speed target's latest switch (never below min_sketch_steps)."""
        if self.latest_switch is None:
            return self.max_sketch_steps
        return min(self.max_sketch_steps, max(self.latest_switch, self.config.min_sketch_steps))


POLICIES: dict[str, type[SwitchPolicy]] = {
    "adaptive": AdaptivePolicy,
    "step": StepPolicy,
    "ratio": RatioPolicy,
    "boundary": BoundaryPolicy,
}


def make_policy(config: SRDConfig) -> SwitchPolicy:
    """A fresh policy for one call (policies keep per-run state)."""
    return POLICIES[config.switch](config)
