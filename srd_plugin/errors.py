"""The exceptions users catch.

Each one subclasses the builtin a caller would naturally catch (`ValueError` for a bad
value, `TypeError` for a wrong kind of object), so code written for plain diffusers keeps
working, while code that wants to be specific can be.
"""

from __future__ import annotations


class IncompatibleRendererError(ValueError):
    """The renderer cannot take the sketcher's place.

    Raised by `srd_plugin.enable` before any work, with every mismatch listed in
    `mismatches` (one human-readable line each) and in the message.
    """

    def __init__(self, mismatches: list[str], hint: str = "") -> None:
        self.mismatches = list(mismatches)
        lines = "\n".join(f"  - {m}" for m in self.mismatches)
        message = f"the renderer cannot replace the sketcher:\n{lines}"
        if hint:
            message += f"\n{hint}"
        super().__init__(message)


class UnsupportedPipelineError(TypeError):
    """No registered adapter recognises the pipeline.

    The message lists the pipelines the installed adapters support, so the user can see
    whether a third-party adapter is missing.
    """

    def __init__(self, pipe: object, supported: list[str], reason: str = "") -> None:
        self.pipeline_class = type(pipe).__name__
        self.supported = sorted(set(supported))
        listed = ", ".join(self.supported) or "none"
        message = f"srd_plugin has no adapter for {self.pipeline_class}"
        if reason:
            message += f": {reason}"
        message += (
            f". Supported pipelines: {listed}. Third-party adapters register through the "
            "'srd_plugin' entry-point group (see docs/adapters.md)."
        )
        super().__init__(message)


class RendererFailureError(RuntimeError):
    """The renderer produced an unusable result (NaN/Inf) and the config says to raise."""
