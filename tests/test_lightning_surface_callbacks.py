"""EarlyStopping, LearningRateMonitor, the progress bars and ModelCheckpoint's full surface, each
run side by side with Lightning 2.6's own Trainer and callback on the same seed and data: stop
epoch, weights (bitwise), callback state, logged values, file names and scores must match."""
from __future__ import annotations

import datetime
import io
import logging
import math
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import mopt_fast

import lightning_cases as cases
from helpers import importorskip_unless_ci

pl = importorskip_unless_ci("lightning.pytorch")

FRAMEWORKS = ("lightning", "mopt_fast")


def namespace(framework: str) -> Any:
    """Where the framework's callbacks live: lightning.pytorch.callbacks or mopt_fast."""
    return pl.callbacks if framework == "lightning" else mopt_fast


def misconfiguration(framework: str) -> type:
    if framework == "lightning":
        from lightning.pytorch.utilities.exceptions import MisconfigurationException

        return MisconfigurationException
    return mopt_fast.MisconfigurationException


def fit(framework: str, case: Callable[[type], type], make_callbacks: Callable[[Any], list], *,
        data: tuple | None = None, seed: int = 0, ckpt_path: str | None = None, **trainer_kwargs: Any) -> tuple:
    """A fresh seeded module of `case` fitted by `framework`'s Trainer with the callbacks that
    `make_callbacks(namespace)` returns; (trainer, model, callbacks)."""
    LM, Trainer = cases.frameworks(framework)
    torch.manual_seed(seed)
    model = case(LM)()
    callbacks = make_callbacks(namespace(framework))
    kwargs: dict[str, Any] = dict(accelerator="cpu", max_epochs=30, logger=False, enable_checkpointing=False,
                                  enable_progress_bar=False, enable_model_summary=False,
                                  default_root_dir=tempfile.mkdtemp(prefix="mopt_fast_test_"))
    kwargs.update(trainer_kwargs)
    trainer = Trainer(callbacks=callbacks, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, *(data if data is not None else cases.make_data()), ckpt_path=ckpt_path)
    return trainer, model, callbacks


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def plain(value: Any) -> Any:
    """Tensors as floats (NaN as the string 'nan', so equal NaNs compare equal), enums as names."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if hasattr(value, "name") and hasattr(value, "value") and not isinstance(value, (str, int, float)):
        return value.name
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def capture_logs(name: str) -> Capture:
    handler = Capture()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


# -- EarlyStopping ------------------------------------------------------------------------------------
def nonfinite(value: float) -> Callable[[type], type]:
    """automatic() plus "val_metric": the validation loss, times `value` from epoch 2 on."""
    def make(LM: type) -> type:
        class NonFinite(cases.automatic()(LM)):
            def validation_step(self, batch: Any, batch_idx: int) -> None:
                super().validation_step(batch, batch_idx)
                v = self.compute_loss(batch)
                if self.current_epoch >= 2:
                    v = v * value
                self.log("val_metric", v)

        return NonFinite

    return make


EPOCH_METRIC = [1.0, 0.9, 0.95, 0.85, 0.96, 0.97, 0.98, 0.99, 1.0, 1.0, 1.0, 1.0]


def epoch_end_metric(LM: type) -> type:
    """Logs its monitored value in on_train_epoch_end: EarlyStopping must see this epoch's value
    (it runs after the module's hook)."""
    class EpochEndMetric(cases.automatic()(LM)):
        def on_train_epoch_end(self) -> None:
            self.log("epoch_metric", EPOCH_METRIC[self.current_epoch])

    return EpochEndMetric


def stop_in_batch(LM: type) -> type:
    """Sets trainer.should_stop in the middle of epoch 1 (a stop from the module itself)."""
    class StopInBatch(cases.automatic()(LM)):
        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self.current_epoch == 1 and batch_idx == 2:
                self.trainer.should_stop = True

    return StopInBatch


ES_CASES = {
    "patience_min_delta": (cases.automatic(), dict(monitor="val_loss", min_delta=0.02, patience=2), {}),
    "stopping_threshold": (cases.automatic(), dict(monitor="val_loss", stopping_threshold=0.15, patience=10), {}),
    "divergence_threshold_max_mode": (cases.automatic(), dict(monitor="val_loss", mode="max", patience=10,
                                                              divergence_threshold=0.3), {}),
    "after_mid_epoch_validation": (cases.automatic(), dict(monitor="val_loss", min_delta=0.01, patience=2,
                                                           check_on_train_epoch_end=False),
                                   {"val_check_interval": 0.5}),
    "validation_every_2_epochs": (cases.automatic(), dict(monitor="val_loss", min_delta=0.01, patience=1),
                                  {"check_val_every_n_epoch": 2}),
    "int_val_check_interval_accumulating": (cases.automatic(), dict(monitor="val_loss", min_delta=0.005, patience=2),
                                            {"val_check_interval": 4, "accumulate_grad_batches": 2}),
    "train_metric_at_train_epoch_end": (cases.automatic(), dict(monitor="loss_epoch", min_delta=0.01, patience=1,
                                                                check_on_train_epoch_end=True),
                                        {"limit_val_batches": 0}),
    "nan": (nonfinite(math.nan), dict(monitor="val_metric", patience=100), {}),
    "inf": (nonfinite(math.inf), dict(monitor="val_metric", patience=100, verbose=True), {}),
    "nan_check_finite_false": (nonfinite(math.nan), dict(monitor="val_metric", patience=3, check_finite=False), {}),
    "logged_in_module_on_train_epoch_end": (epoch_end_metric, dict(monitor="epoch_metric", patience=2, verbose=True),
                                            {}),
    "manual_optimization": (cases.minimal, dict(monitor="val_loss", min_delta=0.02, patience=1, verbose=True), {}),
    "max_steps_first": (cases.automatic(), dict(monitor="val_loss", min_delta=0.02, patience=2),
                        {"max_steps": 10, "max_epochs": -1}),
    "should_stop_from_the_module": (stop_in_batch, dict(monitor="val_loss", patience=5), {}),
}


@pytest.mark.parametrize("name", list(ES_CASES))
def test_early_stopping_matches_lightning(name: str) -> None:
    case, es_kwargs, trainer_kwargs = ES_CASES[name]
    got = {}
    for framework in FRAMEWORKS:
        log_name = ("lightning.pytorch.callbacks.early_stopping" if framework == "lightning"
                    else "mopt_fast.callbacks.early_stopping")
        handler = capture_logs(log_name)
        try:
            trainer, model, (es,) = fit(framework, case, lambda ns: [ns.EarlyStopping(**es_kwargs)], **trainer_kwargs)
        finally:
            logging.getLogger(log_name).removeHandler(handler)
        got[framework] = {
            "epoch": trainer.current_epoch, "step": trainer.global_step, "should_stop": trainer.should_stop,
            "state": plain(es.state_dict()), "reason": es.stopping_reason.name, "state_key": es.state_key,
            "messages": handler.messages, "model": model,
            "callback_metrics": plain(dict(trainer.callback_metrics)),
        }
    light, mine = got["lightning"], got["mopt_fast"]
    assert_same_weights(light.pop("model"), mine.pop("model"))
    assert mine == light
    if name != "max_steps_first":
        assert light["should_stop"], "the case must stop early"
        expected = {"stopping_threshold": "STOPPING_THRESHOLD", "nan": "NON_FINITE_METRIC",
                    "divergence_threshold_max_mode": "DIVERGENCE_THRESHOLD", "inf": "NON_FINITE_METRIC",
                    "should_stop_from_the_module": "NOT_STOPPED"}
        assert light["reason"] == expected.get(name, "PATIENCE_EXHAUSTED")
    if es_kwargs.get("verbose"):
        assert light["messages"], "a verbose case must log"


def test_early_stopping_messages_and_errors() -> None:
    for framework in FRAMEWORKS:
        ns = namespace(framework)
        with pytest.raises(misconfiguration(framework), match="`mode` can be min, max, got maximum"):
            ns.EarlyStopping(monitor="val_loss", mode="maximum")
    # a missing metric: strict is Lightning's RuntimeError, same text; non-strict verbose warns
    errors = {}
    for framework in FRAMEWORKS:
        with pytest.raises(RuntimeError) as info:
            fit(framework, cases.automatic(), lambda ns: [ns.EarlyStopping(monitor="missing")], max_epochs=2)
        errors[framework] = str(info.value)
    assert errors["mopt_fast"] == errors["lightning"]
    assert "Early stopping conditioned on metric `missing` which is not available" in errors["lightning"]
    for framework in FRAMEWORKS:
        LM, Trainer = cases.frameworks(framework)
        torch.manual_seed(0)
        es = namespace(framework).EarlyStopping(monitor="missing", strict=False, verbose=True)
        trainer = Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, callbacks=[es])
        with pytest.warns(RuntimeWarning, match="Early stopping conditioned on metric `missing`"):
            trainer.fit(cases.automatic()(LM)(), *cases.make_data())
        assert trainer.current_epoch == 2
    # two EarlyStopping on the same monitor and mode cannot both keep state: Lightning's RuntimeError
    for framework in FRAMEWORKS:
        _, Trainer = cases.frameworks(framework)
        ns = namespace(framework)
        with pytest.raises(RuntimeError, match="Found more than one stateful callback of type `EarlyStopping`"):
            Trainer(callbacks=[ns.EarlyStopping("val_loss"), ns.EarlyStopping("val_loss")], logger=False)
        Trainer(callbacks=[ns.EarlyStopping("val_loss"), ns.EarlyStopping("val_loss", mode="max")], logger=False,
                enable_progress_bar=False)


