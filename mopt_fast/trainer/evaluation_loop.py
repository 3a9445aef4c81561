"""The evaluation loop: validation inside fit (and its sanity check), as Lightning 2.6's
loops/evaluation_loop.py runs it: the module in eval mode (each submodule back to its own mode
afterwards), no gradients, the step hooks around `validation_step`, epoch metrics folded into
callback_metrics at the end, step metrics logged per batch (except in the sanity check)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.trainer._data import iter_continuing, move_to_device, persistent_workers

if TYPE_CHECKING:
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["EvaluationLoop"]


class EvaluationLoop:
    """Runs `validation_step` over the validation loader. Owned by the Trainer (``trainer.val_loop``)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.loader: Any = None
        self.batches_logged = 0  # the loggers' step for validation step metrics, across runs
        # Persistent DataLoader workers: whether this loader's are running, and in a resumed fit
        # whether the original run had them running (see _data.iter_continuing).
        self.workers_started = False
        self.resume_workers_running = False

    def _iterator(self, sanity: bool) -> Any:
        loader = self.loader
        if not persistent_workers(loader):
            return iter(loader)
        continuing = not sanity and loader._iterator is None and self.resume_workers_running
        it = iter_continuing(loader) if continuing else iter(loader)
        self.workers_started = True
        self.resume_workers_running = False
        return it

    def run_in_fit(self, limit: int | float, sanity: bool) -> None:
        """One validation run inside fit: `limit` batches; `sanity` for the sanity check (its
        results are discarded and nothing is logged)."""
        trainer = self.trainer
        model = trainer.lightning_module
        metrics = trainer._metrics
        saved_active, saved_first = metrics.active, metrics.first_loop_iter
        metrics.active = metrics.val
        metrics.reset_results(metrics.val)
        trainer.sanity_checking = sanity
        if sanity:
            trainer._call("on_sanity_check_start")
        # The sanity check is neither training nor validating, as in Lightning.
        trainer.training = False
        trainer.validating = not sanity
        step_fn = model.validation_step
        pass_idx = trainer._takes_batch_idx(step_fn)
        modes = {m: m.training for m in model.modules()}
        trainer._call_module("on_validation_model_eval")
        device = trainer.root_device
        try:
            with torch.no_grad():
                trainer._call("on_validation_start")
                trainer._call("on_validation_epoch_start")
                if limit:
                    it = self._iterator(sanity)
                    batch_idx = 0
                    while batch_idx < limit:
                        try:
                            batch = next(it)
                        except StopIteration:
                            break
                        if device.type != "cpu":
                            batch = move_to_device(batch, device)
                        metrics.on_batch_start(batch)
                        trainer._call("on_validation_batch_start", batch, batch_idx)
                        trainer._current_fx = "validation_step"
                        try:
                            with trainer._precision.forward_context():
                                out = step_fn(batch, batch_idx) if pass_idx else step_fn(batch)
                        finally:
                            trainer._current_fx = None
                        trainer._call("on_validation_batch_end", out, batch, batch_idx)
                        if not sanity:
                            step_logs = metrics.val.metrics(on_step=True)[1]
                            if step_logs:
                                trainer._log_to_loggers(step_logs, step=self.batches_logged)
                            self.batches_logged += 1
                        metrics.on_batch_end()
                        batch_idx += 1
                metrics.epoch_end_reached()
                trainer._call("on_validation_epoch_end")
                if not sanity:
                    trainer._log_to_loggers(metrics.on_epoch_end())
                trainer._call("on_validation_end")
                metrics.reset_results(metrics.val)  # logged Metric objects reset after each run, as Lightning
        finally:
            trainer._call_module("on_validation_model_train")
            for m, training in modes.items():  # each submodule back to its own mode
                m.training = training
            metrics.active, metrics.first_loop_iter = saved_active, saved_first
        # Not in the `finally`: a failure inside leaves the stage as it was for on_exception, as in Lightning.
        trainer.validating = False
        if sanity:
            trainer._call("on_sanity_check_end")
        trainer.sanity_checking = False
        trainer.training = True
