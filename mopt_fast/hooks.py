"""The test and predict hooks of Lightning 2.6 (``lightning.pytorch.core.hooks``): mixed into
`LightningModule` and `Callback`, so `trainer.test` / `trainer.predict` find them and a user's
``super().on_test_epoch_end()`` works. Defaults are Lightning's: no-ops, except the model-mode
hooks (eval / train) and `predict_step` (``self(batch)``)."""
from __future__ import annotations

from typing import Any

from mopt_fast.exceptions import MisconfigurationException

__all__ = ["EVAL_CALLBACK_HOOKS", "EvaluationCallbackHooks", "EvaluationModelHooks"]

# The callback hooks this file adds (the fit and validation ones are in trainer/callbacks.py).
EVAL_CALLBACK_HOOKS = (
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start",
    "on_test_batch_end", "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end",
)


class EvaluationModelHooks:
    """test_step / predict_step, their dataloaders and hooks, for a LightningModule."""

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        """Override to run `trainer.test`; logs with ``self.log`` as validation_step does."""

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        """One batch's predictions: by default ``self(batch)``."""
        batch = kwargs.get("batch", args[0])
        return self(batch)  # type: ignore[operator]

    def test_dataloader(self) -> Any:
        raise MisconfigurationException("`test_dataloader` must be implemented to be used with the Lightning Trainer")

    def predict_dataloader(self) -> Any:
        raise MisconfigurationException(
            "`predict_dataloader` must be implemented to be used with the Lightning Trainer"
        )

    def prepare_data(self) -> None:
        """Download or write data once per node (local rank 0) before `setup`."""

    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...

    def on_test_model_eval(self) -> None:
        self.trainer.model.eval()  # type: ignore[attr-defined]

    def on_test_model_train(self) -> None:
        self.trainer.model.train()  # type: ignore[attr-defined]

    def on_predict_model_eval(self) -> None:
        self.trainer.model.eval()  # type: ignore[attr-defined]


class EvaluationCallbackHooks:
    """The test and predict hooks of a Callback: ``(trainer, pl_module, ...)``, no-ops."""

    def on_test_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_test_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_test_epoch_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None: ...
    def on_predict_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_predict_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_predict_epoch_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None: ...
