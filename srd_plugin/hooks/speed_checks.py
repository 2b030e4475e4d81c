"""Built-in plugin: refuse speed settings the pipeline's adapter cannot serve, before anything changes.

`render_guidance="off"` needs to know how the host runs classifier-free guidance (the
adapter's `cfg_layout`); `target_speedup` needs the adapter's FLOP model to predict the
renderer's step cost before it has been measured (`flops_per_call`). An adapter without them
still serves every other setting; these two are refused by `enable` with the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..adapters.base import Adapter
from ..hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover - types only
    from ..runtime import Session


@hookimpl
def srd_check_setup(session: Session) -> list[str] | None:
    config, adapter = session.config, session.adapter
    problems = []
    if config.render_guidance == "off" and adapter.cfg_layout is None:
        problems.append(
            f"SRDConfig.render_guidance='off': the {adapter.name} adapter does not declare how its host runs "
            "classifier-free guidance (Adapter.cfg_layout, see docs/adapters.md); use render_guidance='host'"
        )
    if config.target_speedup is not None and type(adapter).flops_per_call is Adapter.flops_per_call:
        problems.append(
            f"SRDConfig.target_speedup={config.target_speedup!r}: the {adapter.name} adapter has no FLOP model "
            "(Adapter.flops_per_call) to predict the renderer's step cost before it is measured; drop the target "
            "or add flops_per_call to the adapter"
        )
    return problems