def test_early_stopping_resumes_from_a_checkpoint(tmp_path) -> None:
    """EarlyStopping's state travels in mopt_fast checkpoints (under Lightning's state_key): a fit
    stopped after 3 epochs and resumed stops where the uninterrupted fit stopped, with its state."""
    es_kwargs = dict(monitor="val_loss", min_delta=0.005, patience=2)

    def callbacks(folder: str) -> Callable[[Any], list]:
        return lambda ns: [ns.EarlyStopping(**es_kwargs), ns.ModelCheckpoint(dirpath=folder, save_last=True)]

    ref_trainer, ref_model, (ref_es, _) = fit("mopt_fast", cases.automatic(), callbacks(str(tmp_path / "ref")),
                                              enable_checkpointing=True)
    assert ref_trainer.should_stop and ref_trainer.current_epoch == 3
    # paused with one check without improvement: a resumed fit that forgot it would not stop at epoch 2
    fit("mopt_fast", cases.automatic(), callbacks(str(tmp_path / "a")), enable_checkpointing=True, max_epochs=2)
    saved = mopt_fast.core.saving.load_checkpoint(str(tmp_path / "a" / "last.ckpt"))
    assert "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}" in saved["callbacks"]
    trainer, model, (es, _) = fit("mopt_fast", cases.automatic(), callbacks(str(tmp_path / "a")),
                                  enable_checkpointing=True, ckpt_path="last", seed=99)
    assert (trainer.current_epoch, trainer.global_step) == (ref_trainer.current_epoch, ref_trainer.global_step)
    assert plain(es.state_dict()) == plain(ref_es.state_dict())
    assert_same_weights(model, ref_model)
    # Lightning's own resume keeps the same state through its checkpoint
    light_trainer, _, (light_es, _) = fit("lightning", cases.automatic(), callbacks(str(tmp_path / "l")),
                                          enable_checkpointing=True, max_epochs=2)
    assert light_trainer.current_epoch == 2 and light_es.wait_count == 1
    assert plain(light_es.state_dict()) == plain(saved["callbacks"][light_es.state_key])


