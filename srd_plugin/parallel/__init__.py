"""SRD across several processes: diffusers' context parallelism, applied alike to both models.

`plugin` is the built-in lifecycle plugin (listed in `srd_plugin.manager.BUILTIN_PLUGINS`);
`agree` holds the helper other plugins use to make a per-step decision once and share it;
`context_parallel` the checks and the apply/remove functions; `cpu` the shim that lets
diffusers' context parallelism run on CPU-only processes (tests, `--tiny` examples).
See docs/multi_gpu.md.
"""

from .agree import broadcast_from_rank0, session_process_group
from .context_parallel import fitting_ulysses_degrees
from .cpu import cpu_device_count_shim

__all__ = ["broadcast_from_rank0", "cpu_device_count_shim", "fitting_ulysses_degrees", "session_process_group"]
