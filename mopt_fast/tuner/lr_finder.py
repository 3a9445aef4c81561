"""``lightning.pytorch.tuner.lr_finder``'s names: the range test's results (`_LRFinder`) and the test."""
from __future__ import annotations

from mopt_fast.callbacks.lr_finder import _LRFinder, lr_find

__all__ = ["_LRFinder", "lr_find"]