# -- LearningRateMonitor ----------------------------------------------------------------------------------
def param_groups(named: bool, scheduler: str | None = None) -> Callable[[type], type]:
    """automatic() with two SGD param groups (named or not) and an optional scheduler dict."""
    def make(LM: type) -> type:
        class ParamGroups(cases.automatic()(LM)):
            def configure_optimizers(self) -> Any:
                first = {"params": self.net[0].parameters(), "lr": 0.05}
                second = {"params": self.net[3].parameters(), "lr": 0.01, "weight_decay": 1e-3}
                if named:
                    first["name"], second["name"] = "encoder", "head"
                opt = torch.optim.SGD([first, second], lr=0.02, momentum=0.8)
                if scheduler == "named_step":
                    return {"optimizer": opt, "lr_scheduler": {
                        "scheduler": torch.optim.lr_scheduler.StepLR(opt, 3, 0.5), "interval": "step",
                        "name": "my_lr"}}
                if scheduler == "epoch":
                    return [opt], [torch.optim.lr_scheduler.ExponentialLR(opt, 0.7)]
                return opt

        return ParamGroups

    return make


def three_optimizers(LM: type) -> type:
    """Manual optimization over two Adams (one with a step scheduler) and an SGD without one."""
    class ThreeOptimizers(cases.gan(LM)):
        def __init__(self) -> None:
            super().__init__()
            self.extra = torch.nn.Linear(2, 2)

        def training_step(self, batch: Any, batch_idx: int) -> None:
            for opt in self.optimizers():
                opt.zero_grad()
            x, _ = batch
            loss = self.D(self.sample_G(x.shape[0])).mean() + self.D(x).mean() + self.extra(x[:, :2]).pow(2).mean()
            self.manual_backward(loss)
            for opt in self.optimizers():
                opt.step()
            self.lr_schedulers().step()

        def configure_optimizers(self) -> Any:
            g_opt = torch.optim.Adam(self.G.parameters(), lr=1e-3, weight_decay=0.01)
            d_opt = torch.optim.Adam(self.D.parameters(), lr=2e-3)
            e_opt = torch.optim.SGD(self.extra.parameters(), lr=0.1)
            return [g_opt, d_opt, e_opt], [torch.optim.lr_scheduler.StepLR(d_opt, 2, 0.5)]

    return ThreeOptimizers


LR_CASES = {
    "step_scheduler_interval_none": (cases.automatic(scheduler="step_interval"), {}, {}),
    "step_scheduler_interval_step": (cases.automatic(scheduler="step_interval"), {"logging_interval": "step"}, {}),
    "step_scheduler_interval_epoch": (cases.automatic(scheduler="step_interval"), {"logging_interval": "epoch"}, {}),
    "epoch_scheduler_momentum_weight_decay": (cases.automatic(scheduler="epoch"),
                                              {"log_momentum": True, "log_weight_decay": True}, {}),
    "adamw_betas_plateau": (cases.automatic(optimizer="adamw_fused", scheduler="plateau"),
                            {"log_momentum": True}, {"log_every_n_steps": 2}),
    "no_scheduler_every_step": (cases.automatic(), {}, {"log_every_n_steps": 1}),
    "param_groups": (param_groups(named=False, scheduler="epoch"), {"log_weight_decay": True}, {}),
    "named_param_groups_named_scheduler": (param_groups(named=True, scheduler="named_step"), {"log_momentum": True},
                                           {"log_every_n_steps": 3}),
    "three_optimizers_manual": (three_optimizers, {"log_momentum": True, "log_weight_decay": True},
                                {"log_every_n_steps": 2}),
    "accumulation_max_steps": (cases.automatic(scheduler="step_interval"), {},
                               {"accumulate_grad_batches": 2, "log_every_n_steps": 2, "max_steps": 7}),
    "log_every_n_steps_0": (cases.automatic(scheduler="step_interval"), {}, {"log_every_n_steps": 0}),
}


