"""Differences Lightning's own tests found (issue 17, §3), each run side by side with Lightning 2.6
on the same seed: LightningModule.configure_callbacks and configure_model, trainer.init_module,
default_root_dir's "~", PL_TRAINER_* defaults, self.log in optimizer_step, pickling a Trainer and
its progress bar, torch.jit.script with a Trainer attached, and the messages (exceptions, warnings,
INFO lines, progress-bar refreshes) for the same situations."""
from __future__ import annotations

import glob
import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

import mopt_fast

import lightning_cases as cases
from helpers import importorskip_unless_ci

pl = importorskip_unless_ci("lightning.pytorch")

FRAMEWORKS = ("lightning", "mopt_fast")
# The loggers each framework writes its INFO lines to.
INFO_LOGGER = {"lightning": "lightning.pytorch.utilities.rank_zero", "mopt_fast": "mopt_fast.trainer"}
SEED_LOGGER = {"lightning": "lightning.fabric.utilities.seed", "mopt_fast": "mopt_fast.seed"}
# Lightning's advertisement for its hosted logger: not a message about the run, not mimicked.
_NOT_MIMICKED = ("💡 Tip",)


def callbacks_ns(framework: str) -> Any:
    return pl.callbacks if framework == "lightning" else mopt_fast.callbacks


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if not message.startswith(_NOT_MIMICKED):
            self.messages.append(message)


