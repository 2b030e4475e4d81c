"""Settings of the built-in accelerators that `SRDConfig` holds as fields.

They live in the core, not beside the accelerators that use them, so that `srd_plugin.config`
(and with it the runtime) does not import an accelerator plugin: the config readers resolve
`SRDConfig`'s field types at run time, so config.py imports these classes for real (not under
`TYPE_CHECKING`). Each plugin module re-exports its own config
(`srd_plugin.hooks.teacache.TeaCacheConfig`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TeaCacheConfig:
    """Settings of TeaCache for one model.

    Args:
        threshold: skip the blocks while the accumulated rescaled distance stays below it.
            None: the TeaCache authors' recommendation for the recognised model (Wan 14B 0.2,
            Wan 1.3B 0.08, CogVideoX 0.1); required for unrecognised models. 0 computes every
            step (bit-identical to no cache). Higher is faster and less faithful.
        coefficients: the rescaling polynomial, highest degree first (numpy.poly1d order).
            None: the official coefficients of the recognised model; for an unrecognised model
            the identity polynomial (rel itself), with one warning.
        use_ret_steps: Wan only: the official "retention steps" variant (projected time
            embedding, its own coefficients, the first 5 steps always computed).
    """

    threshold: float | None = None
    coefficients: tuple[float, ...] | None = None
    use_ret_steps: bool = False

    def __post_init__(self) -> None:
        if self.threshold is not None:
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
                raise ValueError(f"TeaCacheConfig.threshold={self.threshold!r} is invalid: None or a number >= 0")
            if not math.isfinite(self.threshold) or self.threshold < 0:
                raise ValueError(f"TeaCacheConfig.threshold={self.threshold!r} is invalid: None or a number >= 0")
        if self.coefficients is not None:
            coefficients = self.coefficients
            if isinstance(coefficients, (str, bytes)) or not isinstance(coefficients, Sequence) or not coefficients:
                raise ValueError(
                    f"TeaCacheConfig.coefficients={coefficients!r} is invalid: None or a non-empty sequence of "
                    "numbers, highest degree first (e.g. (1.0, 0.0) for the identity)"
                )
            if not all(_is_finite_number(c) for c in coefficients):
                raise ValueError(
                    f"TeaCacheConfig.coefficients={coefficients!r} is invalid: every entry must be a finite number"
                )
            object.__setattr__(self, "coefficients", tuple(float(c) for c in coefficients))
        if not isinstance(self.use_ret_steps, bool):
            raise ValueError(f"TeaCacheConfig.use_ret_steps={self.use_ret_steps!r} is invalid: True or False")


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