@pytest.mark.parametrize("name", list(LR_CASES))
def test_lr_monitor_logs_what_lightning_logs(name: str) -> None:
    case, lr_kwargs, trainer_kwargs = LR_CASES[name]
    got = {}
    for framework in FRAMEWORKS:
        logger = cases.recording_logger(framework)
        kwargs = {"max_epochs": 3, "log_every_n_steps": 4, **trainer_kwargs}
        trainer, model, (lr,) = fit(framework, case, lambda ns: [ns.LearningRateMonitor(**lr_kwargs)], logger=logger,
                                    **kwargs)
        got[framework] = {
            "calls": logger.calls, "lrs": lr.lrs, "momentum": lr.last_momentum_values,
            "weight_decay": lr.last_weight_decay_values,
            "callback_metrics": {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("lr-")
                                 or "momentum" in k or "weight_decay" in k or k == "my_lr"},
            "model": model,
        }
    light, mine = got["lightning"], got["mopt_fast"]
    assert_same_weights(light.pop("model"), mine.pop("model"))
    assert mine["calls"] == light["calls"]
    assert mine == light
    if name != "log_every_n_steps_0":
        assert any(k.startswith("lr-") or k.startswith("my_lr") for _, m in light["calls"] for k in m)


def test_lr_monitor_errors() -> None:
    for framework in FRAMEWORKS:
        ns, error = namespace(framework), misconfiguration(framework)
        with pytest.raises(error, match="logging_interval should be `step` or `epoch` or `None`."):
            ns.LearningRateMonitor(logging_interval="batch")
        with pytest.raises(error, match="Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger."):
            fit(framework, cases.automatic(), lambda ns: [ns.LearningRateMonitor()], max_epochs=1)

        def duplicated(LM: type) -> type:
            class Duplicated(cases.automatic()(LM)):
                def configure_optimizers(self) -> Any:
                    return torch.optim.SGD([{"params": self.net[0].parameters(), "name": "a"},
                                            {"params": self.net[3].parameters(), "name": "a"}], lr=0.1)

            return Duplicated

        with pytest.raises(error, match="A single `Optimizer` cannot have multiple parameter groups with identical "
                                        "`name` values. lr-SGD has duplicated parameter group names {'a'}"):
            fit(framework, duplicated, lambda ns: [ns.LearningRateMonitor()], max_epochs=1,
                logger=cases.recording_logger(framework))
        with pytest.warns(RuntimeWarning, match="You have set log_momentum=True, but some optimizers do not have"):
            LM, Trainer = cases.frameworks(framework)
            trainer = Trainer(accelerator="cpu", max_epochs=1, logger=cases.recording_logger(framework),
                              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                              callbacks=[ns.LearningRateMonitor(log_momentum=True)])
            trainer.fit(cases.automatic(optimizer="lbfgs")(LM)(), *cases.make_data())


# -- progress bars -------------------------------------------------------------------------------------
def tqdm_class(framework: str) -> type:
    if framework == "lightning":
        from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

        return Tqdm
    return mopt_fast.callbacks.progress.tqdm_progress.Tqdm


def recording_tqdm_bar(framework: str, override_metrics: bool) -> type:
    """A TQDMProgressBar subclass as users write them: its own get_metrics and init_*_tqdm (bars
    writing to a buffer), recording what its bars show at each point."""
    Tqdm = tqdm_class(framework)

    class RecordingBar(namespace(framework).TQDMProgressBar):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.stream = io.StringIO()
            self.events: list[tuple] = []
            self.metric_calls = 0

        def get_metrics(self, trainer: Any, pl_module: Any) -> dict:
            self.metric_calls += 1
            items = super().get_metrics(trainer, pl_module)
            if override_metrics:
                items.pop("v_num", None)
                items["custom"] = f"step{trainer.global_step}"
            return items

        def init_train_tqdm(self) -> Any:
            self.events.append(("init_train_tqdm",))
            return Tqdm(desc="my training", position=2 * self.process_position, disable=self.is_disabled, leave=True,
                        file=self.stream, smoothing=0, bar_format=self.BAR_FORMAT)

        def init_validation_tqdm(self) -> Any:
            self.events.append(("init_validation_tqdm",))
            return Tqdm(desc="my validation", disable=self.is_disabled, leave=False, file=self.stream,
                        bar_format=self.BAR_FORMAT)

        def init_sanity_tqdm(self) -> Any:
            self.events.append(("init_sanity_tqdm",))
            return Tqdm(desc="my sanity", disable=self.is_disabled, leave=False, file=self.stream,
                        bar_format=self.BAR_FORMAT)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            self.events.append(("batch", self.train_progress_bar.n, self.train_progress_bar.total,
                                self.total_train_batches, self.total_val_batches))

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            super().on_train_epoch_end(trainer, pl_module)
            bar = self.train_progress_bar
            self.events.append(("epoch_end", bar.n, bar.total, bar.desc, bar.postfix))

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            bar = self.val_progress_bar
            self.events.append(("validation_end", trainer.sanity_checking, bar.n, bar.total, bar.desc))
            super().on_validation_end(trainer, pl_module)
            self.events.append(("postfix_after_validation", self.train_progress_bar.postfix))

        def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
            bar = self.val_progress_bar
            self.events.append(("sanity_end", bar.n, bar.total, bar.desc))
            super().on_sanity_check_end(trainer, pl_module)

    return RecordingBar


