"""TeaCache's decision rule written out from the official scripts, as an oracle for the hooks' decisions."""

from __future__ import annotations

from srd_plugin.hooks.teacache import rescale


def reference_decisions(modulated, coefficients, threshold, retained=1, steps=None):
    """The official rule on the recorded modulated inputs of one cache context.

    TeaCache4Wan2.1 as written; TeaCache4CogVideoX is the same with `retained=1` and no step
    count (CogVideoXPipeline does not tell its caches how many steps there are).
    """
    decisions, accumulated, previous = [], 0.0, None
    for step, current in enumerate(modulated):
        last = steps is not None and step == steps - 1
        if previous is None or step < retained or last:
            compute = True
        else:
            rel = ((current - previous).abs().mean() / previous.abs().mean()).item()
            accumulated += rescale(coefficients, rel)
            compute = accumulated >= threshold
        if compute:
            accumulated = 0.0
        decisions.append(compute)
        previous = current
    return decisions
