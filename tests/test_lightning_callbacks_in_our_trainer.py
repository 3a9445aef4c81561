"""Lightning 2.6's own built-in callbacks inside mopt_fast.Trainer, one by one, side by side with
the same callback inside Lightning's Trainer on the same seed and data: same weights (bitwise),
same files, same logged values, same callback state. Then the public surface those callbacks read
(``trainer.strategy``, the loops' progress counters, ``estimated_stepping_batches``...), compared
with Lightning's."""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import types
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from callback_helpers import files_under, plain, recorder_class
from torch import nn
from torch.utils.data import DataLoader

import mopt_fast

import lightning_cases as cases
from helpers import importorskip_unless_ci

pl = importorskip_unless_ci("lightning.pytorch")

FRAMEWORKS = ("lightning", "mopt_fast")
C = pl.callbacks
# A Lightning logger that keeps what it is given (the same class in both Trainers).
Recorder = recorder_class(pl.loggers.Logger)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def data(n: int = 96, batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    return cases.make_data(n, batch_size)


# -- the modules ---------------------------------------------------------------------------------------
def with_scheduler(LM: type) -> type:
    return cases.automatic(scheduler="step_interval")(LM)


def with_predict(LM: type) -> type:
    class Predicting(cases.automatic()(LM)):
        def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.net(batch[0])

    return Predicting


def with_backbone(LM: type) -> type:
    """A `backbone` (what BackboneFinetuning freezes) and a head; the optimizer holds the head only."""
    class Finetuned(cases.automatic()(LM)):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(8, 8), nn.Tanh())

        def compute_loss(self, batch: Any) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(self.backbone(x)), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)

    return Finetuned


def with_batchnorm(LM: type) -> type:
    """A BatchNorm layer: StochasticWeightAveraging adds an epoch that recomputes its statistics."""
    class Normalized(cases.automatic()(LM)):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1))

    return Normalized


def spiking(LM: type) -> type:
    """Its loss jumps a hundredfold at global step 9 (SpikeDetection stops the fit there)."""
    class Spiking(cases.automatic()(LM)):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = self.compute_loss(batch)
            return loss * 100 if self.global_step == 9 else loss

    return Spiking


def failing(LM: type) -> type:
    """Raises in the training step of epoch 1, batch 2 (OnExceptionCheckpoint saves then)."""
    class Failing(cases.automatic()(LM)):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.current_epoch == 1 and batch_idx == 2:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    return Failing


class Writer(C.BasePredictionWriter):
    """Keeps what Lightning's BasePredictionWriter hands it, per batch and per epoch."""

    def __init__(self) -> None:
        super().__init__("batch_and_epoch")
        self.batches: list[Any] = []
        self.epochs: list[Any] = []

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: Any, batch_indices: Any, batch: Any,
                           batch_idx: int, dataloader_idx: int) -> None:
        self.batches.append((plain(prediction), list(batch_indices), batch_idx, dataloader_idx))

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        self.epochs.append((plain(predictions), plain(batch_indices)))


class Finetuning(C.BaseFinetuning):
    """A BaseFinetuning of the kind its docs show: the backbone frozen, unfrozen into the optimizer at epoch 2."""

    def freeze_before_training(self, pl_module: Any) -> None:
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: Any, current_epoch: int, optimizer: Any) -> None:
        if current_epoch == 2:
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, lr=0.01)


# -- a run ---------------------------------------------------------------------------------------------
AUTOMATIC = cases.automatic()


def run(framework: str, make_callbacks: Callable[[], list], case: Callable[[type], type] = AUTOMATIC,
        predict: bool = False, **trainer_kwargs: Any) -> dict[str, Any]:
    """A fresh seeded module of `case` fitted (then, with `predict`, predicting) by `framework`'s
    Trainer with Lightning's callbacks from `make_callbacks()`, and what the tests compare."""
    LM, Trainer = cases.frameworks(framework)
    torch.manual_seed(0)
    model = case(LM)()
    callbacks = make_callbacks()
    root = tempfile.mkdtemp(prefix="mopt_fast_test_")
    recorder = Recorder()
    kwargs: dict[str, Any] = dict(accelerator="cpu", max_epochs=4, logger=recorder, enable_checkpointing=False,
                                  enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                                  log_every_n_steps=2)
    kwargs.update(trainer_kwargs)
    trainer = Trainer(callbacks=list(callbacks), **kwargs)  # a copy: Lightning appends its defaults to the list
    error: BaseException | None = None
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("ignore")
        try:
            trainer.fit(model, *data())
            if predict:
                trainer.predict(model, data()[1], return_predictions=False)
        except Exception as exc:  # the exception itself is compared
            error = exc
    return {"trainer": trainer, "model": model, "callbacks": callbacks, "root": root, "stdout": out.getvalue(),
            "records": recorder.records, "error": error}