PBAR_CASES = {
    "defaults_with_logger": (False, {}, {"logger": "recording"}),
    "own_get_metrics_refresh_3": (True, {"refresh_rate": 3}, {}),
    "max_steps_mid_epoch_validation": (True, {}, {"max_steps": 9, "max_epochs": -1, "val_check_interval": 0.5,
                                                  "limit_val_batches": 2, "num_sanity_val_steps": 1}),
    "leave_process_position": (True, {"leave": True, "process_position": 1},
                               {"check_val_every_n_epoch": 2, "num_sanity_val_steps": -1}),
}


@pytest.mark.parametrize("every_update", [False, True], ids=["mopt_fast_interval", "every_update"])
@pytest.mark.parametrize("name", list(PBAR_CASES))
def test_tqdm_progress_bar_subclass_matches_lightning(name: str, every_update: bool) -> None:
    override, bar_kwargs, trainer_kwargs = PBAR_CASES[name]
    got = {}
    for framework in FRAMEWORKS:
        kwargs = dict(bar_kwargs)
        if framework == "mopt_fast" and every_update:
            kwargs["refresh_interval"] = 0  # get_metrics at every bar update, as Lightning
        Bar = recording_tqdm_bar(framework, override)
        tk = {"max_epochs": 3, "enable_progress_bar": True, **trainer_kwargs}
        if tk.get("logger") == "recording":
            tk["logger"] = cases.recording_logger(framework)
        trainer, _, (bar,) = fit(framework, cases.automatic(), lambda ns, Bar=Bar, kwargs=kwargs: [Bar(**kwargs)], **tk)
        assert trainer.progress_bar_callback is bar
        # (the postfixes recorded are those after a validation and at the end of an epoch, where
        # mopt_fast always reads the metrics; in between it reads them at most every 0.5 s)
        got[framework] = {"events": bar.events, "refresh_rate": bar.refresh_rate,
                          "process_position": bar.process_position, "is_enabled": bar.is_enabled,
                          "metric_calls": bar.metric_calls if every_update else None,
                          "shown": ("custom=step" if override else "v_num") in bar.stream.getvalue()}
    assert got["mopt_fast"] == got["lightning"]
    assert got["lightning"]["shown"]
    assert ("init_train_tqdm",) in got["lightning"]["events"]


def test_progress_bar_api_and_errors() -> None:
    for framework in FRAMEWORKS:
        ns, error = namespace(framework), misconfiguration(framework)
        _, Trainer = cases.frameworks(framework)
        bar = ns.TQDMProgressBar(refresh_rate=5, process_position=2)
        assert (bar.refresh_rate, bar.process_position, bar.is_enabled) == (5, 2, True)
        bar.disable()
        assert bar.is_disabled and not bar.is_enabled
        bar.enable()
        assert bar.is_enabled
        assert ns.TQDMProgressBar(refresh_rate=0).is_disabled
        with pytest.raises(TypeError, match="The `TQDMProgressBar._trainer` reference has not been set yet."):
            _ = bar.trainer
        with pytest.raises(TypeError, match="The `TQDMProgressBar._train_progress_bar` reference has not been set"):
            _ = bar.train_progress_bar
        with pytest.raises(error, match="You added multiple progress bar callbacks to the Trainer, but currently only "
                                        "one progress bar is supported."):
            Trainer(callbacks=[ns.TQDMProgressBar(), ns.TQDMProgressBar()], logger=False)
        with pytest.raises(error, match="Trainer was configured with `enable_progress_bar=False` but found "
                                        "`TQDMProgressBar` in callbacks list."):
            Trainer(callbacks=[ns.TQDMProgressBar()], enable_progress_bar=False, logger=False)
        rich_bar = ns.RichProgressBar(refresh_rate=7, leave=True)
        assert (rich_bar.refresh_rate, rich_bar.is_enabled) == (7, True)
        trainer = Trainer(callbacks=[rich_bar], logger=False, enable_checkpointing=False)
        assert trainer.progress_bar_callback is rich_bar  # it replaces the default bar
        assert not any(isinstance(c, ns.TQDMProgressBar) for c in trainer.callbacks)


