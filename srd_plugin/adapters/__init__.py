"""Model knowledge, one module per host family; the core knows no model family."""

from .base import Adapter

__all__ = ["Adapter"]