def common(r: dict[str, Any]) -> dict[str, Any]:
    """What every case compares: position, files, logged values, the error, the callbacks' state."""
    trainer, root = r["trainer"], r["root"]
    states = {}
    for cb in r["callbacks"]:
        state = plain(cb.state_dict())
        states[type(cb).__name__] = json.loads(json.dumps(state, default=str).replace(root, "<root>"))
    error = r["error"]
    return {
        "callbacks": [type(cb).__name__ for cb in trainer.callbacks],  # Lightning's defaults added or not, the order
        "global_step": trainer.global_step, "epoch": trainer.current_epoch, "should_stop": trainer.should_stop,
        "files": files_under(root), "records": r["records"], "states": states,
        "error": None if error is None else (type(error).__name__, str(error).replace(root, "<root>")),
    }


def compare(make_callbacks: Callable[[], list], extra: Callable[[dict[str, Any]], Any] = lambda r: None,
            exclude_records: Callable[[str], bool] = lambda key: False, states: bool = True,
            **kwargs: Any) -> dict[str, Any]:
    """Both runs; the common values (the callbacks' states unless `states` is False: clocks) and
    `extra(run)` must be equal, and the weights bitwise."""
    got = {fw: run(fw, make_callbacks, **kwargs) for fw in FRAMEWORKS}
    assert_same_weights(got["lightning"]["model"], got["mopt_fast"]["model"])
    seen = {}
    for fw, r in got.items():
        values = common(r)
        values["records"] = [(step, {k: v for k, v in m.items() if not exclude_records(k)})
                             for step, m in values["records"]]
        values["extra"] = extra(r)
        if not states:
            del values["states"]
        seen[fw] = values
    for key in seen["lightning"]:
        assert seen["mopt_fast"][key] == seen["lightning"][key], key
    return got


# -- the callbacks, one by one -------------------------------------------------------------------------
def test_gradient_accumulation_scheduler() -> None:
    got = compare(lambda: [C.GradientAccumulationScheduler({1: 2, 2: 3})],
                  extra=lambda r: r["trainer"].accumulate_grad_batches)
    assert got["lightning"]["trainer"].accumulate_grad_batches == 3


EPOCH_METRIC = [1.0, 0.9, 0.95, 0.85, 0.96, 0.97, 0.98, 0.99, 1.0, 1.0, 1.0, 1.0]


def epoch_end_metric(LM: type) -> type:
    """Logs the monitored value in its own on_train_epoch_end: Lightning runs EarlyStopping's and
    the checkpoint callbacks' on_train_epoch_end after the module's, so they see this epoch's value."""
    class EpochEndMetric(cases.automatic()(LM)):
        def on_train_epoch_end(self) -> None:
            self.log("epoch_metric", EPOCH_METRIC[self.current_epoch])

    return EpochEndMetric


@pytest.mark.parametrize("where", ["validation", "module_on_train_epoch_end"])
def test_early_stopping(where: str) -> None:
    if where == "validation":
        make, case = (lambda: [C.EarlyStopping(monitor="val_loss", min_delta=0.02, patience=1, verbose=True)]), AUTOMATIC
    else:
        make, case = (lambda: [C.EarlyStopping(monitor="epoch_metric", patience=1, check_on_train_epoch_end=True),
                               C.ModelCheckpoint(monitor="epoch_metric", save_on_train_epoch_end=True)]), epoch_end_metric
    got = compare(make, case=case, max_epochs=30, enable_checkpointing=None,
                  extra=lambda r: (r["callbacks"][0].stopping_reason.name, r["callbacks"][0].stopping_reason_message,
                                   r["trainer"].early_stopping_callback is r["callbacks"][0]))
    assert got["lightning"]["trainer"].should_stop and got["lightning"]["trainer"].current_epoch < 29


