"""`RunTrace`: what happened in one sketch-render call, step by step.

A trace is plain data (lists of numbers and strings), so it serialises to JSON and back
without loss, can be redrawn later (`srd report`), and can be compared across ranks.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

#: the role of a step whose CFG calls did not all run on one model: only after the renderer
#: failed (NaN/Inf) in a later call of a step whose earlier call it had served
MIXED = "mixed"


@dataclass
class RunTrace:
    """Per-step record of one pipeline call.

    roles: "sketch" or "render" for each completed step ("mixed" for a step in which the
        renderer failed after serving an earlier CFG call of that step, see `MIXED`).
    switch_step: index of the first render step, None if the renderer never ran.
    metrics: the adaptive quantity s_i per step (None where undefined or not computed).
    distances: the adaptive d_i per step (None where undefined or not computed).
    step_seconds: wall time of each step (from the end of the previous step).
    completed: False when the call stopped early (exception, interrupt).
    fallback_step: first step the sketcher re-took after a renderer failure, else None.
    events: human-readable notes (fallbacks, warnings) in the order they happened.
    memory_allocated / memory_reserved: per step, the peak bytes the CUDA caching allocator had
        allocated / reserved on the execution device during that step (empty without CUDA;
        recorded by `srd_plugin.hooks.memory`).
    guidance_calls_saved: with render_guidance="off", the model calls (two-call hosts) or batch
        halves (batched hosts) of the render phase that ran no model.
    target_speedup: the config's target (None without one); target_switch_step: the latest
        switch step it allowed at the last decision; predicted_speedup: S(k) at the switch
        (or at N without one) from the ratio the decision used, whose source is `speed_basis`
        ("measured": the session's step times, "flops": the adapters' FLOP model);
        achieved_speedup: N x the call's typical sketcher step / the call's denoising time.
    """

    pipeline: str = ""
    policy: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    num_steps: int = 0
    timesteps: list[float] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    switch_step: int | None = None
    metrics: list[float | None] = field(default_factory=list)
    distances: list[float | None] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    completed: bool = False
    fallback_step: int | None = None
    events: list[str] = field(default_factory=list)
    memory_allocated: list[int] = field(default_factory=list)
    memory_reserved: list[int] = field(default_factory=list)
    guidance_calls_saved: int = 0
    target_speedup: float | None = None
    target_switch_step: int | None = None
    predicted_speedup: float | None = None
    achieved_speedup: float | None = None
    speed_basis: str | None = None

    # -- derived figures -------------------------------------------------------------
    def steps_of(self, role: str) -> list[int]:
        return [i for i, r in enumerate(self.roles) if r == role]

    def seconds_of(self, role: str) -> float:
        return sum(s for s, r in zip(self.step_seconds, self.roles) if r == role)

    @property
    def total_seconds(self) -> float:
        return sum(self.step_seconds)

    def peak_memory_of(self, role: str) -> tuple[int, int] | None:
        """(allocated, reserved) peak bytes over the steps of `role`, None when nothing was recorded."""
        steps = [i for i in self.steps_of(role) if i < len(self.memory_allocated) and i < len(self.memory_reserved)]
        if not steps:
            return None
        return max(self.memory_allocated[i] for i in steps), max(self.memory_reserved[i] for i in steps)

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunTrace:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"not a RunTrace: unknown key(s) {', '.join(unknown)}")
        return cls(**data)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> RunTrace:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> RunTrace:
        return cls.from_json(Path(path).read_text())

    # -- human-readable --------------------------------------------------------------
    def summary(self) -> str:
        """A short table: steps, time and time per step of each role, and the switch."""
        head = f"SRD run: {self.pipeline or 'pipeline'}, policy {self.policy}, {self.num_steps} steps"
        if not self.completed:
            head += f" (stopped after {len(self.roles)} steps)"
        lines = [head, f"  {'role':<8}{'steps':>7}{'range':>12}{'seconds':>10}{'s/step':>9}"]
        for role in ("sketch", "render", MIXED) if MIXED in self.roles else ("sketch", "render"):
            steps = self.steps_of(role)
            seconds = self.seconds_of(role)
            span = f"{steps[0]}-{steps[-1]}" if steps else "-"
            per_step = f"{seconds / len(steps):.3f}" if steps else "-"
            lines.append(f"  {role:<8}{len(steps):>7}{span:>12}{seconds:>10.2f}{per_step:>9}")
        lines.append(f"  {'total':<8}{len(self.roles):>7}{'':>12}{self.total_seconds:>10.2f}")
        lines.append("  " + self._switch_line())
        lines.extend(self._speed_lines())
        lines.extend(self._memory_lines())
        lines.extend(f"  note: {event}" for event in self.events)
        return "\n".join(lines)

    def _switched_for_target(self) -> bool:
        """Whether the target's bound placed the switch: the metric did not settle (checked by
        the caller) and max_sketch_steps was not reached, so only the target could switch."""
        if self.target_speedup is None or self.switch_step is None:
            return False
        minimum = self.config.get("min_sketch_steps") or 1
        maximum = self.config.get("max_sketch_steps") or max(math.ceil(0.6 * self.num_steps), minimum)
        return self.switch_step < maximum

    def _speed_lines(self) -> list[str]:
        lines = []
        if self.config.get("render_guidance") == "off":
            lines.append(f"  render guidance off: {self.guidance_calls_saved} renderer calls (or batch halves) saved")
        if self.target_speedup is not None:
            parts = [f"target {self.target_speedup:g}x"]
            if self.predicted_speedup is not None:
                basis = {"flops": "FLOP model", "measured": "measured step times"}.get(
                    self.speed_basis or "", ""
                )  # speed.BASIS_NAMES
                parts.append(f"predicted {self.predicted_speedup:.2f}x" + (f" ({basis})" if basis else ""))
            if self.achieved_speedup is not None:
                parts.append(f"achieved {self.achieved_speedup:.2f}x")
            lines.append("  speed: " + ", ".join(parts))
        return lines

    def _memory_lines(self) -> list[str]:
        peaks = {role: self.peak_memory_of(role) for role in ("sketch", "render")}
        if all(peak is None for peak in peaks.values()):
            return []
        gib = 1024**3
        parts = [
            f"{role} {peak[0] / gib:.2f} / {peak[1] / gib:.2f}" for role, peak in peaks.items() if peak is not None
        ]
        return ["  peak memory GiB (allocated / reserved): " + ", ".join(parts)]

    def _switch_line(self) -> str:
        if self.switch_step is None:
            return "no switch: the sketcher ran every step"
        if self.switch_step == 0:
            return "switch at step 0: the renderer ran every step"
        reason = ""
        last_sketch = self.switch_step - 1
        if self.policy == "adaptive" and last_sketch < len(self.metrics):
            metric = self.metrics[last_sketch]
            threshold = self.config.get("threshold")
            if metric is not None and threshold is not None and 0 < metric < threshold:
                reason = f" (s_{last_sketch} = {metric:.4g} < threshold {threshold:g})"
            elif self._switched_for_target():
                reason = f" (latest switch for target_speedup {self.target_speedup:g}x)"
            else:
                reason = " (max_sketch_steps reached)"
        return f"switch at step {self.switch_step}{reason}"
