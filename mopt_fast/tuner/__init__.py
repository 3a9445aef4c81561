"""``mopt_fast.tuner``: Lightning's Tuner (the learning-rate finder and the batch-size search), under
the import path of ``lightning.pytorch.tuner``. The searches themselves live with their callbacks
(callbacks/lr_finder.py, callbacks/batch_size_finder.py); the Tuner runs them as a fit that ends
once they are done."""
from __future__ import annotations

from mopt_fast.tuner.tuning import Tuner

__all__ = ["Tuner"]