@pytest.mark.parametrize("kwargs", [
    dict(monitor="val_loss", save_top_k=2, save_last=True, filename="{epoch}-{val_loss:.3f}"),
    dict(every_n_train_steps=5, save_top_k=-1),
], ids=["top_k_and_last", "every_n_train_steps"])
def test_model_checkpoint(kwargs: dict[str, Any]) -> None:
    def summary(r: dict[str, Any]) -> Any:
        cb, root = r["callbacks"][0], r["root"]
        return (os.path.relpath(cb.best_model_path, root) if cb.best_model_path else "",
                plain(cb.best_model_score), sorted(os.path.relpath(p, root) for p in cb.best_k_models),
                os.path.relpath(cb.last_model_path, root) if cb.last_model_path else "",
                r["trainer"].checkpoint_callback is cb)

    got = compare(lambda: [C.ModelCheckpoint(**kwargs)], extra=summary, enable_checkpointing=None)
    assert any(f.endswith(".ckpt") for f in common(got["lightning"])["files"])


def test_on_exception_checkpoint() -> None:
    def saved(r: dict[str, Any]) -> Any:
        return os.path.exists(r["callbacks"][0].ckpt_path)

    got = compare(lambda: [C.OnExceptionCheckpoint(os.path.join(tempfile.mkdtemp(), "oec"))], case=failing,
                  extra=saved, enable_checkpointing=None)
    assert got["lightning"]["error"] is not None and saved(got["lightning"])


def test_on_exception_checkpoint_resumes_the_next_fit() -> None:
    """The next fit with an OnExceptionCheckpoint resumes from its file (ckpt_path "last", Lightning's
    rule), and the callback removes the file at teardown (``strategy.remove_checkpoint``). (Where the
    resumed fit continues inside the failed epoch is the resume's business: Lightning re-runs the
    failed batch, mopt_fast goes on after it; see docs/differences.md.)"""
    def make(folder: str, calls: list[str]) -> list:
        hooks = {name: (lambda *a, name=name, **k: calls.append(name)) for name in (
            "setup", "teardown", "on_exception", "on_save_checkpoint", "on_load_checkpoint", "on_fit_start")}
        return [C.LambdaCallback(**hooks), C.OnExceptionCheckpoint(folder, "oec")]

    got = {}
    for fw in FRAMEWORKS:
        folder = tempfile.mkdtemp()
        path = os.path.join(folder, "oec.ckpt")
        calls: list[str] = []
        first = run(fw, functools.partial(make, folder, calls), case=failing, enable_checkpointing=None)
        assert first["error"] is not None and os.path.exists(path)
        calls.append("--")
        second = run(fw, functools.partial(make, folder, calls), enable_checkpointing=None)
        got[fw] = (second["trainer"].ckpt_path == path, second["trainer"].current_epoch, second["error"],
                   os.path.exists(path), calls)
    assert got["mopt_fast"] == got["lightning"]
    assert got["lightning"][:4] == (True, 4, None, False) and "on_load_checkpoint" in got["lightning"][4]


THROUGHPUT_EXACT = ("batches", "samples")  # the counts; the rates and times differ run to run


def test_throughput_monitor() -> None:
    def keys(r: dict[str, Any]) -> Any:
        return [(step, sorted(m)) for step, m in r["records"]]

    got = compare(lambda: [C.ThroughputMonitor(batch_size_fn=lambda batch: batch[0].shape[0], window_size=2)],
                  extra=keys, exclude_records=lambda k: "/" in k and not k.endswith(THROUGHPUT_EXACT),
                  max_epochs=2)
    assert any("train/samples" in m for _, m in got["lightning"]["records"])


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_learning_rate_monitor(interval: str) -> None:
    got = compare(lambda: [C.LearningRateMonitor(logging_interval=interval, log_momentum=True)], case=with_scheduler,
                  extra=lambda r: plain({k: v for k, v in r["trainer"].callback_metrics.items() if k.startswith("lr")}))
    assert any(k.startswith("lr-SGD") for _, m in got["lightning"]["records"] for k in m)


