"""The learning-rate range test (Lightning's `LearningRateFinder` callback and `Tuner.lr_find`).

`lr_find` saves the run to a temporary checkpoint, trains `num_training` steps with the learning
rate growing from `min_lr` to `max_lr` (exponentially or linearly) while a callback records the
smoothed loss of each step, stops early once that loss passes `early_stop_threshold` times the
best one, then puts the run back as it was (the checkpoint, the Trainer's settings, the RNG) and,
with `update_attr`, sets the suggested rate on the module (``lr`` / ``learning_rate`` or
`attr_name`, in the module, its hparams or the data module) and on the optimizers. The results
(`_LRFinder`) suggest the rate where the loss falls fastest and plot the curve (matplotlib,
imported only then). Same steps, same numbers as Lightning's on the same seed.
"""
from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from mopt_fast.callbacks._tuning import (
    lightning_hasattr,
    lightning_setattr,
    remove_checkpoint,
    temporary_checkpoint,
)
from mopt_fast.callbacks.callback import Callback
from mopt_fast.callbacks.progress.tqdm_progress import _load_tqdm
from mopt_fast.core.optimizer import LRSchedulerConfig
from mopt_fast.exceptions import MisconfigurationException, _TunerExitException
from mopt_fast.seed import rng_state, set_rng_state

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import TuningTrainer

__all__ = ["LearningRateFinder", "lr_find"]

log = logging.getLogger("mopt_fast.tuner")

_MODES = ("linear", "exponential")


def _lr_attr_name(model: Any, attr_name: str) -> str:
    """The attribute the suggestion goes to: `attr_name`, else ``lr`` or ``learning_rate``."""
    if attr_name:
        if not lightning_hasattr(model, attr_name):
            raise AttributeError(
                f"The attribute name for the learning rate was set to {attr_name}, but could not find this as a field "
                "in `model` or `model.hparams`."
            )
        return attr_name
    options = ("lr", "learning_rate")
    for name in options:
        if lightning_hasattr(model, name):
            return name
    raise AttributeError(
        "When using the learning rate finder, either `model` or `model.hparams` should have one of these fields: "
        f"{options}. If your model has a different name for the learning rate, set it with `.lr_find(attr_name=...)`."
    )


# -- the learning-rate schedules of the range test -----------------------------------------------------
class _RangeLR(LRScheduler):
    """From the optimizer's rate to `end_lr` over `num_iter` steps; `lr`, the rates last set. The
    first two steps keep the start rate (Lightning's schedules, whose numbers the results match)."""

    def __init__(self, optimizer: torch.optim.Optimizer, end_lr: float, num_iter: int, last_epoch: int = -1) -> None:
        self.end_lr = end_lr
        self.num_iter = num_iter
        self._lr: list[Any] = []
        super().__init__(optimizer, last_epoch)

    def _rate(self, base_lr: Any, fraction: float) -> Any:
        raise NotImplementedError

    def get_lr(self) -> list[Any]:
        fraction = (self.last_epoch + 1) / self.num_iter
        if self.last_epoch > 0:
            rates = [self._rate(base, fraction) for base in self.base_lrs]
        else:
            rates = list(self.base_lrs)
        self._lr = rates
        return rates

    @property
    def lr(self) -> list[Any]:
        return self._lr


class _LinearLR(_RangeLR):
    def _rate(self, base_lr: Any, fraction: float) -> Any:
        return base_lr + fraction * (self.end_lr - base_lr)


class _ExponentialLR(_RangeLR):
    def _rate(self, base_lr: Any, fraction: float) -> Any:
        return base_lr * (self.end_lr / base_lr) ** fraction