class captured_info:
    """The INFO lines logged under `name` inside the block (`.messages`)."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)
        self.handler = Capture()

    def __enter__(self) -> list[str]:
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        return self.handler.messages

    def __exit__(self, *exc: Any) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def trainer_kwargs(**kwargs: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=tempfile.mkdtemp(prefix="mopt_fast_test_"))
    base.update(kwargs)
    return base


def relevant(caught: list[warnings.WarningMessage]) -> list[tuple[str, str]]:
    """(category name, message) of the warnings about the run (not torch's or Lightning's own
    deprecations of their internals)."""
    return [(w.category.__name__, str(w.message)) for w in caught
            if "treespec" not in str(w.message) and "litlogger" not in str(w.message)]


# -- configure_callbacks ----------------------------------------------------------------------------
def with_model_callbacks(framework: str, events: list) -> type:
    ns = callbacks_ns(framework)

    class Recorder(ns.Callback):
        def __init__(self, tag: str) -> None:
            self.tag = tag

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            events.append(("train_start", self.tag))

        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            events.append(("validation_start", self.tag))

        def on_test_start(self, trainer: Any, pl_module: Any) -> None:
            events.append(("test_start", self.tag))

        def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
            events.append(("predict_start", self.tag))

    class FromModel(Recorder):
        pass

    class Model(cases.automatic()(cases.frameworks(framework)[0])):
        def configure_callbacks(self) -> Any:
            return [FromModel("model"), ns.ModelCheckpoint(monitor="val_loss", dirpath=self.folder)]

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.log("test_loss", self.compute_loss(batch))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    Model.Recorder = Recorder  # type: ignore[attr-defined]
    return Model


def test_configure_callbacks_replaces_trainer_callbacks_as_lightning(tmp_path) -> None:
    """The model's callbacks replace the Trainer's of their type or a parent type (with Lightning's
    INFO line), checkpoint callbacks go last, and it happens at every entry point."""
    got = {}
    for framework in FRAMEWORKS:
        events: list = []
        Model = with_model_callbacks(framework, events)
        ns = callbacks_ns(framework)
        torch.manual_seed(0)
        model = Model()
        model.folder = str(tmp_path / framework)
        trainer = cases.frameworks(framework)[1](**trainer_kwargs(
            enable_checkpointing=True, callbacks=[Model.Recorder("trainer"), ns.ModelCheckpoint(dirpath=model.folder),
                                                  Model.Recorder("trainer2")]))
        train, val = cases.make_data()
        orders = []
        with captured_info(INFO_LOGGER[framework]) as info, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, train, val)
            orders.append([type(c).__name__ for c in trainer.callbacks])
            best = trainer.checkpoint_callback.best_model_score.item()
            trainer.validate(model, val, verbose=False)
            trainer.test(model, val, verbose=False)
            trainer.predict(model, DataLoader(torch.randn(8, 8), batch_size=4))
            orders.append([type(c).__name__ for c in trainer.callbacks])
        got[framework] = {
            "orders": orders, "events": events, "info": [m for m in info if "override" in m],
            "best": best,
            "weights": [p.detach().clone() for p in model.parameters()],
        }
    ref, ours = got["lightning"], got["mopt_fast"]
    for key in ("orders", "events", "info", "best"):
        assert ours[key] == ref[key], key
    assert ref["info"] and ref["orders"][0][-1] == "ModelCheckpoint"
    assert all(torch.equal(a, b) for a, b in zip(ours["weights"], ref["weights"]))


# -- configure_model and init_module ----------------------------------------------------------------
def lazy_model(framework: str, calls: list) -> type:
    LM = cases.frameworks(framework)[0]

    class Lazy(LM):
        """Builds its layers in configure_model (the parameter list is empty until then)."""

        def __init__(self) -> None:
            super().__init__()
            self.net: nn.Module | None = None

        def setup(self, stage: str) -> None:
            calls.append(("setup", stage))

        def configure_model(self) -> None:
            calls.append(("configure_model", self.net is None))
            if self.net is None:
                self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

        def configure_optimizers(self) -> Any:
            calls.append(("configure_optimizers",))
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.validation_step(batch, batch_idx)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    return Lazy


def test_configure_model_builds_the_layers_a_fit_trains() -> None:
    got = {}
    for framework in FRAMEWORKS:
        calls: list = []
        torch.manual_seed(0)
        model = lazy_model(framework, calls)()
        trainer = cases.frameworks(framework)[1](**trainer_kwargs())
        train, val = cases.make_data()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, train, val)
            results = trainer.validate(model, val, verbose=False) + trainer.test(model, val, verbose=False)
            trainer.predict(model, DataLoader(torch.randn(4, 8), batch_size=2))
        got[framework] = (calls, results, model.state_dict())
    (ref_calls, ref_results, ref_state), (calls, results, state) = got["lightning"], got["mopt_fast"]
    assert calls == ref_calls
    assert calls[:3] == [("setup", "fit"), ("configure_model", True), ("configure_optimizers",)]
    assert results == ref_results
    assert state.keys() == ref_state.keys() and all(torch.equal(state[k], ref_state[k]) for k in state)


def sharded_model(framework: str, both: bool) -> type:
    class Sharded(lazy_model(framework, [])):
        def configure_sharded_model(self) -> None:
            if self.net is None:
                self.net = nn.Linear(8, 1)

    if not both:
        Sharded.configure_model = cases.frameworks(framework)[0].configure_model  # type: ignore[method-assign]
    return Sharded


@pytest.mark.parametrize("both", [False, True], ids=["deprecated_hook", "both_hooks"])
def test_configure_sharded_model_as_lightning(both: bool) -> None:
    got = {}
    for framework in FRAMEWORKS:
        torch.manual_seed(0)
        model = sharded_model(framework, both)()
        trainer = cases.frameworks(framework)[1](**trainer_kwargs(max_epochs=1))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                trainer.fit(model, cases.make_data()[0])
                outcome: Any = [p.detach().clone() for p in model.parameters()]
            except RuntimeError as e:
                outcome = (type(e).__name__, str(e))
        deprecations = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)
                        and "configure_sharded_model" in str(w.message)]
        got[framework] = (outcome, deprecations)
    (ref, ref_dep), (ours, dep) = got["lightning"], got["mopt_fast"]
    assert dep == ref_dep and bool(ref_dep) is not both
    if both:
        assert ours == ref and ref[0] == "RuntimeError"
    else:
        assert all(torch.equal(a, b) for a, b in zip(ours, ref))


def test_init_module_places_tensors_and_skips_init_as_lightning() -> None:
    for framework in FRAMEWORKS:
        trainer = cases.frameworks(framework)[1](**trainer_kwargs())
        torch.manual_seed(0)
        reference = nn.Linear(4, 4)
        torch.manual_seed(0)
        with trainer.init_module():
            made = nn.Linear(4, 4)
        assert made.weight.device == torch.device("cpu")
        assert torch.equal(made.weight, reference.weight), framework
        torch.manual_seed(0)
        rng = torch.get_rng_state()
        with trainer.init_module(empty_init=True):
            nn.Linear(64, 64)
        assert torch.equal(torch.get_rng_state(), rng), framework  # nn.init drew nothing: skipped


# -- default_root_dir and PL_TRAINER_* ---------------------------------------------------------------
def test_default_root_dir_expands_user_as_lightning(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for given in ("~/runs/../x", "s3://bucket/~x", None):
        dirs = []
        for framework in FRAMEWORKS:
            trainer = cases.frameworks(framework)[1](**trainer_kwargs(default_root_dir=given))
            dirs.append(trainer.default_root_dir)
        assert dirs[0] == dirs[1], given
    assert dirs[0] == os.getcwd()
    folders = []
    for framework in FRAMEWORKS:  # the default logger writes under the expanded folder
        trainer = cases.frameworks(framework)[1](**trainer_kwargs(default_root_dir="~/logs", logger=True))
        folders.append(trainer.logger.save_dir)
    assert folders[0] == folders[1] == str(tmp_path / "logs")


def test_pl_trainer_environment_variables_as_lightning(monkeypatch) -> None:
    monkeypatch.setenv("PL_TRAINER_MAX_EPOCHS", "3")
    monkeypatch.setenv("PL_TRAINER_LIMIT_TRAIN_BATCHES", "0.5")
    monkeypatch.setenv("PL_TRAINER_ACCELERATOR", "cpu")  # not a literal: the string
    monkeypatch.setenv("PL_TRAINER_LOGGER", "False")
    monkeypatch.setenv("PL_TRAINER_GRADIENT_CLIP_VAL", "")  # empty: ignored
    monkeypatch.setenv("PL_TRAINER_NOT_AN_ARGUMENT", "1")
    monkeypatch.setenv("PL_MYTRAINER_MAX_STEPS", "7")  # a subclass reads its own name
    got = {}
    for framework in FRAMEWORKS:
        Trainer = cases.frameworks(framework)[1]
        explicit = Trainer(max_epochs=5, enable_progress_bar=False)
        from_env = Trainer(enable_progress_bar=False)
        MyTrainer = type("MyTrainer", (Trainer,), {})
        sub = MyTrainer(enable_progress_bar=False)
        got[framework] = (explicit.max_epochs, from_env.max_epochs, from_env.limit_train_batches,
                          from_env.logger, from_env.gradient_clip_val, sub.max_steps, sub.max_epochs)
    assert got["mopt_fast"] == got["lightning"] == (5, 3, 0.5, None, None, 7, None)


# -- self.log in optimizer_step -----------------------------------------------------------------------
def logging_in_optimizer_step(LM: type) -> type:
    class LogsInOptimizerStep(cases.automatic()(LM)):
        def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
            self.log("weight_sum", self.net[0].weight.sum())  # before the step: the first call of the hook
            optimizer.step(closure=optimizer_closure)
            self.log("weight_abs", self.net[0].weight.abs().sum(), on_epoch=True, prog_bar=True)
            self.log("last_batch", float(batch_idx), on_step=False, on_epoch=True, reduce_fx="max")

    return LogsInOptimizerStep


def test_log_in_optimizer_step_as_lightning(tmp_path) -> None:
    got = {}
    for framework in FRAMEWORKS:
        folder = str(tmp_path / framework)
        csv = (pl.loggers.CSVLogger if framework == "lightning" else mopt_fast.loggers.CSVLogger)(folder)
        torch.manual_seed(0)
        model = logging_in_optimizer_step(cases.frameworks(framework)[0])()
        trainer = cases.frameworks(framework)[1](**trainer_kwargs(
            logger=csv, log_every_n_steps=2, accumulate_grad_batches=2, val_check_interval=0.5))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, *cases.make_data())
        metrics = (trainer.callback_metrics, trainer.logged_metrics, trainer.progress_bar_metrics)
        with open(glob.glob(os.path.join(folder, "**", "metrics.csv"), recursive=True)[0]) as f:
            got[framework] = ([{k: float(v) for k, v in m.items()} for m in metrics], f.read())
    assert got["mopt_fast"] == got["lightning"]
    assert "weight_abs_epoch" in got["lightning"][0][0] and "last_batch" in got["lightning"][0][1]


def test_callback_log_as_lightning() -> None:
    """``Callback.log`` / ``log_dict``: the module's, attached at every run, logging under the
    running hook."""
    got = {}
    for framework in FRAMEWORKS:
        class Logging(callbacks_ns(framework).Callback):
            def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
                self.log("cb_loss", outputs["loss"] * 2, prog_bar=True)

            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                self.log_dict({"cb_epoch": float(trainer.current_epoch), "cb_w": pl_module.net[0].weight.sum()})

            def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                self.log("cb_val", trainer.callback_metrics["val_loss"] + 1)

        torch.manual_seed(0)
        trainer = cases.frameworks(framework)[1](**trainer_kwargs(callbacks=[Logging()]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(cases.automatic()(cases.frameworks(framework)[0])(), *cases.make_data())
        got[framework] = [{k: float(v) for k, v in m.items()} for m in (
            trainer.callback_metrics, trainer.logged_metrics, trainer.progress_bar_metrics)]
    assert got["mopt_fast"] == got["lightning"]
    assert {"cb_loss", "cb_epoch", "cb_w", "cb_val"} <= set(got["lightning"][0])


# -- objects that survive: pickle, torch.jit.script ---------------------------------------------------------
def hooked(LM: type) -> type:
    class Hooked(cases.automatic()(LM)):
        def on_before_optimizer_step(self, optimizer: Any) -> None:  # a closure in the per-step callables
            self.seen = getattr(self, "seen", 0) + 1

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:  # the run's transfer closure
            return batch

    return Hooked


def _module_level(cls: type, name: str) -> type:
    """`cls` findable by pickle under `name` in this module (a fitted Trainer pickles its model)."""
    cls.__qualname__ = cls.__name__ = name
    cls.__module__ = __name__
    globals()[name] = cls
    return cls


HOOKED = {"lightning": _module_level(hooked(pl.LightningModule), "HookedLightning"),
          "mopt_fast": _module_level(hooked(mopt_fast.LightningModule), "HookedMoptFast")}


@pytest.mark.parametrize("bar_class", ["TQDMProgressBar", "RichProgressBar"])
def test_pickle_trainer_and_progress_bar_after_fit(bar_class: str) -> None:
    for framework in FRAMEWORKS:
        LM, Trainer = cases.frameworks(framework)
        bar = getattr(callbacks_ns(framework), bar_class)()
        torch.manual_seed(0)
        model = HOOKED[framework]()
        trainer = Trainer(**trainer_kwargs(enable_progress_bar=True, callbacks=[bar], gradient_clip_val=1.0))
        pickle.dumps(bar)
        with warnings.catch_warnings(), io.StringIO() as out:
            warnings.simplefilter("ignore")
            stdout, sys.stdout = sys.stdout, out
            try:
                trainer.fit(model, *cases.make_data())
                trainer.validate(model, cases.make_data()[1], verbose=False)
            finally:
                sys.stdout = stdout
        pickle.dumps(bar)
        pickle.dumps(trainer)
    # ours comes back as a working Trainer: its optimizer wrappers, hooks and clipping too
    clone = pickle.loads(pickle.dumps(trainer))
    assert type(clone.lightning_optimizers[0]).__name__ == "LightningSGD"
    assert isinstance(clone.lightning_optimizers[0], torch.optim.SGD)
    torch.manual_seed(1)
    clone.max_epochs = 3  # one more epoch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clone.fit(clone.lightning_module, *cases.make_data())
    assert clone.lightning_module.seen > model.seen


def test_optimizer_wrapper_pickles_standalone() -> None:
    params = [nn.Parameter(torch.randn(5))]
    wrapper = mopt_fast.LightningOptimizer(torch.optim.Adam(params, lr=0.1))
    params[0].grad = torch.randn(5)
    wrapper.step()
    clone = pickle.loads(pickle.dumps(wrapper))
    assert type(clone) is type(wrapper) and isinstance(clone, torch.optim.Adam)
    assert clone.state_dict()["state"][0]["step"] == 1
    clone.param_groups[0]["params"][0].grad = torch.ones(5)
    clone.step()  # the clone's own optimizer, with the clone's parameter
    assert clone.state_dict()["state"][0]["step"] == 2 and wrapper.state_dict()["state"][0]["step"] == 1


def scriptable(LM: type) -> type:
    class Scriptable(LM):
        def __init__(self, width: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    return Scriptable


def test_torch_jit_script_with_a_trainer_attached() -> None:
    """The module's properties that read the Trainer (or are not TorchScript) are left out of the
    scripted module, as Lightning's __jit_unused_properties__ does."""
    outputs = []
    x = torch.randn(3, 8)
    for framework in FRAMEWORKS:
        LM, Trainer = cases.frameworks(framework)
        torch.manual_seed(0)
        model = scriptable(LM)().eval()
        model.trainer = Trainer(**trainer_kwargs())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch's, for torch.jit.script itself
            scripted = torch.jit.script(model)
        outputs.append(scripted(x))
    assert torch.equal(outputs[0], outputs[1])


