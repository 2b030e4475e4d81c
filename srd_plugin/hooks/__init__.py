"""Accelerators as per-instance diffusers hooks, each usable alone and as an SRD plugin.

* `teacache`: TeaCache (`apply_teacache` / `remove_teacache`), `SRDConfig.teacache`.
* `sageattention`: SageAttention with an SDPA fallback (`apply_sage_attention` /
  `remove_sage_attention`), `SRDConfig.sage_attention`.
* `caches`: composition with the user's own caches (diffusers' `enable_cache`, cache-dit).
"""
