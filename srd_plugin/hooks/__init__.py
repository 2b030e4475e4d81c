"""Accelerator and lifecycle plugins, one module per technique (see `srd_plugin.manager.BUILTIN_PLUGINS`).

* `teacache`: TeaCache (`apply_teacache` / `remove_teacache`), `SRDConfig.teacache`.
* `sageattention`: SageAttention with an SDPA fallback (`apply_sage_attention` /
  `remove_sage_attention`), `SRDConfig.sage_attention`.
* `caches`: composition with the user's own caches (diffusers' `enable_cache`, cache-dit).
* `progress`: the host's progress bar shows the running phase (sketch / render).
"""