# -- messages: Trainer arguments ----------------------------------------------------------------------
ARGUMENT_CASES = {
    **{f"limit_train_batches={v!r}": {"limit_train_batches": v} for v in (1, 1.0, 2.0, 1.5, -1, -0.5, "a", True, 0)},
    **{f"val_check_interval={v!r}": {"val_check_interval": v}
       for v in (1, 1.0, 0.0, 1.5, 3.0, -1, -0.1, "x", "1:2:3:a")},
    "limit_val_batches=1.5": {"limit_val_batches": 1.5},
    "limit_test_batches=-2": {"limit_test_batches": -2},
    "limit_test_batches=1": {"limit_test_batches": 1},
    "limit_predict_batches=7.5": {"limit_predict_batches": 7.5},
    "overfit_batches=1.5": {"overfit_batches": 1.5},
    "max_epochs=-2": {"max_epochs": -2},
    "max_steps=-5": {"max_steps": -5},
    "fast_dev_run=-1": {"fast_dev_run": -1},
    "fast_dev_run=2": {"fast_dev_run": 2},
    "detect_anomaly": {"detect_anomaly": True},
    "float_interval_without_epochs": {"check_val_every_n_epoch": None, "val_check_interval": 0.5},
    "check_val_every_n_epoch=1.5": {"check_val_every_n_epoch": 1.5},
    "max_time_with_a_timer": {"max_time": {"seconds": 5}, "callbacks": "timer"},
    "max_time_bad_format": {"max_time": "1:00"},
    "gradient_clip_val='a'": {"gradient_clip_val": "a"},
    "gradient_clip_val=True": {"gradient_clip_val": True},
    "gradient_clip_algorithm='l3'": {"gradient_clip_algorithm": "l3"},
    "num_nodes=0": {"num_nodes": 0},
    "devices=0": {"devices": 0},
    "devices='0'": {"devices": "0"},
    "reload_dataloaders_every_n_epochs=-1": {"reload_dataloaders_every_n_epochs": -1},
}