def test_rich_progress_bar_matches_lightning() -> None:
    got = {}
    for framework in FRAMEWORKS:
        class RecordingRich(namespace(framework).RichProgressBar):
            def __init__(self) -> None:
                super().__init__(leave=True, console_kwargs={"file": io.StringIO(), "width": 200})
                self.events: list[tuple] = []

            def get_metrics(self, trainer: Any, pl_module: Any) -> dict:
                items = super().get_metrics(trainer, pl_module)
                items["custom"] = 1.5
                return items

            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                super().on_train_epoch_end(trainer, pl_module)
                task = self.train_progress_bar
                self.events.append(("epoch_end", task.total, task.completed, task.description,
                                    dict(self._metric_component._metrics)))

            def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
                if not trainer.sanity_checking:
                    task = self.val_progress_bar
                    self.events.append(("validation_end", task.total, task.completed, task.description))
                super().on_validation_end(trainer, pl_module)

        trainer, _, (bar,) = fit(framework, cases.automatic(), lambda ns: [RecordingRich()], max_epochs=3,
                                 enable_progress_bar=True, logger=cases.recording_logger(framework),
                                 val_check_interval=0.5)
        console_file = bar._console.file
        got[framework] = bar.events
        assert "Epoch 2/2" in console_file.getvalue() and "custom: 1.500" in console_file.getvalue()
    assert got["mopt_fast"] == got["lightning"]
    assert got["lightning"][-1][4]["v_num"] == 0


