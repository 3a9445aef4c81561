"""NeptuneLogger: as in Lightning 2.6, a logger that cannot be made (Neptune, the service, was shut down).

Making one raises Lightning's RuntimeError, with Lightning's message (not NotBuiltError: there is
nothing left to build), so a script that catches it behaves the same.
"""
from __future__ import annotations

from typing import Any

__all__ = ["NeptuneLogger"]

_SUNSET_MESSAGE = (
    "NeptuneLogger is no longer supported. Neptune has been sunset.\n"
    "\n"
    "Please migrate to LitLogger, the recommended logger for AI experiments.\n"
    "See: https://github.com/lightning-ai/litlogger\n"
)


class NeptuneLogger:
    """Always raises RuntimeError when made (Lightning's replacement, LitLogger, is not built here)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(_SUNSET_MESSAGE)