@pytest.mark.parametrize("name", list(ARGUMENT_CASES))
def test_trainer_argument_messages_as_lightning(name: str) -> None:
    got = {}
    for framework in FRAMEWORKS:
        kwargs = dict(ARGUMENT_CASES[name])
        if kwargs.get("callbacks") == "timer":
            kwargs["callbacks"] = [callbacks_ns(framework).Timer(duration={"seconds": 9})]
        with captured_info(INFO_LOGGER[framework]) as info, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                trainer = cases.frameworks(framework)[1](accelerator="cpu", logger=False, enable_progress_bar=False,
                                                         enable_model_summary=False, **kwargs)
                outcome: Any = [getattr(trainer, k, None) for k in ARGUMENT_CASES[name] if k != "callbacks"]
            except Exception as e:
                outcome = (type(e).__name__, str(e))
        got[framework] = (outcome, list(info), relevant(caught))
    if name == "detect_anomaly":  # Lightning keeps it private
        got["mopt_fast"] = ([None], *got["mopt_fast"][1:])
    assert got["mopt_fast"] == got["lightning"]


def test_device_info_lines_as_lightning() -> None:
    lines = {}
    for framework in FRAMEWORKS:
        with captured_info(INFO_LOGGER[framework]) as info:
            cases.frameworks(framework)[1](accelerator="cpu", logger=False, enable_progress_bar=False)
        lines[framework] = list(info)
    assert lines["mopt_fast"] == lines["lightning"]
    assert lines["lightning"][0].startswith("GPU available: ")


