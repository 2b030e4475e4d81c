"""Guidance-free rendering (`SRDConfig.render_guidance="off"`): the render phase drops CFG.

Classifier-free guidance doubles every step: the host asks the model for the prompt and for
the negative prompt and mixes them, `uncond + g * (cond - uncond)`. Guidance matters in the
high-noise steps and little at low noise (Kynkäänniemi et al., NeurIPS 2024), which is where
SRD renders. With "off", the renderer computes the conditional prediction only and the host's
mix returns it unchanged, *without any change to the host code*:

* two-call hosts (`CFGLayout.calls == "two_calls"`: Wan, SkyReels, Cosmos, Kandinsky 5): the
  negative-prompt call of a render step is answered with the conditional call's output of the
  same step, so the host computes `c + g * (c - c) == c` exactly and no model runs for it. The
  negative call is the one under the layout's `uncond_context` (Wan, SkyReels), or, for calls
  outside any cache context (Cosmos, Kandinsky 5, WanVideoToVideoPipeline), the second model
  call of the step;
* batched hosts (`"batched"`: CogVideoX, LTX): the renderer runs on the conditional half of the
  batch and its output is returned for both halves (same arithmetic on the host's side).

The result equals, bit for bit, the host run with its guidance scale set to 1 from the switch
on (the tests' oracle). The sketch phase is never touched: this object is consulted only for
calls the router sends to the renderer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from .adapters.base import TWO_CALLS, CFGLayout

#: what the renderer is called with: (args, kwargs, halved), halved when only the conditional half of a batch goes in
Call = tuple[tuple, dict[str, Any], bool]


def bind_call(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A model call as keyword arguments, named by the module class's own `forward`."""
    signature = inspect.signature(type(module).forward)
    bound = signature.bind(module, *args, **kwargs)
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(signature.parameters)))  # self
    return arguments


class GuidanceFreeRender:
    """One call's guidance-free rendering: which renderer call to make for a host call.

    layout: the adapter's `CFGLayout`; active: whether this call of the host runs CFG at all
    (asked once per call); sketcher: names the host's forward arguments of a batched call.
    """

    def __init__(self, layout: CFGLayout, active: bool, sketcher: torch.nn.Module) -> None:
        self.layout = layout
        self.active = active
        self.sketcher = sketcher
        self._cond_step: int | None = None
        self._cond_output: Any = None
        #: calls outside cache contexts: the step being counted and its calls so far
        self._count_step: int | None = None
        self._count = 0
        #: model calls (two-call hosts) or batch halves (batched hosts) the render phase did not compute
        self.saved = 0

    def position(self, step_index: int) -> int:
        """This call's place among the model calls of step `step_index` (0: the first).

        Each host call is asked about once: the speed target counts the calls of step 0, which
        always sketches under the adaptive policy it requires, and the render phase the others.
        """
        if self._count_step != step_index:
            self._count_step, self._count = step_index, 0
        self._count += 1
        return self._count - 1

    def is_uncond(self, context: Any, step_index: int) -> bool:
        """Whether a call of a two-call host is its negative-prompt call: by its cache context, or,
        for a call outside any cache context (`CFGLayout.by_order` hosts, and hosts of a named layout
        that skip the contexts, e.g. WanVideoToVideoPipeline), by being the second call of its step."""
        if self.layout.calls != TWO_CALLS:
            return False
        if self.layout.by_order or context is None:
            return self.position(step_index) == 1
        return context.name == self.layout.uncond_context

    def renderer_call(self, args: tuple, kwargs: dict[str, Any], context: Any, step_index: int) -> Call | None:
        """The arguments the renderer gets for a host call of step `step_index` (None: served without a model)."""
        if not self.active:
            return args, kwargs, False
        if self.layout.calls == TWO_CALLS:
            return None if self.is_uncond(context, step_index) else (args, kwargs, False)
        arguments = bind_call(self.sketcher, args, kwargs)
        batch = _batch_of(arguments.get("hidden_states"))
        if batch is None or batch % 2:
            return args, kwargs, False
        half = batch // 2
        start = half * self.layout.cond_half
        for name in self.layout.batch_arguments:
            value = arguments.get(name)
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
                arguments[name] = value[start : start + half]
        return (), arguments, True

    def render(
        self, step_index: int, args: tuple, kwargs: dict[str, Any], context: Any, call: Callable[[tuple, dict], Any]
    ) -> Any:
        """Serve one host call of a render step; `call(args, kwargs)` runs the renderer."""
        planned = self.renderer_call(args, kwargs, context, step_index)
        if planned is None:
            if self._cond_step != step_index:
                raise RuntimeError(
                    f"render_guidance='off': the host's {self.layout.uncond_context!r} call of step {step_index} came "
                    f"before its {self.layout.cond_context!r} call; the adapter's CFGLayout says the conditional call "
                    "comes first. Fix the adapter's cfg_layout, or use render_guidance='host'"
                )
            self.saved += 1
            return self._cond_output
        call_args, call_kwargs, halved = planned
        output = call(call_args, call_kwargs)
        if halved:
            self.saved += 1
            return _both_halves(output)
        if self.layout.calls == TWO_CALLS:
            self._cond_step, self._cond_output = step_index, output
        return output


def _batch_of(value: Any) -> int | None:
    return int(value.shape[0]) if isinstance(value, torch.Tensor) and value.dim() > 0 else None


def _both_halves(output: Any) -> Any:
    """The conditional half's output returned for both halves: every output tensor repeated along the batch."""
    if isinstance(output, torch.Tensor):
        return torch.cat([output, output])
    if isinstance(output, tuple) and not hasattr(output, "_fields"):
        return tuple(_both_halves(v) for v in output)
    if isinstance(output, dict):
        doubled = {k: _both_halves(v) for k, v in output.items()}
        return doubled if type(output) is dict else type(output)(**doubled)
    return output


def make_guidance(render_guidance: str, layout: CFGLayout | None, active: bool, sketcher: torch.nn.Module) -> Any:
    """This call's `GuidanceFreeRender`, or None when the render phase keeps the host's guidance."""
    if render_guidance != "off" or layout is None:
        return None
    return GuidanceFreeRender(layout, active, sketcher)
