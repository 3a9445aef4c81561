"""``mopt_fast.loggers``: the loggers, under the import path of ``lightning.pytorch.loggers``.

CSVLogger, TensorBoardLogger, WandbLogger, MLFlowLogger, CometLogger and the Logger base class
(wandb, mlflow and comet_ml are imported only when their logger is made). As in Lightning 2.6,
NeptuneLogger is only in ``mopt_fast.loggers.neptune`` (not exported here) and raises Lightning's
RuntimeError when made (Neptune was shut down). LitLogger (Lightning's hosted service) raises `mopt_fast.exceptions.NotBuiltError` (an ImportError and a NotImplementedError) naming it. A logger of your own that subclasses `Logger` and implements
`log_metrics` (and `log_hyperparams`) works with mopt_fast.Trainer.
"""
from __future__ import annotations

from typing import Any

from mopt_fast.exceptions import not_built
from mopt_fast.loggers.comet import CometLogger
from mopt_fast.loggers.csv_logs import CSVLogger
from mopt_fast.loggers.logger import Logger
from mopt_fast.loggers.mlflow import MLFlowLogger
from mopt_fast.loggers.tensorboard import TensorBoardLogger
from mopt_fast.loggers.wandb import WandbLogger

__all__ = ["CSVLogger", "CometLogger", "Logger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger"]

_NOT_BUILT = ("LitLogger",)


def __getattr__(name: str) -> Any:
    if name in _NOT_BUILT:
        raise not_built(f"lightning.pytorch.loggers.{name}",
                        "use CSVLogger, TensorBoardLogger, WandbLogger, MLFlowLogger or CometLogger, or subclass Logger")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