def test_rich_missing_is_a_clear_import_error(tmp_path) -> None:
    code = (
        "import sys; sys.modules['rich'] = None\n"
        "import mopt_fast\n"
        "try:\n    mopt_fast.RichProgressBar()\nexcept ModuleNotFoundError as e:\n    print('ERROR', e)\n"
        "mopt_fast.Trainer(logger=False)  # the default tqdm bar needs no rich\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = "ERROR `RichProgressBar` requires `rich` >= 10.2.2. Install it by running `pip install -U rich`."
    assert expected in out.stdout


# -- ModelCheckpoint --------------------------------------------------------------------------------------
def checkpoint_summary(cb: Any, folder: str) -> dict:
    """What a ModelCheckpoint chose, with paths relative to `folder` (each framework has its own)."""
    def rel(path: str) -> str:
        return os.path.relpath(path, folder) if path else path

    files = {}
    for root, _, names in os.walk(folder):
        for f in names:
            path = os.path.join(root, f)
            files[rel(path)] = ("link -> " + os.readlink(path)) if os.path.islink(path) else "file"
    return {
        "files": files,
        "best_model_path": rel(cb.best_model_path), "best_model_score": plain(cb.best_model_score),
        "kth_best_model_path": rel(cb.kth_best_model_path), "kth_value": plain(cb.kth_value),
        "current_score": plain(cb.current_score), "last_model_path": rel(cb.last_model_path),
        "best_k_models": {rel(k): plain(v) for k, v in cb.best_k_models.items()},
        "state_key": cb.state_key, "dirpath": rel(cb.dirpath),
    }


def files_at_each_epoch(framework: str, folder: str, history: list) -> Any:
    """A callback noting, at each epoch's start, the checkpoint files and the step each one holds."""
    class FilesAtEachEpoch(namespace(framework).Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
            history.append({n: torch.load(os.path.join(folder, n), weights_only=False)["global_step"] for n in names
                            if n.endswith(".ckpt")})

    return FilesAtEachEpoch()


def raise_at_step(step: int) -> Callable[[type], type]:
    def make(LM: type) -> type:
        class Raises(cases.automatic()(LM)):
            def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
                if self.trainer.global_step == step:
                    raise RuntimeError("stop here")

        return Raises

    return make


MC_CASES = {
    "top2_verbose": ({"monitor": "val_loss", "save_top_k": 2, "verbose": True}, {}),
    "no_auto_metric_name": ({"monitor": "val_loss", "save_top_k": 3, "auto_insert_metric_name": False,
                             "filename": "e{epoch:02d}-v{val_loss:.3f}"}, {}),
    "dotted_metric_names": ({"monitor": "loss_epoch", "save_top_k": 2, "filename": "{epoch}-{loss_epoch:.2f}"}, {}),
    "weights_only_last": ({"save_weights_only": True, "save_last": True}, {}),
    "on_train_epoch_end_despite_mid_epoch_validation": ({"monitor": "val_loss", "save_top_k": -1,
                                                         "save_on_train_epoch_end": True}, {"val_check_interval": 0.5}),
    "after_validation_only": ({"monitor": "val_loss", "save_top_k": 2, "save_on_train_epoch_end": False}, {}),
    "monitor_step_max": ({"monitor": "step", "mode": "max", "save_top_k": 2, "every_n_train_steps": 5}, {}),
    "monitor_epoch": ({"monitor": "epoch", "save_top_k": 2}, {}),
    "save_last_link": ({"monitor": "val_loss", "save_top_k": 2, "save_last": "link"}, {}),
    "save_last_link_every_step": ({"save_last": "link", "every_n_train_steps": 4}, {}),
    "last_only": ({"save_top_k": 0, "save_last": True}, {}),
    "every_n_steps_monitor_validation": ({"monitor": "val_loss", "every_n_train_steps": 4, "save_top_k": 2,
                                          "save_last": True}, {"val_check_interval": 0.5}),
    "train_time_interval_zero": ({"train_time_interval": datetime.timedelta(0), "save_top_k": -1}, {}),
    "no_version_counter": ({"monitor": "val_loss", "filename": "fixed", "save_top_k": 3,
                            "enable_version_counter": False}, {"max_epochs": 6}),
    "version_counter_clash": ({"monitor": "val_loss", "filename": "fixed", "save_top_k": 3}, {"max_epochs": 6}),
    "every_2_epochs_nan_worst": ({"monitor": "val_metric", "save_top_k": 2, "every_n_epochs": 2},
                                 {"case": nonfinite(math.nan), "max_epochs": 6}),
    "manual_every_n_steps": ({"every_n_train_steps": 3, "save_top_k": -1, "save_last": True},
                             {"case": cases.minimal}),
    "save_on_exception": ({"save_on_exception": True, "save_last": True}, {"case": raise_at_step(8)}),
}


@pytest.mark.parametrize("name", list(MC_CASES))
def test_model_checkpoint_matches_lightning(name: str, tmp_path) -> None:
    ckpt_kwargs, trainer_kwargs = MC_CASES[name]
    trainer_kwargs = dict(trainer_kwargs)
    case = trainer_kwargs.pop("case", cases.automatic())
    got = {}
    for framework in FRAMEWORKS:
        folder = str(tmp_path / framework)
        log_name = ("lightning.pytorch.utilities.rank_zero" if framework == "lightning"
                    else "mopt_fast.trainer")
        handler = capture_logs(log_name)
        history: list = []
        try:
            kwargs = {"max_epochs": 4, "enable_checkpointing": True, **trainer_kwargs}
            try:
                trainer, _, (cb, _) = fit(
                    framework, case,
                    lambda ns, fw=framework, folder=folder, history=history: [
                        ns.ModelCheckpoint(dirpath=folder, **ckpt_kwargs), files_at_each_epoch(fw, folder, history)],
                    **kwargs)
            except RuntimeError as e:
                assert name == "save_on_exception" and "stop here" in str(e)
                cb = None
        finally:
            logging.getLogger(log_name).removeHandler(handler)
        if cb is None:  # the fit raised: find the callback through the folder
            got[framework] = {"files": sorted(os.listdir(folder))}
            continue
        summary = checkpoint_summary(cb, folder)
        summary["history"] = history
        summary["messages"] = [m.replace(folder, "<dir>") for m in handler.messages
                               if "global step" in m or "raised" in m]
        state = plain(cb.state_dict())
        state.pop("last_global_step_saved", None)  # mopt_fast's own entry (exact resume)
        state["dirpath"] = os.path.relpath(state["dirpath"], folder)
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = os.path.relpath(state[key], folder) if state[key] else state[key]
        state["best_k_models"] = {os.path.relpath(k, folder): v for k, v in state["best_k_models"].items()}
        summary["state"] = state
        got[framework] = summary
    assert got["mopt_fast"] == got["lightning"]
    assert len(got["lightning"]["files"]) >= 1
    if ckpt_kwargs.get("verbose"):
        assert got["lightning"]["messages"]


def test_model_checkpoint_weights_only_files(tmp_path) -> None:
    for framework in FRAMEWORKS:
        folder = str(tmp_path / framework)
        fit(framework, cases.automatic(),
            lambda ns, folder=folder: [ns.ModelCheckpoint(dirpath=folder, save_weights_only=True)],
            max_epochs=2, enable_checkpointing=True)
        (name,) = os.listdir(folder)
        ckpt = torch.load(os.path.join(folder, name), weights_only=framework == "mopt_fast")
        assert "state_dict" in ckpt and "optimizer_states" not in ckpt and "callbacks" not in ckpt, framework


def test_model_checkpoint_rerun_names_last_v1_and_resumes_from_the_newest(tmp_path) -> None:
    """A second fit into the same folder writes last-v1.ckpt (and -v1 top-k names), as Lightning;
    fit(ckpt_path="last") then resumes from the newest last checkpoint."""
    got = {}
    for framework in FRAMEWORKS:
        folder = str(tmp_path / framework)

        def callbacks(ns: Any, folder: str = folder) -> list:
            return [ns.ModelCheckpoint(dirpath=folder, save_last=True, filename="model")]

        fit(framework, cases.automatic(), callbacks, max_epochs=2, enable_checkpointing=True)
        first = sorted(os.listdir(folder))
        second_trainer, _, (cb,) = fit(framework, cases.automatic(), callbacks, max_epochs=3, enable_checkpointing=True)
        second = sorted(os.listdir(folder))
        last_paths = sorted(os.path.basename(p) for p in cb._find_last_checkpoints(second_trainer))
        batches = []

        def counting(ns: Any, batches: list = batches) -> list:
            class Count(ns.Callback):
                def on_train_batch_start(self, *args: Any) -> None:
                    batches.append(1)

            return [*callbacks(ns), Count()]

        trainer, _, _ = fit(framework, cases.automatic(), counting, max_epochs=4, enable_checkpointing=True,
                            ckpt_path="last")
        got[framework] = (first, second, os.path.basename(cb.last_model_path), last_paths, trainer.global_step,
                          len(batches))
    assert got["mopt_fast"] == got["lightning"]
    assert got["lightning"][1] == ["last-v1.ckpt", "last.ckpt", "model-v1.ckpt", "model.ckpt"]
    assert got["lightning"][4:] == (4 * 6, 6)  # resumed from last-v1.ckpt (3 epochs), not last.ckpt (2)


def test_model_checkpoint_paths_state_key_and_yaml(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    got = {}
    for framework in FRAMEWORKS:
        ns = namespace(framework)
        cb = ns.ModelCheckpoint(dirpath=f"~/{framework}/ckpts", monitor="val_loss", save_top_k=2, every_n_epochs=2)
        assert cb.dirpath == os.path.realpath(str(tmp_path / framework / "ckpts"))
        fit(framework, cases.automatic(), lambda ns, cb=cb: [cb], max_epochs=6, enable_checkpointing=True)
        cb.to_yaml()
        with open(os.path.join(cb.dirpath, "best_k_models.yaml")) as f:
            yaml_text = f.read().replace(cb.dirpath, "<dir>")
        # the default folder under a logger: <save_dir>/<name>/<version>/checkpoints
        logger_cls = pl.loggers.CSVLogger if framework == "lightning" else mopt_fast.CSVLogger
        _, _, (default,) = fit(framework, cases.automatic(), lambda ns: [ns.ModelCheckpoint()], max_epochs=1,
                               enable_checkpointing=True, logger=logger_cls(str(tmp_path / f"logs-{framework}")))
        got[framework] = (cb.state_key, cb.every_n_epochs, yaml_text,
                          os.path.relpath(default.dirpath, str(tmp_path / f"logs-{framework}")))
    assert got["mopt_fast"] == got["lightning"]
    assert got["lightning"][3] == os.path.join("lightning_logs", "version_0", "checkpoints")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"mode": "maximum"}, "`mode` can be min, max but got maximum"),
        ({"save_top_k": -2}, "Invalid value for save_top_k=-2. Must be >= -1"),
        ({"every_n_train_steps": -1}, "Invalid value for every_n_train_steps=-1. Must be >= 0"),
        ({"every_n_epochs": -3}, "Invalid value for every_n_epochs=-3. Must be >= 0"),
        ({"every_n_epochs": 2, "every_n_train_steps": 3}, "Combination of parameters every_n_train_steps=3, "
                                                          "every_n_epochs=2 and train_time_interval=None should be "
                                                          "mutually exclusive."),
        ({"save_top_k": 3}, "ModelCheckpoint\\(save_top_k=3, monitor=None\\) is not a valid configuration. No "
                            "quantity for top_k to track."),
    ],
)
def test_model_checkpoint_bad_arguments(kwargs: dict, message: str) -> None:
    for framework in FRAMEWORKS:
        with pytest.raises(misconfiguration(framework), match=message):
            namespace(framework).ModelCheckpoint(**kwargs)


