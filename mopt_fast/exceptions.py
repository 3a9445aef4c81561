"""Exceptions of the Lightning-compatible front."""
from __future__ import annotations

__all__ = ["MisconfigurationException"]


class MisconfigurationException(ValueError):
    """A Trainer/module setting that cannot work (the name Lightning uses; a ValueError here)."""
