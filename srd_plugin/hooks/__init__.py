"""Accelerators and lifecycle plugins, one module per technique (diffusers' `hooks/` is the model).

Each module is a stateless pluggy plugin listed in `srd_plugin.manager.BUILTIN_PLUGINS`; its
per-pipeline state lives on `session.plugin_state`, its per-call state on `run.plugin_state`.
"""
