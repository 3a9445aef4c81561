"""Exceptions of the Lightning-compatible front: the classes Lightning scripts catch
(``lightning.pytorch.utilities.exceptions``), and the error for a Lightning feature mopt_fast does
not build."""
from __future__ import annotations

__all__ = ["CollectiveTimeoutError", "MisconfigurationException", "NotBuiltError", "PossibleUserWarning",
           "SIGTERMException", "not_built"]


class MisconfigurationException(ValueError):
    """A Trainer/module setting that cannot work (the name Lightning uses; a ValueError here)."""


class PossibleUserWarning(UserWarning):
    """Lightning's category for warnings about settings that may be a mistake (a few batches fewer
    than the logging interval, ...): ``warnings.filterwarnings("ignore", category=...)`` works alike."""


class SIGTERMException(SystemExit):
    """Lightning's exception for a SIGTERM sent to a training process: the fit loop raises it after
    the batch in flight when SIGTERM or SIGUSR1 arrived during fit (see trainer/_signals.py), so
    ``Callback.on_exception`` sees it. Its ``code`` is the exit status, 128 + the signal's number
    (Lightning's has none: its process exits with status 0)."""


class CollectiveTimeoutError(RuntimeError):
    """A collective (all_reduce, barrier, ...) did not complete within the strategy's ``timeout``:
    the message names the collective and the ranks that did not join it."""


class _TunerExitException(Exception):
    """Raised by the learning-rate and batch-size finders run by `mopt_fast.tuner.Tuner` once they
    are done: the Trainer ends the entry point there, as a finished run without on_fit_end
    (Lightning's exception of the same name)."""


class NotBuiltError(ImportError, NotImplementedError):
    """A Lightning feature mopt_fast does not build. Both an ImportError (so ``try: from ... import
    X / except ImportError`` in a script takes its fallback) and a NotImplementedError."""


def not_built(feature: str, what_to_do: str = "") -> NotBuiltError:
    """The error for the Lightning feature `feature` (e.g. ``"lightning.pytorch.cli.LightningCLI"``)."""
    message = f"{feature} is not built in mopt_fast (see docs/not-built.md)"
    return NotBuiltError(message + (f"; {what_to_do}" if what_to_do else ""))
