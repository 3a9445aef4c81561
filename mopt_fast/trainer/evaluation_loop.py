"""The evaluation loops, as Lightning 2.6's loops/evaluation_loop.py and prediction_loop.py run them.

`EvaluationLoop` runs `validation_step` (inside fit, its sanity check, and `trainer.validate`) or
`test_step` (`trainer.test`) over one or several dataloaders in turn: the module in eval mode
(each submodule back to its own mode afterwards), no gradients (``torch.inference_mode`` for
validate/test under ``Trainer(inference_mode=True)``, ``no_grad`` inside fit), the batch hooks
around the step (with ``dataloader_idx`` only when there are several loaders), step metrics
logged per batch, each loader's epoch metrics ("/dataloader_idx_N" names when several) folded into
callback_metrics and returned as one dict per loader. A CombinedLoader given in a mode other than
"sequential" runs as Lightning runs it: its combined batches, as from one loader (no
``dataloader_idx``, one result), for its length with each loader limited. No host sync per batch beyond what a logger
needs: nothing is read back unless a logger writes step metrics.

`PredictionLoop` runs `predict_step` and collects the predictions (on the CPU) per loader.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from mopt_fast.callbacks.prediction_writer import BasePredictionWriter
from mopt_fast.core.module import LightningModule
from mopt_fast.core.states import RunningStage, TrainerFn
from mopt_fast.exceptions import PossibleUserWarning
from mopt_fast.trainer._combined import BatchesOnly, StepIterator, combined_mode
from mopt_fast.trainer._data import (
    DataSource,
    add_worker_init_fn,
    check_iterable,
    flatten_loaders,
    iter_continuing,
    move_to_device,
    num_batches,
    persistent_workers,
    set_sampler_epoch,
    shut_down_workers,
    without_shuffling,
    worker_check,
)
from mopt_fast.trainer._hooks import is_overridden, is_param_in_hook_signature
from mopt_fast.trainer._lightning_surface import BatchProgress, kind_of
from mopt_fast.trainer._logging import log_to_loggers
from mopt_fast.trainer._metrics import to_scalars
from mopt_fast.trainer._profiling import ProfiledIterator
from mopt_fast.trainer._warn import warn
from mopt_fast.utilities.combined_loader import CombinedLoader, combined_length

if TYPE_CHECKING:
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["EvaluationLoop", "PredictionLoop", "print_results"]


def _grad_context(trainer: Trainer, inference_mode: bool) -> contextlib.AbstractContextManager:
    """Lightning's `_no_grad_context`: inference_mode unless it is off, the process group is gloo's
    or the strategy is FSDP (where it breaks), then no_grad."""
    from mopt_fast.trainer.strategies import FSDPStrategy

    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
        return torch.no_grad()
    if isinstance(trainer.strategy, FSDPStrategy) or not inference_mode:
        return torch.no_grad()
    return torch.inference_mode()


def _verify_dataloader_idx(module: Any, hooks: tuple[str, ...], several: bool, prefix: str) -> None:
    """Lightning's `_verify_dataloader_idx_requirement`: with several loaders the step and batch
    hooks must take `dataloader_idx`; with one, it may only be there with a default."""
    for hook in hooks:
        fn = getattr(module, hook, None)
        if fn is None:
            continue
        present = is_param_in_hook_signature(fn, "dataloader_idx")
        if not several:
            if present:
                params = inspect.signature(fn).parameters
                if "dataloader_idx" in params and params["dataloader_idx"].default is inspect.Parameter.empty:
                    raise RuntimeError(
                        f"You provided only a single `{prefix}_dataloader`, but have included `dataloader_idx` in "
                        f"`{type(module).__name__}.{hook}()`. Either remove the argument or give it a default value "
                        "i.e. `dataloader_idx=0`."
                    )
        elif not present:
            raise RuntimeError(
                f"You provided multiple `{prefix}_dataloader`, but no `dataloader_idx` argument in "
                f"`{type(module).__name__}.{hook}()`. Try adding `dataloader_idx=0` to its signature."
            )


def _takes_iter(step_name: str, step_fn: Any) -> bool:
    """The step is the `dataloader_iter` flavor (with Lightning's warning, given at each run as its)."""
    if not is_param_in_hook_signature(step_fn, "dataloader_iter", explicit=True):
        return False
    warn(f"Found `dataloader_iter` argument in the `{step_name}`. Note that the support for this signature is "
         "experimental and the behavior is subject to change.")
    return True


def _sequential(loaders: list[Any], limits: list[int | float]) -> Any:
    """The loaders one after the other, each up to its limit, as ``(batch, batch_idx, dataloader_idx)``."""
    combined = CombinedLoader(loaders, "sequential")
    combined.limits = list(limits)
    return iter(combined)


def _is_shuffled(loader: Any) -> bool:
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    if batch_sampler is not None and getattr(batch_sampler, "sampler", None) is not None:
        sampler = batch_sampler.sampler
    return isinstance(sampler, torch.utils.data.RandomSampler)


def _forward(forward_context: Callable[[], contextlib.AbstractContextManager], step_fn: Callable,
             args: tuple) -> Any:
    """A step under the precision plugin's forward context (autocast)."""
    with forward_context():
        return step_fn(*args)


class _ModuleModes:
    """Each submodule's train/eval mode, captured before evaluation and put back after it."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.modes = {name: m.training for name, m in module.named_modules()}

    def restore(self, module: torch.nn.Module) -> None:
        for name, m in module.named_modules():
            if name in self.modes:
                m.training = self.modes[name]


class _Loop:
    """What the evaluation and prediction loops share: where their loaders come from and how."""

    def __init__(self, trainer: Trainer, fn: TrainerFn, stage: RunningStage, inference_mode: bool) -> None:
        self.trainer = trainer
        self.fn = fn
        self.stage = stage
        self.inference_mode = inference_mode
        self.prefix = stage.dataloader_prefix
        self.source = DataSource(None, f"{self.prefix}_dataloader")
        self.loaders: list[Any] | None = None  # processed, flattened; None until set up
        self.max_batches: list[int | float] = []
        # A CombinedLoader the user gave in a mode other than "sequential" (its `flattened` being
        # `loaders`): evaluation draws its combined batches, as Lightning's; None: the loaders in turn.
        self.combined: Any = None
        # Persistent DataLoader workers: whether these loaders' are running, and in a resumed fit
        # whether the original run had them running (see _data.iter_continuing).
        self.workers_started = False
        self.resume_workers_running = False
        # Batches run: in all runs of this loop (Lightning's batch_progress.total; the sanity
        # check's are not counted) and in the current run (.current).
        self.batches_total = 0
        self.batches_current = 0
        # The submodules' modes before the run, put back after it. The loop's, as Lightning's: a
        # batch-size search's trials (runs inside the run's start hook) capture them anew.
        self.module_modes = _ModuleModes(torch.nn.Module())

    @property
    def batch_progress(self) -> BatchProgress:
        """Lightning's ``batch_progress`` (``total.ready``, ``current.ready``...): batches run."""
        return BatchProgress(self.batches_total, self.batches_current)

    def reset_progress(self) -> None:
        self.batches_total = self.batches_current = 0

    @property
    def limit(self) -> int | float:
        return getattr(self.trainer, f"limit_{self.prefix}_batches")

    def _request(self) -> list[Any]:
        trainer = self.trainer
        loaders = self.source.request(trainer)
        mode = combined_mode(loaders)
        self.combined = None
        if mode is not None:  # a CombinedLoader: its loaders, one after the other, or in its mode
            if mode != "sequential":
                if self.fn == TrainerFn.PREDICTING:
                    raise ValueError('`trainer.predict()` only supports the `CombinedLoader(mode="sequential")` mode.')
                self.combined = loaders
            loaders = list(loaders.flattened)
        processed = []
        for loader in flatten_loaders(loaders):
            check_iterable(loader, self.source, self.fn.value)
            if self.stage != RunningStage.TRAINING and _is_shuffled(loader):
                warn(
                    f"Your `{self.prefix}_dataloader`'s sampler has shuffling enabled, it is strongly recommended that "
                    "you turn shuffling off for val/test dataloaders.", PossibleUserWarning)
            if trainer.use_distributed_sampler:
                loader = trainer.strategy.process_loader(loader, shuffle_default=False)
            worker_check(loader, f"{self.prefix}_dataloader", trainer.num_devices,
                         trainer.reload_dataloaders_every_n_epochs)
            add_worker_init_fn(loader, trainer.global_rank)
            if self.fn != TrainerFn.FITTING:
                set_sampler_epoch(loader, trainer.current_epoch)
            processed.append(loader)
        if self.fn == TrainerFn.FITTING and trainer.overfit_batches > 0:
            processed = without_shuffling(processed, self.prefix)
        if self.combined is not None:
            self.combined.flattened = processed
        return processed

    def _runs(self, max_batches: list[int | float]) -> tuple[list[Any], list[int | float]]:
        """What a run draws from in turn and how many batches from each: the loaders, or a
        CombinedLoader in its own mode as one (its length with `max_batches` as the limits, as
        Lightning's fetcher counts it)."""
        assert self.loaders is not None
        if self.combined is None:
            return self.loaders, max_batches
        self.combined.limits = list(max_batches)
        return [self.combined], [combined_length(str(combined_mode(self.combined)), self.loaders, max_batches)]

    def _iterator(self, loader: Any, sanity: bool) -> Any:
        if loader is self.combined:  # its batches alone (the loop counts batch_idx itself)
            it: Any = BatchesOnly(iter(loader))
        elif not persistent_workers(loader):
            it = iter(loader)
        else:
            continuing = not sanity and loader._iterator is None and self.resume_workers_running
            it = iter_continuing(loader) if continuing else iter(loader)
            self.workers_started = True
        profiler = self.trainer.hooks.profiler
        if profiler is None:
            return it
        return ProfiledIterator(it, profiler, f"[_EvaluationLoop].{self.prefix}_next")  # Lightning's action

    def teardown(self) -> None:

        for loader in self.loaders or ():
            shut_down_workers(loader)


class EvaluationLoop(_Loop):
    """validation_step or test_step over the loaders of `validate` / `test`, or of fit's validation.
    Owned by the Trainer: ``trainer.val_loop`` (inside fit), ``validate_loop``, ``test_loop``."""

    def __init__(self, trainer: Trainer, fn: TrainerFn, stage: RunningStage, verbose: bool = True,
                 inference_mode: bool = True) -> None:
        super().__init__(trainer, fn, stage, inference_mode)
        self.verbose = verbose
        testing = stage == RunningStage.TESTING
        name = "test" if testing else "validation"
        self.step_name = f"{name}_step"
        self.hooks = {k: f"on_{name}_{k}" for k in ("start", "end", "epoch_start", "epoch_end", "batch_start",
                                                     "batch_end", "model_eval", "model_train")}
        self.batches_logged: list[int] = []  # per loader: the loggers' step for step metrics
        self._has_run = False
        self.last_reload_epoch: float = -float("inf")  # reload_dataloaders_every_n_epochs counts from here

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint of a fit records of its validation loop."""
        return {"batches_logged": list(self.batches_logged), "workers_started": self.workers_started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches_logged = list(state["batches_logged"])
        self.workers_started = bool(state["workers_started"])
        # The original run's persistent workers were running: a resumed fit continues them.
        self.resume_workers_running = self.workers_started

    def reset_data(self) -> None:
        """Forget the loaders (a new fit/validate/test asks for them again)."""
        self.loaders = None
        self.combined = None
        self.max_batches = []
        self.batches_logged = []
        self.last_reload_epoch = -float("inf")

    def should_reload(self) -> bool:
        """Lightning's `_should_reload_val_dl`: reload_dataloaders_every_n_epochs epochs since the last request."""
        n = self.trainer.reload_dataloaders_every_n_epochs
        return bool(n) and self.trainer.current_epoch - self.last_reload_epoch >= n

    def setup_data(self) -> None:
        """Ask for the loaders (once per fit, and again every reload_dataloaders_every_n_epochs;
        every validate/test) and count their batches."""
        if self.loaders is not None and self.fn == TrainerFn.FITTING and not self.should_reload():
            return
        trainer = self.trainer
        limit = self.limit
        if limit == 0 or not is_overridden(self.step_name, trainer.lightning_module, LightningModule):
            self.loaders, self.max_batches, self.combined = [], [], None
            return
        # Lightning's: the sanity check's request counts only if validation runs in the first epoch.
        every = trainer.check_val_every_n_epoch
        if self.fn == TrainerFn.FITTING and (not trainer.sanity_checking or (
                trainer.enable_validation and (every is None or (trainer.current_epoch + 1) % every == 0))):
            self.last_reload_epoch = trainer.current_epoch
        self.loaders = self._request()
        self.max_batches = [num_batches(dl, limit, self.prefix) for dl in self.loaders]
        self.batches_logged = [0] * len(self.loaders)

    def run(self) -> list[dict[str, Any]]:
        """One pass over every loader (the sanity check's few batches when the trainer is sanity
        checking); returns each loader's logged epoch metrics."""
        trainer = self.trainer
        self.setup_data()
        sanity = trainer.sanity_checking
        max_batches = self.max_batches
        if sanity:
            max_batches = [min(trainer.num_sanity_val_steps, n) for n in max_batches]
        if sum(max_batches) == 0:
            return []
        self.batches_current = 0
        self._has_run = False  # Lightning's: a batch of this run (not the sanity check's) has run
        model = trainer.lightning_module
        hooks = self.hooks
        loaders = self.loaders
        assert model is not None and loaders is not None  # attached, and set up above
        several = len(loaders) > 1 and self.combined is None  # Lightning's: dataloader_idx only for "sequential"
        takes_iter = _takes_iter(self.step_name, getattr(model, self.step_name))
        _verify_dataloader_idx(model, (self.step_name,), several and not takes_iter, self.prefix)
        _verify_dataloader_idx(model, (hooks["batch_start"], hooks["batch_end"]), several, self.prefix)
        if self.fn == TrainerFn.FITTING:
            for loader in loaders:  # some users shuffle validation by the training progress
                set_sampler_epoch(loader, trainer.current_epoch)
        metrics = trainer.metric_store
        saved_active, saved_first = metrics.active, metrics.first_loop_iter
        metrics.active = results = metrics.val
        metrics.reset_results(results)
        results.dataloader_idx = None
        step_fn = getattr(model, self.step_name)
        pass_idx = is_param_in_hook_signature(step_fn, "batch_idx", min_args=2)
        self.module_modes = _ModuleModes(model)
        trainer.hooks.call_module(hooks["model_eval"])
        device = trainer.root_device
        transfer = trainer.batch_transfer
        call = trainer.hooks.call
        run_as = trainer.hooks.run_as
        forward_context = trainer.precision_plugin.forward_context
        outputs: list[dict[str, Any]] = []
        try:
            with _grad_context(trainer, self.inference_mode and self.fn != TrainerFn.FITTING):
                call(hooks["start"])
                if self.loaders is not loaders and self.loaders:  # a batch-size search at the start asked anew
                    loaders, max_batches = self.loaders, self.max_batches
                call(hooks["epoch_start"])
                previous = 0
                sources, limits = self._runs(max_batches)
                if takes_iter:  # `validation_step(self, dataloader_iter)`: the loop below has no loader to run
                    combined = _sequential(loaders, max_batches) if self.combined is None else iter(self.combined)
                    self._run_iter_flavor(StepIterator(combined, sum(limits)), step_fn, several, sanity, outputs)
                for dl_idx, loader in enumerate(sources if not takes_iter else ()):
                    it = self._iterator(loader, sanity)
                    idx = (dl_idx,) if several else ()
                    limit, batch_idx = limits[dl_idx], 0
                    while batch_idx < limit:
                        try:
                            batch = next(it)
                        except StopIteration:
                            break
                        if dl_idx != previous:  # the loader changed: the previous one's epoch metrics
                            outputs.append(self._loader_outputs(sanity))
                        previous = dl_idx
                        if transfer is not None:  # a batch-transfer hook is overridden
                            batch = transfer(batch, dl_idx)
                        elif device.type != "cpu":
                            batch = move_to_device(batch, device)
                        metrics.on_batch_start(batch, dl_idx if several else None)
                        self.batches_current += 1
                        self.batches_total += 1
                        call(hooks["batch_start"], batch, batch_idx, *idx)
                        args = (batch, batch_idx, *idx) if pass_idx else (batch, *idx)
                        out = run_as(self.step_name, _forward, forward_context, step_fn, args)
                        call(hooks["batch_end"], out, batch, batch_idx, *idx)
                        metrics.on_batch_end()
                        if not sanity:
                            self._log_step(results, dl_idx)
                        batch_idx += 1
                self.resume_workers_running = False
                outputs.append(self._loader_outputs(sanity))
                results.dataloader_idx = None
                call(hooks["epoch_end"])
                metrics.first_loop_iter = None
                epoch_end_outputs = self._loader_outputs(sanity)
                logged = {k: v for out in outputs for k, v in out.items()}
                logged.update(epoch_end_outputs)
                for out in outputs:
                    out.update(epoch_end_outputs)
                if not sanity:
                    log_to_loggers(trainer, logged)
                call(hooks["end"])
                metrics.reset_results(results)
        except BaseException:
            self.module_modes.restore(model)  # each submodule back to its own mode, also after a failure
            metrics.active, metrics.first_loop_iter = saved_active, saved_first
            raise
        if is_overridden(hooks["model_train"], model, LightningModule):
            trainer.hooks.call_module(hooks["model_train"])
        else:
            self.module_modes.restore(model)
        metrics.active, metrics.first_loop_iter = saved_active, saved_first
        if self.verbose and trainer.is_global_zero and not sanity:
            print_results(outputs, self.stage.value)
        trainer.fit_loop.last_val_time = time.monotonic()  # time-based val_check_interval counts from here
        return outputs

    def _run_iter_flavor(self, fetcher: StepIterator, step_fn: Callable, several: bool, sanity: bool,
                         outputs: list[dict[str, Any]]) -> None:
        """The batches of a ``*_step(self, dataloader_iter)`` run, as Lightning's evaluation loop runs
        them with its `_DataLoaderIterDataFetcher`: the step pulls ``(batch, batch_idx,
        dataloader_idx)`` itself (no batch transfer); on_*_batch_start is given the last batch
        fetched before the step, on_*_batch_end the last one fetched by it; a StopIteration let out
        of the step ends the run."""
        trainer, hooks = self.trainer, self.hooks
        metrics, results = trainer.metric_store, trainer.metric_store.val
        call, run_as = trainer.hooks.call, trainer.hooks.run_as
        forward_context = trainer.precision_plugin.forward_context
        previous = 0
        while not fetcher.done:
            batch, batch_idx, dl_idx = fetcher.batch, fetcher.batch_idx, fetcher.dataloader_idx
            if dl_idx != previous:  # the loader changed: the previous one's epoch metrics
                outputs.append(self._loader_outputs(sanity))
            previous = dl_idx
            metrics.on_batch_start(batch, dl_idx if several else None)
            self.batches_current += 1
            self.batches_total += 1
            call(hooks["batch_start"], batch, batch_idx, *((dl_idx,) if several else ()))
            try:
                out = run_as(self.step_name, _forward, forward_context, step_fn, (fetcher,))
            except StopIteration:
                break
            batch, batch_idx, dl_idx = fetcher.batch, fetcher.batch_idx, fetcher.dataloader_idx
            call(hooks["batch_end"], out, batch, batch_idx, *((dl_idx,) if several else ()))
            metrics.on_batch_end()
            if not sanity:
                self._log_step(results, dl_idx)

    def _log_step(self, results: Any, dl_idx: int) -> None:
        """After a batch that is not the sanity check's: the step metrics to the loggers, at this
        loader's logging step (Lightning's evaluation step counter), which then advances."""
        self._has_run = True
        trainer = self.trainer
        if trainer.loggers:
            step_logs = results.metrics(on_step=True)[1]
            if step_logs:
                log_to_loggers(trainer, step_logs, step=self.batches_logged[dl_idx])
        self.batches_logged[dl_idx] += 1

    def _loader_outputs(self, sanity: bool) -> dict[str, Any]:
        """The epoch metrics of the loader just finished (or, after the epoch-end hook, of none),
        folded into callback_metrics; the logged ones returned (Lightning's
        `update_eval_epoch_metrics`)."""
        metrics = self.trainer.metric_store
        metrics.first_loop_iter = None
        if sanity:
            return {}
        callback, log, pbar = metrics._active().metrics(on_step=False)
        metrics._update(callback, log, pbar)
        return log


class PredictionLoop(_Loop):
    """predict_step over the predict loaders; ``trainer.predict_loop``."""

    def __init__(self, trainer: Trainer, inference_mode: bool = True) -> None:
        super().__init__(trainer, TrainerFn.PREDICTING, RunningStage.PREDICTING, inference_mode)
        self.return_predictions = True
        self._predictions: list[list[Any]] = []  # per loader, per batch
        self._warned_none = False
        # For the prediction writers (as Lightning's prediction loop keeps them): the
        # dataset indices of the current batch, and of every batch of the run per loader.
        self.current_batch_indices: list[int] = []
        self.epoch_batch_indices: list[list[list[int]]] = []

    @property
    def predictions(self) -> list[Any]:
        """The predictions of the run: per batch, or per loader then batch with several (Lightning's)."""
        if not self._predictions:
            return self._predictions
        return self._predictions[0] if len(self._predictions) == 1 else self._predictions

    def setup_data(self) -> None:
        if self.limit == 0:
            self.loaders, self.max_batches = [], []
            return
        self.loaders = self._request()
        self.max_batches = [num_batches(dl, self.limit, self.prefix) for dl in self.loaders]

    def _start_run(self, record_indices: bool) -> list[Any]:
        """Empty predictions and batch indices for the loaders set up; with `record_indices` (a
        prediction writer), the loaders wrapped to record them. Returns the loaders to run."""
        loaders = self.loaders
        assert loaders is not None  # set up by the run
        self._predictions = [[] for _ in loaders]
        self.epoch_batch_indices = [[] for _ in loaders]
        if record_indices:  # the batch indices are recorded as the loaders draw them
            loaders = self.loaders = [record_batch_indices(dl) for dl in loaders]
        return loaders

    def _writer_intervals(self) -> tuple[bool, bool]:
        """Whether a prediction writer (mopt_fast's or Lightning's BasePredictionWriter) writes per
        batch, per epoch."""
        kinds = kind_of(BasePredictionWriter, "BasePredictionWriter")
        writers: list[Any] = [cb for cb in self.trainer.callbacks if isinstance(cb, kinds)]
        return any(cb.interval.on_batch for cb in writers), any(cb.interval.on_epoch for cb in writers)

    def _store_batch_indices(self, loader: Any, dl_idx: int, batch_idx: int, on_batch: bool, on_epoch: bool) -> None:
        recorder = getattr(loader, "batch_sampler", None)
        if not isinstance(recorder, _IndexRecorder):
            warn(f"Couldn't infer the batch indices fetched from your dataloader: `{type(loader).__name__}`")
            return
        indices = recorder.seen_batch_indices[batch_idx]
        if on_epoch:
            self.epoch_batch_indices[dl_idx].append(indices)
        if on_batch:
            self.current_batch_indices = indices

    def _run_iter_flavor(self, fetcher: StepIterator, step_fn: Callable, several: bool, keep: bool) -> None:
        """`EvaluationLoop._run_iter_flavor` for predict_step (Lightning's prediction loop)."""
        trainer = self.trainer
        call, run_as = trainer.hooks.call, trainer.hooks.run_as
        forward_context = trainer.precision_plugin.forward_context
        while not fetcher.done:
            batch, batch_idx, dl_idx = fetcher.batch, fetcher.batch_idx, fetcher.dataloader_idx
            self.batches_current += 1
            self.batches_total += 1
            call("on_predict_batch_start", batch, batch_idx, *((dl_idx,) if several else ()))
            try:
                out = run_as("predict_step", _forward, forward_context, step_fn, (fetcher,))
            except StopIteration:
                break
            if out is None and not self._warned_none:
                self._warned_none = True
                warn("predict returned None if it was on purpose, ignore this warning...")
            batch, batch_idx, dl_idx = fetcher.batch, fetcher.batch_idx, fetcher.dataloader_idx
            call("on_predict_batch_end", out, batch, batch_idx, *((dl_idx,) if several else ()))
            if keep:
                self._predictions[dl_idx].append(move_to_device(out, torch.device("cpu")))

    def run(self) -> list[Any] | None:
        trainer = self.trainer
        self.setup_data()
        if sum(self.max_batches) == 0:
            return None
        model = trainer.lightning_module
        loaders = self.loaders
        assert model is not None and loaders is not None  # attached, and set up above
        several = len(loaders) > 1
        takes_iter = _takes_iter("predict_step", model.predict_step)
        _verify_dataloader_idx(model, ("predict_step",), several and not takes_iter, self.prefix)
        _verify_dataloader_idx(model, ("on_predict_batch_start", "on_predict_batch_end"), several, self.prefix)
        on_batch, on_epoch = self._writer_intervals()
        loaders = self._start_run(on_batch or on_epoch)
        keep = self.return_predictions or on_epoch
        self.batches_current = 0
        step_fn = model.predict_step
        pass_idx = is_param_in_hook_signature(step_fn, "batch_idx", min_args=2)
        self.module_modes = _ModuleModes(model)
        trainer.hooks.call_module("on_predict_model_eval")
        device, cpu = trainer.root_device, torch.device("cpu")
        transfer = trainer.batch_transfer
        forward_context = trainer.precision_plugin.forward_context
        call = trainer.hooks.call
        run_as = trainer.hooks.run_as
        profiler = trainer.hooks.profiler
        try:
            with _grad_context(trainer, self.inference_mode):
                call("on_predict_start")
                if self.loaders is not loaders:  # a batch-size search at the start asked for them anew
                    loaders = self._start_run(on_batch or on_epoch)
                call("on_predict_epoch_start")
                if takes_iter:  # `predict_step(self, dataloader_iter)`: the loop below has no loader to run
                    self._run_iter_flavor(StepIterator(_sequential(loaders, self.max_batches), sum(self.max_batches)),
                                          step_fn, several, keep)
                for dl_idx, loader in enumerate(loaders if not takes_iter else ()):
                    it = iter(loader)
                    if profiler is not None:
                        it = ProfiledIterator(it, profiler, "[_PredictionLoop].predict_next")
                    idx = (dl_idx,) if several else ()
                    limit, batch_idx = self.max_batches[dl_idx], 0
                    while batch_idx < limit:
                        try:
                            batch = next(it)
                        except StopIteration:
                            break
                        if transfer is not None:  # a batch-transfer hook is overridden
                            batch = transfer(batch, dl_idx)
                        elif device.type != "cpu":
                            batch = move_to_device(batch, device)
                        self.batches_current += 1
                        self.batches_total += 1
                        if on_batch or on_epoch:
                            self._store_batch_indices(loader, dl_idx, batch_idx, on_batch, on_epoch)
                        call("on_predict_batch_start", batch, batch_idx, *idx)
                        args = (batch, batch_idx, *idx) if pass_idx else (batch, *idx)
                        out = run_as("predict_step", _forward, forward_context, step_fn, args)
                        if out is None and not self._warned_none:
                            self._warned_none = True
                            warn("predict returned None if it was on purpose, ignore this warning...")
                        call("on_predict_batch_end", out, batch, batch_idx, *idx)
                        if keep:
                            self._predictions[dl_idx].append(move_to_device(out, cpu))
                        batch_idx += 1
                call("on_predict_epoch_end")
                result = self.predictions if self.return_predictions else None
                if not self.return_predictions:
                    self._predictions = []
                self.epoch_batch_indices = []
                call("on_predict_end")
        finally:
            self.module_modes.restore(model)
        return result


class _IndexRecorder:
    """A batch sampler that records the indices of each batch it gives (Lightning's
    `_IndexBatchSamplerWrapper`): ``seen_batch_indices``, reset at each new iteration."""

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self.seen_batch_indices: list[list[int]] = []

    def __iter__(self) -> Any:
        self.seen_batch_indices = []
        for indices in self.batch_sampler:
            self.seen_batch_indices.append(indices)
            yield indices

    def __len__(self) -> int:
        return len(self.batch_sampler)


def record_batch_indices(loader: Any) -> Any:
    """`loader` drawing its batches through an `_IndexRecorder` (a copy of a DataLoader with every
    other setting kept; Lightning re-creates its predict loaders so, too); others as they are."""
    if not isinstance(loader, DataLoader) or loader.batch_sampler is None or isinstance(
            loader.batch_sampler, _IndexRecorder):
        return loader
    workers = {}
    if loader.num_workers > 0:
        workers = dict(prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers,
                       multiprocessing_context=loader.multiprocessing_context)
    return DataLoader(
        loader.dataset, batch_sampler=_IndexRecorder(loader.batch_sampler), num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn, generator=loader.generator, **workers,
    )


def print_results(results: list[dict[str, Any]], stage: str) -> None:
    """Lightning's results table after validate/test (`_EvaluationLoop._print_results`): rich's
    when rich is installed, else the same table in text."""
    results = [{k.split("/dataloader_idx_")[0]: v for k, v in r.items()} for r in results]
    names = sorted({k for r in results for k in r})
    if not names:
        return
    headers = [f"DataLoader {i}" for i in range(len(results))]
    term_size = shutil.get_terminal_size(fallback=(120, 30)).columns or 120
    max_length = int(min(max(len(max(names, key=len)), len(max(headers, key=len)), 25), term_size / 2))
    rows: list[list[str]] = [[] for _ in names]
    for r in results:
        for name, row in zip(names, rows):
            val = r.get(name)
            if val is None:
                row.append(" ")
                continue
            if isinstance(val, torch.Tensor):
                val = val.item() if val.numel() == 1 else val.tolist()
            row.append(f"{val}")
    num_cols = int((term_size - max_length) / max_length)
    for i in range(0, len(headers), num_cols):
        table_headers = [f"{stage} Metric".capitalize(), *headers[i: i + num_cols]]
        table_rows = [row[i: i + num_cols] for row in rows]
        try:
            from rich import get_console
            from rich.table import Column, Table
        except ImportError:
            _print_text_table(table_headers, names, table_rows, max_length, term_size)
            continue
        columns = [Column(h, justify="center", style="magenta", width=max_length) for h in table_headers]
        columns[0].style = "cyan"
        table = Table(*columns)
        for name, row in zip(names, table_rows):
            table.add_row(name, *row)
        get_console().print(table)


def _print_text_table(headers: list[str], names: list[str], rows: list[list[str]], max_length: int,
                      term_size: int) -> None:
    row_format = f"{{:^{max_length}}}" * len(headers)
    half = int(term_size / 2)
    try:
        if sys.stdout.encoding is not None:
            "─".encode(sys.stdout.encoding)
    except UnicodeEncodeError:
        bar_character = "-"
    else:
        bar_character = "─"
    bar = bar_character * term_size
    lines = [bar, row_format.format(*headers).rstrip(), bar]
    for name, row in zip(names, rows):
        if len(name) > half:
            while len(name) > half:
                lines.append(row_format.format(name[:half], *row).rstrip())
                name = name[half:]
            lines.append(row_format.format(name, " ").rstrip())
        else:
            lines.append(row_format.format(name, *row).rstrip())
    lines.append(bar)
    print(os.linesep.join(lines))


def results_to_scalars(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The returned results of validate/test: the tensors as Python numbers."""
    return [to_scalars(r) for r in results]
