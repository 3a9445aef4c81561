"""The Trainer layer: the fit loop, its metric store, loggers and callbacks."""
from mopt_fast.trainer.callbacks import Callback, ModelSummary, TQDMProgressBar
from mopt_fast.trainer.checkpoint import ModelCheckpoint
from mopt_fast.trainer.loggers import CSVLogger, Logger, TensorBoardLogger
from mopt_fast.trainer.timer import Timer
from mopt_fast.trainer.trainer import Trainer

__all__ = ["CSVLogger", "Callback", "Logger", "ModelCheckpoint", "ModelSummary", "TQDMProgressBar", "TensorBoardLogger",
           "Timer", "Trainer"]