def test_model_checkpoint_missing_monitor_after_validation(tmp_path) -> None:
    errors = {}
    for framework in FRAMEWORKS:
        with pytest.raises(misconfiguration(framework)) as info:
            fit(framework, cases.automatic(),
                lambda ns, f=framework: [ns.ModelCheckpoint(dirpath=str(tmp_path / f), monitor="nope")],
                max_epochs=2, enable_checkpointing=True)
        errors[framework] = str(info.value)
    assert errors["mopt_fast"] == errors["lightning"]
    assert "could not find the monitored key in the returned metrics" in errors["lightning"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_ddp_ranks_decide_together(tmp_path) -> None:
    """Under DDP with a metric that differs between ranks: any rank's EarlyStopping stops them all
    (Lightning's reduce_boolean_decision(all=False)), ModelCheckpoint saves only when every rank
    agrees the score is better, and only rank 0 logs the learning rate."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    child = os.path.join(os.path.dirname(__file__), "callbacks_ddp_child.py")
    proc = subprocess.run([sys.executable, child, str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(str(tmp_path / f"rank{r}.pt"), weights_only=True) for r in (0, 1))
    # rank 1 stops improving at epoch 2 (patience 1): both ranks stop there
    # (rank 0's own criteria did not fire: its reason stays NOT_STOPPED, as in Lightning)
    assert (r0["epoch"], r0["stopped_epoch"], r0["reason"]) == (3, 2, "NOT_STOPPED")
    assert (r1["epoch"], r1["stopped_epoch"], r1["reason"]) == (3, 2, "PATIENCE_EXHAUSTED")
    assert r0["wait_count"] == 0 and r1["wait_count"] == 1  # each rank's own record
    # epoch 2 is better for rank 0 only: no save there; the epoch-1 file stays the best on both
    assert r0["best"] == r1["best"] == "epoch=1-step=8.ckpt"
    assert r0["files"] == ["epoch=1-step=8.ckpt"]
    assert [step for step, _ in r0["lr_calls"]] == [0, 4, 8] and r1["lr_calls"] == []