def test_learning_rate_monitor_with_lightnings_csv_logger() -> None:
    """The failure the issue names ("tensor(): argument 'device' must be torch.device, not method"):
    Lightning's CSVLogger and LearningRateMonitor write the same metrics.csv in either Trainer."""
    tables = {}
    for fw in FRAMEWORKS:
        folder = tempfile.mkdtemp()
        r = run(fw, lambda: [C.LearningRateMonitor(logging_interval="step")], case=with_scheduler,
                logger=pl.loggers.CSVLogger(folder, name="csv", version=0), max_epochs=2)
        assert r["error"] is None, r["error"]
        with open(os.path.join(folder, "csv", "version_0", "metrics.csv")) as f:
            tables[fw] = f.read()
    assert tables["mopt_fast"] == tables["lightning"]
    assert "lr-SGD" in tables["lightning"]


@pytest.mark.parametrize("name", ["WeightAveraging", "EMAWeightAveraging"])
def test_weight_averaging(name: str) -> None:
    make = (lambda: [C.WeightAveraging()]) if name == "WeightAveraging" else (
        lambda: [C.EMAWeightAveraging(decay=0.9, update_starting_at_step=3)])
    compare(make, extra=lambda r: plain(r["callbacks"][0]._average_model.module.state_dict()))


def test_spike_detection() -> None:
    def spikes(r: dict[str, Any]) -> Any:
        cb = r["callbacks"][0]
        return sorted(cb.bad_batches), os.path.relpath(cb.exclude_batches_path, r["root"])

    got = compare(lambda: [C.SpikeDetection(window=4, warmup=2)], case=spiking, extra=spikes, max_epochs=3)
    assert got["lightning"]["error"] is not None  # the spike stops the fit (TrainingSpikeException)


def pin_psutil(monkeypatch: Any) -> None:
    """Fixed CPU, memory and swap readings, when psutil is installed."""
    try:
        import psutil
    except ImportError:
        return
    monkeypatch.setattr(psutil, "cpu_percent", lambda *a, **k: 37.5)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(percent=41.0))
    monkeypatch.setattr(psutil, "swap_memory", lambda: types.SimpleNamespace(percent=3.0))


def test_device_stats_monitor(monkeypatch) -> None:
    """On the CPU without CPU statistics it logs nothing; with them it needs psutil (the same error
    in both when psutil is missing, the same keys and values when it is there: psutil's readings
    are pinned, as the machine's load differs from one run to the next)."""
    pin_psutil(monkeypatch)
    compare(lambda: [C.DeviceStatsMonitor(cpu_stats=False)], max_epochs=1)
    got = compare(lambda: [C.DeviceStatsMonitor()], max_epochs=1,
                  extra=lambda r: sorted({k for _, m in r["records"] for k in m}))
    assert got["lightning"]["error"] is not None or any("cpu_percent" in k for _, m in got["lightning"]["records"]
                                                        for k in m)


def test_model_pruning() -> None:
    compare(lambda: [C.ModelPruning("l1_unstructured", amount=0.3, use_global_unstructured=True, verbose=0)],
            extra=lambda r: sorted(n for n, _ in r["model"].named_buffers()))


@pytest.mark.parametrize("name", ["BackboneFinetuning", "BaseFinetuning"])
def test_finetuning(name: str) -> None:
    make = (lambda: [C.BackboneFinetuning(unfreeze_backbone_at_epoch=2, backbone_initial_lr=0.01)]) if (
        name == "BackboneFinetuning") else (lambda: [Finetuning()])

    def groups(r: dict[str, Any]) -> Any:
        opt = r["trainer"].optimizers[0]
        return [(len(g["params"]), g["lr"]) for g in opt.param_groups], [
            p.requires_grad for p in r["model"].backbone.parameters()]

    got = compare(make, case=with_backbone, extra=groups)
    assert len(got["lightning"]["trainer"].optimizers[0].param_groups) == 2


