"""The Trainer layer: the fit loop, its metric store, loggers and callbacks."""
from mopt_fast.trainer.callbacks import Callback, ModelSummary, ProgressBar, TQDMProgressBar
from mopt_fast.trainer.checkpoint import ModelCheckpoint
from mopt_fast.trainer.early_stopping import EarlyStopping, EarlyStoppingReason
from mopt_fast.trainer.loggers import CSVLogger, Logger, TensorBoardLogger
from mopt_fast.trainer.lr_monitor import LearningRateMonitor
from mopt_fast.trainer.rich_progress import RichProgressBar, RichProgressBarTheme
from mopt_fast.trainer.timer import Timer
from mopt_fast.trainer.trainer import Trainer

__all__ = [
    "CSVLogger", "Callback", "EarlyStopping", "EarlyStoppingReason", "LearningRateMonitor", "Logger",
    "ModelCheckpoint", "ModelSummary", "ProgressBar", "RichProgressBar", "RichProgressBarTheme", "TQDMProgressBar",
    "TensorBoardLogger", "Timer", "Trainer",
]