# -- messages: during a fit ------------------------------------------------------------------------------
class Stream(IterableDataset):
    def __init__(self) -> None:
        self.data = list(zip(*cases.make_data(32)[0].dataset.tensors))

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)


def fit_messages(framework: str, data: Callable[[], tuple], **kwargs: Any) -> tuple:
    """(outcome, INFO lines, warnings) of a fit."""
    LM, Trainer = cases.frameworks(framework)
    torch.manual_seed(0)
    model = cases.automatic()(LM)()
    with captured_info(INFO_LOGGER[framework]) as info, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer = Trainer(**trainer_kwargs(**kwargs))
            info.clear()  # the lines of the Trainer's making are tested above
            trainer.fit(model, *data())
            outcome: Any = (trainer.global_step, trainer.current_epoch)
        except Exception as e:
            outcome = (type(e).__name__, str(e))
    return outcome, list(info), [w for w in relevant(caught) if "val_dataloader" not in w[1]
                                 and "does not have many workers" not in w[1]]


FIT_CASES: dict[str, tuple[Callable[[], tuple], dict[str, Any]]] = {
    "max_epochs_reached": (cases.make_data, {"max_epochs": 2}),
    "max_steps_reached": (cases.make_data, {"max_steps": 3, "max_epochs": -1}),
    "max_epochs_default": (cases.make_data, {"max_epochs": None, "max_steps": 4}),
    "max_epochs_default_warning": (cases.make_data, {"max_epochs": None, "limit_train_batches": 0}),
    "time_limit": (cases.make_data, {"max_time": {"seconds": 0}, "max_epochs": 3}),
    "no_training_batches": (lambda: (DataLoader(torch.randn(0, 8)),), {}),
    "fewer_batches_than_log_interval": (cases.make_data, {"logger": "csv", "log_every_n_steps": 10}),
    "val_check_interval_above_batches": (cases.make_data, {"val_check_interval": 7}),
    "val_check_interval_above_batches_no_val": (cases.make_data, {"val_check_interval": 7, "limit_val_batches": 0}),
    "float_interval_on_a_stream": (lambda: (DataLoader(Stream(), batch_size=8), cases.make_data()[1]),
                                   {"val_check_interval": 0.5}),
}