def test_stochastic_weight_averaging_with_batchnorm() -> None:
    """The batch-norm epoch SWA adds (fit_loop.max_epochs, max_batches, _skip_backward)."""
    got = compare(lambda: [C.StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=2)], case=with_batchnorm,
                  extra=lambda r: (r["trainer"].max_epochs, r["trainer"].accumulate_grad_batches))
    assert got["lightning"]["trainer"].current_epoch == 5  # one more than max_epochs: the batch-norm epoch


def test_stochastic_weight_averaging() -> None:
    compare(lambda: [C.StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=0.5)])


@pytest.mark.parametrize("name", ["ModelSummary", "RichModelSummary"])
def test_model_summary(name: str) -> None:
    compare(lambda: [getattr(C, name)(max_depth=2)], extra=lambda r: r["stdout"])


def test_timer() -> None:
    got = compare(lambda: [C.Timer(duration=dict(minutes=5), interval="epoch")], states=False,
                  extra=lambda r: sorted(r["callbacks"][0].state_dict()["time_elapsed"]))
    assert got["mopt_fast"]["callbacks"][0].time_elapsed("train") > 0


def test_lambda_callback_sees_every_hook_in_lightnings_order() -> None:
    """A LambdaCallback on every hook it takes: the same sequence of calls (Lightning's order)."""
    def make() -> list:
        calls: list[str] = []
        hooks = {name: (lambda *a, name=name, **k: calls.append(name)) for name in (
            "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
            "on_train_batch_start", "on_train_batch_end", "on_train_epoch_start", "on_train_epoch_end",
            "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_batch_start",
            "on_validation_batch_end", "on_train_start", "on_train_end", "on_validation_start", "on_validation_end",
            "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
            "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
            "on_predict_batch_start", "on_predict_batch_end", "on_save_checkpoint")}
        cb = C.LambdaCallback(**hooks)
        cb.calls = calls
        return [cb]

    got = compare(make, case=with_predict, predict=True, max_epochs=2, extra=lambda r: r["callbacks"][0].calls,
                  enable_checkpointing=None)
    assert "on_predict_batch_end" in got["lightning"]["callbacks"][0].calls


@pytest.mark.parametrize("name", ["TQDMProgressBar", "RichProgressBar"])
def test_progress_bars(name: str) -> None:
    def bar(r: dict[str, Any]) -> Any:
        b = r["callbacks"][0]
        if name == "TQDMProgressBar":
            counts = [(p.n, p.total, p.desc) for p in (b.train_progress_bar, b.val_progress_bar)]
        else:
            counts = [(t.description, t.completed, t.total) for t in b.progress.tasks] if b.progress else []
        return (counts, b.total_train_batches, b.total_val_batches, sorted(b.get_metrics(r["trainer"], r["model"])),
                r["trainer"].progress_bar_callback is b)

    compare(lambda: [getattr(C, name)()], extra=bar, enable_progress_bar=True, max_epochs=2)


def test_prediction_writer() -> None:
    got = compare(lambda: [Writer()], case=with_predict, predict=True,
                  extra=lambda r: (r["callbacks"][0].batches, r["callbacks"][0].epochs))
    writer = got["lightning"]["callbacks"][0]
    assert writer.batches and writer.batches[0][1] == list(range(16))


@pytest.mark.parametrize("name", ["LearningRateFinder", "BatchSizeFinder"])
def test_lightnings_finder_callbacks_point_at_ours(name: str) -> None:
    """Lightning's finder callbacks drive its Trainer's internals: a clear NotBuiltError naming
    mopt_fast's own callback (tests/test_tuner.py compares that one with Lightning's), not
    Lightning's internals failing."""
    r = run("mopt_fast", lambda: [getattr(C, name)()])
    assert isinstance(r["error"], mopt_fast.exceptions.NotBuiltError)
    assert name in str(r["error"]) and f"mopt_fast.callbacks.{name}" in str(r["error"])


