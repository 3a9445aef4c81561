"""``mopt_fast.cli``: Lightning's command-line interface (LightningCLI) is not built."""
from __future__ import annotations

from typing import Any

from mopt_fast.exceptions import not_built

__all__ = ["LightningCLI"]


class LightningCLI:
    """Lightning's LightningCLI is not built in mopt_fast: constructing one raises
    `mopt_fast.exceptions.NotBuiltError` (a NotImplementedError and an ImportError)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise not_built("lightning.pytorch.cli.LightningCLI",
                        "parse your arguments yourself (argparse) and build the model and Trainer from them")