# -- the results -------------------------------------------------------------------------------------
class _LRFinder:
    """The results of a range test: ``results = {"lr": [...], "loss": [...]}`` (one entry per
    step; the loss smoothed), `suggestion()` and `plot()`."""

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        assert mode in _MODES, "mode should be either `linear` or `exponential`"
        self.mode = mode
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.num_training = num_training
        self.results: dict[str, Any] = {}
        self._total_batch_idx = 0
        self._optimal_idx: int | None = None

    def _exchange_scheduler(self, trainer: TuningTrainer) -> None:
        """The one optimizer starts at `lr_min`, under the range schedule, stepped every batch."""
        if len(trainer.optimizers) != 1:
            raise MisconfigurationException(
                f"`model.configure_optimizers()` returned {len(trainer.optimizers)}, but learning rate finder only "
                "works with single optimizer"
            )
        optimizer = trainer.optimizers[0]
        for group in optimizer.param_groups:
            group["lr"] = self.lr_min
            group["initial_lr"] = self.lr_min
        schedule = _LinearLR if self.mode == "linear" else _ExponentialLR
        trainer.optimizers = [optimizer]
        trainer.lr_scheduler_configs = [LRSchedulerConfig(schedule(optimizer, self.lr_max, self.num_training),
                                                          interval="step")]

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The rate where the loss falls fastest (steepest negative gradient over the finite losses,
        the first `skip_begin` and last `skip_end` points left out); None with fewer than 2 points."""
        losses = torch.tensor(self.results["loss"][skip_begin:-skip_end])
        lrs = torch.tensor(self.results["lr"][skip_begin:-skip_end])
        finite = torch.isfinite(losses)
        losses, lrs = losses[finite], lrs[finite]
        if len(losses) < 2:
            log.error(
                "Failed to compute suggestion for learning rate because there are not enough points. Increase the loop"
                " iteration limits or the size of your dataset/dataloader."
            )
            self._optimal_idx = None
            return None
        gradients = torch.gradient(losses, spacing=[lrs])[0]
        steepest = int(torch.argmin(gradients).item())
        kept = torch.arange(len(self.results["loss"]))[skip_begin:-skip_end][finite]
        self._optimal_idx = int(kept[steepest].item())
        return self.results["lr"][self._optimal_idx]

    def plot(self, suggest: bool = False, show: bool = False, ax: Any = None) -> Any:
        """The loss against the learning rate (log scale for the exponential mode) on `ax` or a new
        figure, with the suggestion as a red dot (`suggest`); returns the figure. Needs matplotlib."""
        try:
            import matplotlib.pyplot as plt
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                "`_LRFinder.plot` needs matplotlib, which is not installed: `pip install matplotlib`", name="matplotlib"
            ) from exc
        lrs, losses = self.results["lr"], self.results["loss"]
        if ax is None:
            fig, ax = plt.subplots()
        else:
            fig = ax.figure
        ax.plot(lrs, losses)
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest:
            self.suggestion()
            if self._optimal_idx:
                ax.plot(lrs[self._optimal_idx], losses[self._optimal_idx], markersize=10, marker="o", color="red")
        if show:
            plt.show()
        return fig


class _LRCallback(Callback):
    """The only callback of the range test's steps: records the rate before each optimizer step and
    the smoothed loss after it (an exponential moving average, `beta`, bias-corrected), and stops
    the run once that loss passes `early_stop_threshold` times the best one. With
    `progress_bar_refresh_rate`, a tqdm bar "Finding best initial lr" counts the steps (Lightning's)."""

    def __init__(self, num_training: int, early_stop_threshold: float | None = 4.0, progress_bar_refresh_rate: int = 0,
                 beta: float = 0.98) -> None:
        self.num_training = num_training
        self.early_stop_threshold = early_stop_threshold
        self.beta = beta
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.avg_loss = 0.0
        self.best_loss = 0.0
        self.progress_bar_refresh_rate = progress_bar_refresh_rate
        self.progress_bar: Any = None

    def _steps(self, trainer: Any) -> bool:
        """This batch ends with an optimizer step (not one of the accumulated ones)."""
        return (trainer.fit_loop.batch_idx + 1) % trainer.accumulate_grad_batches == 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self._steps(trainer):
            return
        if self.progress_bar_refresh_rate and self.progress_bar is None:
            self.progress_bar = _load_tqdm()(desc="Finding best initial lr", total=self.num_training)
        self.lrs.append(trainer.lr_scheduler_configs[0].scheduler.lr[0])

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._steps(trainer):
            return
        if not outputs:  # no loss (training_step returned None): NaN, left out of the suggestion
            self.losses.append(float("nan"))
            return
        if self.progress_bar:
            self.progress_bar.update()
        loss = outputs if isinstance(outputs, torch.Tensor) else outputs["loss"]
        step = trainer.global_step
        self.avg_loss = self.beta * self.avg_loss + (1 - self.beta) * loss.item()
        smoothed = self.avg_loss / (1 - self.beta ** (step + 1))
        if self.early_stop_threshold is not None and step > 1 and smoothed > self.early_stop_threshold * self.best_loss:
            trainer.should_stop = True
            if self.progress_bar:
                self.progress_bar.close()
        trainer.should_stop = trainer.strategy.broadcast(trainer.should_stop)
        if smoothed < self.best_loss or step == 1:
            self.best_loss = smoothed
        self.losses.append(smoothed)


# -- the range test ------------------------------------------------------------------------------------
def lr_find(
    trainer: TuningTrainer,
    model: LightningModule,
    min_lr: float = 1e-8,
    max_lr: float = 1,
    num_training: int = 100,
    mode: str = "exponential",
    early_stop_threshold: float | None = 4.0,
    update_attr: bool = False,
    attr_name: str = "",
) -> _LRFinder | None:
    """Run the range test inside the fit `trainer` is running (see the module docstring); None
    under fast_dev_run (with Lightning's warning)."""
    if trainer.fast_dev_run:
        warnings.warn("Skipping learning rate finder since `fast_dev_run` is enabled.", UserWarning, stacklevel=2)
        return None
    if update_attr:
        attr_name = _lr_attr_name(model, attr_name)
    path = temporary_checkpoint(trainer, "lr_find")
    start_step = trainer.global_step
    recorder = _LRCallback(num_training, early_stop_threshold, progress_bar_refresh_rate=1)
    finder = _LRFinder(mode, min_lr, max_lr, num_training)
    progress_bar = trainer.progress_bar_callback
    finished = False
    try:
        with trainer.tuning_trials([recorder], max_steps=num_training + start_step, limit_val_batches=num_training):
            if progress_bar:
                progress_bar.disable()
            try:
                finder._exchange_scheduler(trainer)
                trainer.run_tuning_trial()
                if trainer.global_step != num_training + start_step:
                    log.info(f"LR finder stopped early after {trainer.global_step} steps due to diverging loss.")
                finder.results.update({"lr": recorder.lrs, "loss": recorder.losses})
                finder._total_batch_idx = getattr(trainer.fit_loop, "total_batch_idx", 0)
            finally:
                if progress_bar:
                    progress_bar.enable()
        finder.results = trainer.strategy.broadcast(finder.results)
        finished = True
    finally:
        trainer.restore_tuning_checkpoint(path)
        remove_checkpoint(trainer, path)
    # After the restore, so that the run goes on with the suggestion.
    if update_attr and finished:
        lr = finder.suggestion()
        if lr is not None:
            lightning_setattr(model, attr_name, lr)
            for optimizer in trainer.optimizers or []:
                for group in optimizer.param_groups:
                    group["lr"] = lr
            log.info(f"Learning rate set to {lr}")
    return finder


class LearningRateFinder(Callback):
    """Runs the learning-rate range test at the start of the fit (Lightning's callback of the same
    name): `optimal_lr` holds the results (`_LRFinder`); with `update_attr` the suggestion is set
    on the module and the optimizer before training starts. Subclass and call `lr_find` from
    another hook (e.g. ``on_train_epoch_start`` at some epochs) to run it elsewhere.

    Args:
        min_lr / max_lr: the range of learning rates tried.
        num_training_steps: the steps (rates) tried.
        mode: "exponential" (default) or "linear" growth of the rate.
        early_stop_threshold: stop once the smoothed loss passes this times the best one (None: never).
        update_attr: set the suggestion on the module (``lr`` / ``learning_rate``, or `attr_name`).
        attr_name: the module's (or its hparams', or the data module's) learning-rate attribute.
    """

    SUPPORTED_MODES = _MODES

    def __init__(
        self,
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> None:
        mode = mode.lower()
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"`mode` should be either of {self.SUPPORTED_MODES}")
        self._min_lr = min_lr
        self._max_lr = max_lr
        self._num_training_steps = num_training_steps
        self._mode = mode
        self._early_stop_threshold = early_stop_threshold
        self._update_attr = update_attr
        self._attr_name = attr_name
        self._early_exit = False  # set by the Tuner: end the fit once the test is done
        self.optimal_lr: _LRFinder | None = None

    def lr_find(self, trainer: TuningTrainer, pl_module: LightningModule) -> None:
        """The range test now; the RNG is left as it was (the test's draws do not change the fit)."""
        state = rng_state()
        try:
            self.optimal_lr = lr_find(
                trainer, pl_module, min_lr=self._min_lr, max_lr=self._max_lr, num_training=self._num_training_steps,
                mode=self._mode, early_stop_threshold=self._early_stop_threshold, update_attr=self._update_attr,
                attr_name=self._attr_name,
            )
        finally:
            set_rng_state(state)
        if self._early_exit:
            raise _TunerExitException()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.lr_find(trainer, pl_module)
