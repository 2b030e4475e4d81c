"""Accelerator and lifecycle plugins, one module per technique (see `srd_plugin.manager.BUILTIN_PLUGINS`)."""
