"""The Trainer engine: the Trainer, its loops (fit, training step, evaluation), argument handling,
hook dispatch, strategies, resuming, and the logging of metrics to loggers."""
from mopt_fast.trainer.trainer import Trainer

__all__ = ["Trainer"]
