"""``mopt_fast.tuner``: Lightning's Tuner (learning-rate finder, batch-size scaling) is not built."""
from __future__ import annotations

from typing import Any

from mopt_fast.exceptions import not_built

__all__ = ["Tuner"]


class Tuner:
    """Lightning's Tuner is not built in mopt_fast: constructing one raises
    `mopt_fast.exceptions.NotBuiltError` (a NotImplementedError and an ImportError)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise not_built("lightning.pytorch.tuner.Tuner (lr_find, scale_batch_size)")