@pytest.mark.parametrize("name", list(FIT_CASES))
def test_fit_messages_as_lightning(name: str, tmp_path) -> None:
    data, kwargs = FIT_CASES[name]
    got = {}
    for framework in FRAMEWORKS:
        kw = dict(kwargs)
        if kw.get("logger") == "csv":
            kw["logger"] = (pl.loggers.CSVLogger if framework == "lightning" else mopt_fast.loggers.CSVLogger)(
                str(tmp_path / framework))
        got[framework] = fit_messages(framework, data, **kw)
    assert got["mopt_fast"] == got["lightning"]
    assert got["lightning"][1] or got["lightning"][2] or got["lightning"][0][0].endswith(("Error", "Exception"))


def test_dataloader_warnings_as_lightning(monkeypatch) -> None:
    """Lightning's warnings about each loader as it is set up (few workers on a machine with more
    CPUs, a shuffling validation loader), for fit, validate, test and predict."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    got = {}
    for framework in FRAMEWORKS:
        LM, Trainer = cases.frameworks(framework)

        class Predicting(cases.automatic()(LM)):
            def test_step(self, batch: Any, batch_idx: int) -> None:
                self.log("test_loss", self.compute_loss(batch))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net(x)

        torch.manual_seed(0)
        model = Predicting()
        trainer = Trainer(**trainer_kwargs(max_epochs=1))
        train, val = cases.make_data()
        shuffled_val = DataLoader(val.dataset, batch_size=16, shuffle=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(model, train, shuffled_val)
            trainer.validate(model, val, verbose=False)
            trainer.test(model, val, verbose=False)
            trainer.predict(model, DataLoader(torch.randn(4, 8), batch_size=2))
        got[framework] = relevant(caught)
    assert got["mopt_fast"] == got["lightning"]
    assert any("does not have many workers" in m for _, m in got["lightning"])


def test_seed_everything_info_line_as_lightning() -> None:
    lines = {}
    for framework, seed_everything in (("lightning", pl.seed_everything), ("mopt_fast", mopt_fast.seed_everything)):
        with captured_info(SEED_LOGGER[framework]) as info:
            seed_everything(123)
            seed_everything(7, verbose=False)
        lines[framework] = list(info)
    assert lines["mopt_fast"] == lines["lightning"] == ["Seed set to 123"]


def test_seed_line_printed_without_logging_configured() -> None:
    """A script that configures no logging sees the line on stderr, as with Lightning (whose
    package loggers get a stream handler)."""
    script = "import mopt_fast; mopt_fast.seed_everything(5)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0 and "Seed set to 5" in result.stderr.splitlines(), result.stderr


# -- the progress bar's refresh points -----------------------------------------------------------------------
def recording_tqdm(framework: str, calls: list) -> type:
    module = (pl.callbacks.progress.tqdm_progress if framework == "lightning"
              else mopt_fast.callbacks.progress.tqdm_progress)

    class RecordingTqdm(module.Tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)
            calls.append(("init", kwargs.get("desc"), kwargs.get("disable")))

        def refresh(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(("refresh", getattr(self, "desc", None), getattr(self, "n", None)))
            return super().refresh(*args, **kwargs)

        def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> Any:
            calls.append(("set_postfix", getattr(self, "desc", None), sorted(ordered_dict or {}), refresh))
            return super().set_postfix(ordered_dict, refresh, **kwargs)

        def reset(self, total: Any = None) -> Any:
            calls.append(("reset", getattr(self, "desc", None), total))
            return super().reset(total)

        def set_description(self, desc: Any = None, refresh: bool = True) -> Any:
            calls.append(("set_description", desc, refresh))
            return super().set_description(desc, refresh)

        def close(self) -> Any:
            calls.append(("close", getattr(self, "desc", None)))
            return super().close()

    return RecordingTqdm


def test_progress_bar_refreshes_at_lightnings_points(monkeypatch) -> None:
    """With refresh_interval=0 (Lightning's points; the default reads the metrics and redraws at most
    every 0.5 s / 0.1 s), the tqdm calls of a fit, a validate, a test and a predict are Lightning's,
    one by one."""
    got = {}
    for framework in FRAMEWORKS:
        calls: list = []
        module = (pl.callbacks.progress.tqdm_progress if framework == "lightning"
                  else mopt_fast.callbacks.progress.tqdm_progress)
        monkeypatch.setattr(module, "Tqdm", recording_tqdm(framework, calls))
        bar = (callbacks_ns(framework).TQDMProgressBar() if framework == "lightning"
               else mopt_fast.TQDMProgressBar(refresh_interval=0))
        LM, Trainer = cases.frameworks(framework)

        class Model(cases.automatic()(LM)):
            def test_step(self, batch: Any, batch_idx: int) -> None:
                self.log("test_loss", self.compute_loss(batch))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net(x)

        torch.manual_seed(0)
        model = Model()
        trainer = Trainer(**trainer_kwargs(enable_progress_bar=True, callbacks=[bar], limit_train_batches=4,
                                           limit_val_batches=2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, *cases.make_data())
            calls.append("validate")
            trainer.validate(model, cases.make_data()[1], verbose=False)
            calls.append("test")
            trainer.test(model, cases.make_data()[1], verbose=False)
            calls.append("predict")
            trainer.predict(model, DataLoader(torch.randn(6, 8), batch_size=2))
        got[framework] = calls
    assert got["mopt_fast"] == got["lightning"]
    assert sum(c[0] == "refresh" for c in got["lightning"]) > 10