def test_every_builtin_callback_is_covered() -> None:
    """Each name Lightning 2.6 exports from lightning.pytorch.callbacks has its test above (the
    abstract bases through a subclass)."""
    tested = {"GradientAccumulationScheduler", "EarlyStopping", "ModelCheckpoint", "OnExceptionCheckpoint",
              "ThroughputMonitor", "LearningRateMonitor", "WeightAveraging", "EMAWeightAveraging", "SpikeDetection",
              "DeviceStatsMonitor", "ModelPruning", "BackboneFinetuning", "BaseFinetuning",
              "StochasticWeightAveraging", "ModelSummary", "RichModelSummary", "Timer", "LambdaCallback",
              "TQDMProgressBar", "RichProgressBar", "BasePredictionWriter", "LearningRateFinder", "BatchSizeFinder",
              # bases: Callback (every case), Checkpoint (ModelCheckpoint, OnExceptionCheckpoint), ProgressBar
              "Callback", "Checkpoint", "ProgressBar"}
    assert set(C.__all__) <= tested, set(C.__all__) - tested


# -- the surface they read -----------------------------------------------------------------------------
class Probe(C.Callback):
    """Reads what Lightning's callbacks read of the Trainer and its loops, at each train batch end,
    validation batch end and predict batch end."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        loop = trainer.fit_loop
        epoch_loop = loop.epoch_loop
        self.seen.append((
            "train", epoch_loop._batches_that_stepped, epoch_loop.batch_progress.total.ready,
            epoch_loop.batch_progress.current.ready, epoch_loop.batch_progress.is_last_batch, loop.total_batch_idx,
            loop.max_epochs, loop.max_batches, loop._should_accumulate(), epoch_loop._should_check_val_epoch(),
            trainer._logger_connector.should_update_logs, trainer._active_loop is loop,
            trainer.estimated_stepping_batches,
        ))

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.sanity_checking:
            return
        progress = trainer._evaluation_loop.batch_progress
        self.seen.append(("val", progress.total.ready, progress.current.ready,
                          trainer.fit_loop.epoch_loop.val_loop._has_run, trainer._logger_connector.should_update_logs,
                          trainer._active_loop is trainer._evaluation_loop))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.seen.append(("val_end", trainer.fit_loop.epoch_loop.val_loop._has_run))

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        progress = trainer.predict_loop.batch_progress
        self.seen.append(("predict", progress.total.ready, progress.current.ready, trainer._active_loop is
                          trainer.predict_loop))


def test_loop_progress_surface_matches_lightning() -> None:
    compare(lambda: [Probe()], case=with_predict, predict=True, max_epochs=3, accumulate_grad_batches=2,
            val_check_interval=0.5, log_every_n_steps=3, extra=lambda r: r["callbacks"][0].seen)


@pytest.mark.parametrize("kwargs", [
    dict(max_epochs=3), dict(max_epochs=3, accumulate_grad_batches=4), dict(max_epochs=5, max_steps=7),
    dict(max_epochs=2, limit_train_batches=0.5), dict(max_epochs=2, limit_train_batches=3, accumulate_grad_batches=2),
    dict(max_epochs=-1, max_steps=11),
], ids=str)
def test_estimated_stepping_batches(kwargs: dict[str, Any]) -> None:
    """Read in configure_optimizers (before the train loader is set up), as a OneCycleLR would."""
    def case(LM: type) -> type:
        class Estimating(cases.automatic()(LM)):
            def configure_optimizers(self) -> Any:
                self.estimate = self.trainer.estimated_stepping_batches
                return super().configure_optimizers()

        return Estimating

    got = {}
    for fw in FRAMEWORKS:
        LM, Trainer = cases.frameworks(fw)
        unlimited = Trainer(max_epochs=-1, logger=False)  # no epoch limit, no step limit: infinite
        assert unlimited.estimated_stepping_batches == float("inf")
        torch.manual_seed(0)
        model = case(LM)()
        trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, data()[0])
        got[fw] = (model.estimate, trainer.estimated_stepping_batches, trainer.global_step)
    assert got["mopt_fast"] == got["lightning"]


def strategy_surface(trainer: Any, tmp: str) -> dict[str, Any]:
    """What a callback may call on ``trainer.strategy`` in one process."""
    strategy = trainer.strategy
    path = os.path.join(tmp, "x.ckpt")
    with open(path, "w") as f:
        f.write("x")
    strategy.remove_checkpoint(path)
    strategy.remove_checkpoint(path)  # a missing file: nothing happens
    t = torch.arange(4.0)
    obj = {"a": [1, 2]}
    return {
        "root_device": strategy.root_device, "is_global_zero": strategy.is_global_zero,
        "removed": not os.path.exists(path),
        "decisions": [strategy.reduce_boolean_decision(d, all=a) for d in (True, False, 1, 0) for a in (True, False)],
        "broadcast": strategy.broadcast(obj) is obj and strategy.broadcast(obj, src=0) is obj,
        "reduce": [strategy.reduce(t) is t, strategy.reduce(t, reduce_op="sum") is t, strategy.reduce(3.0)],
        "all_gather": strategy.all_gather(t) is t,
        "barrier": [strategy.barrier(), strategy.barrier("name")],
        "lightning_module": strategy.lightning_module is trainer.lightning_module,
        "model": strategy.model is trainer.lightning_module,
        "optimizers": strategy.optimizers == trainer.optimizers and len(strategy.optimizers) == 1,
        "precision_plugin": strategy.precision_plugin is trainer.precision_plugin,
        "device_ids": trainer.device_ids, "num_devices": trainer.num_devices,
        "early_stopping": (type(trainer.early_stopping_callback).__name__, len(trainer.early_stopping_callbacks)),
        "lr_scheduler_configs": [sorted(vars(c)) for c in trainer.lr_scheduler_configs],
        "precision_dtype": __import__("lightning.pytorch.callbacks.throughput_monitor",
                                      fromlist=["_plugin_to_compute_dtype"])._plugin_to_compute_dtype(
                                          trainer.precision_plugin),
        "accelerator": type(trainer.accelerator).__name__,
    }


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_strategy_surface_matches_lightning(precision: str) -> None:
    got = {}
    for fw in FRAMEWORKS:
        r = run(fw, lambda: [C.EarlyStopping("val_loss")], case=with_scheduler, max_epochs=1, precision=precision)
        assert r["error"] is None, r["error"]
        got[fw] = strategy_surface(r["trainer"], r["root"])
    assert isinstance(got["mopt_fast"]["root_device"], torch.device)
    assert got["mopt_fast"] == got["lightning"]


def test_root_device_is_a_property() -> None:
    trainer = mopt_fast.Trainer(accelerator="cpu", logger=False)
    assert isinstance(type(trainer.strategy).root_device, property)
    assert trainer.strategy.root_device == torch.device("cpu") == trainer.root_device


def test_precision_plugin_stays_ours_and_pickles() -> None:
    """Lightning's ThroughputMonitor sees Lightning's precision class; the plugin is still mopt_fast's
    (same methods), and pickles as mopt_fast's own class."""
    r = run("mopt_fast", lambda: [C.ThroughputMonitor(batch_size_fn=len)], max_epochs=1, precision="bf16-mixed")
    plugin = r["trainer"].precision_plugin
    assert isinstance(plugin, mopt_fast.precision.MixedPrecision)
    assert isinstance(plugin, pl.plugins.precision.MixedPrecision)
    assert type(plugin).forward_context is mopt_fast.precision.MixedPrecision.forward_context
    copy = pickle.loads(pickle.dumps(plugin))
    assert type(copy) is mopt_fast.precision.MixedPrecision and copy.name == "bf16-mixed"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_strategy_surface_under_ddp_matches_lightning(tmp_path: Any) -> None:
    """Two gloo ranks: broadcast, reduce, all_gather, reduce_boolean_decision, barrier and the rest
    answer on each rank as Lightning's DDPStrategy does (tests/lightning_strategy_ddp_child.py)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(mopt_fast.__file__))), os.environ.get("PYTHONPATH", "")]))
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    child = os.path.join(os.path.dirname(__file__), "lightning_strategy_ddp_child.py")
    got = {}
    for fw in FRAMEWORKS:
        proc = subprocess.run([sys.executable, child, fw, str(tmp_path)], capture_output=True, text=True, timeout=300,
                              env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got[fw] = [torch.load(str(tmp_path / f"{fw}-rank{r}.pt"), weights_only=True) for r in (0, 1)]
    for rank in (0, 1):
        assert got["mopt_fast"][rank] == got["lightning"][rank]
    assert got["lightning"][1]["broadcast"] == {"from": 0} and got["lightning"][0]["gather"] == [[0, 0], [1, 10]]
