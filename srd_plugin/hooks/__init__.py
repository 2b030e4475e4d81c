"""Accelerators and lifecycle plugins, one module per technique (diffusers' `hooks/` is the model).

Each module is a stateless pluggy plugin listed in `srd_plugin.manager.BUILTIN_PLUGINS`; its
per-pipeline state lives on `session.plugin_state`, its per-call state on `run.plugin_state`.

* `teacache`: TeaCache (`apply_teacache` / `remove_teacache`), `SRDConfig.teacache`.
* `sageattention`: SageAttention with an SDPA fallback (`apply_sage_attention` /
  `remove_sage_attention`), `SRDConfig.sage_attention`.
* `caches`: composition with the user's own caches (diffusers' `enable_cache`, cache-dit).
* `progress`: the host's progress bar shows the running phase (sketch / render).
* `offload`, `prefetch`, `host_offload`, `memory` (with `placement`): two models on one GPU
  without waste (docs/memory.md).
"""
