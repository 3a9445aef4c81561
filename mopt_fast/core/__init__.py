"""The module layer (Lightning's ``lightning.pytorch.core``): `LightningModule`,
`LightningDataModule`, the optimizer wrapper and the scheduler config, the hook vocabulary, the
hyperparameters, the Trainer's states, the checkpoint and hparams file formats (saving.py), and
the contract the module may ask of a Trainer (protocol.py). Nothing here imports the callbacks,
the loggers or the Trainer."""
from mopt_fast.core.datamodule import LightningDataModule
from mopt_fast.core.module import LightningModule
from mopt_fast.core.optimizer import LightningOptimizer

__all__ = ["LightningDataModule", "LightningModule", "LightningOptimizer"]
