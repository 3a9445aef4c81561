"""The Trainer-level Lightning surface, side by side with Lightning 2.6's own Trainer: each feature
runs under both on the same seed and data, and must end with the same weights (bitwise), metrics,
returned results, hooks and files."""
from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import mopt_fast
from mopt_fast.core import protocol as _protocol
from mopt_fast.core.states import LoopPoint, RunningStage, TrainerFn, TrainerStatus

import lightning_cases as cases
from helpers import HostReads, importorskip_unless_ci

importorskip_unless_ci("lightning")


# -- the Trainer's seams and state ------------------------------------------------------------------
def test_trainer_implements_the_protocols_other_parts_use() -> None:
    """What the module, the optimizer wrapper, the metric store, ModelCheckpoint and the strategies
    ask of the Trainer (_protocol.py) is there on a Trainer, before and after a fit."""
    trainer = mopt_fast.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, enable_checkpointing=False)
    protocols = [_protocol.ModuleTrainer, _protocol.MetricsTrainer, _protocol.OptimizerTrainer,
                 _protocol.CheckpointTrainer, _protocol.CallbackTrainer, _protocol.MonitorTrainer,
                 _protocol.TrainerProtocol]
    for proto in protocols:
        assert isinstance(trainer, proto), proto.__name__
    torch.manual_seed(0)
    trainer.fit(cases.minimal(mopt_fast.LightningModule)(), cases.make_data()[0])
    for proto in protocols:
        assert isinstance(trainer, proto), proto.__name__


def test_state_enums_compare_as_lightnings() -> None:
    from lightning.pytorch.trainer import states as pl_states

    for ours, theirs in ((TrainerFn, pl_states.TrainerFn), (RunningStage, pl_states.RunningStage),
                         (TrainerStatus, pl_states.TrainerStatus)):
        assert [m.value for m in ours] == [m.value for m in theirs]
        for m in ours:
            assert m == m.value and m == m.value.upper() and hash(m) == hash(theirs(m.value))
            assert str(m) == str(theirs(m.value))
    assert RunningStage.SANITY_CHECKING.dataloader_prefix == "val" and RunningStage.TESTING.evaluating
    assert {LoopPoint.BATCH: 1}["batch"] == 1  # usable where plain strings were


def test_state_during_and_after_fit_as_lightning() -> None:
    """trainer.state (fn, stage, status) and the stage flags in the hooks and after fit."""
    def make(LM):
        class M(cases.minimal(LM)):
            def on_train_batch_start(self, batch, batch_idx):
                self.recorded.append(("batch", self.trainer.state.fn, self.trainer.state.stage,
                                      self.trainer.state.status, self.trainer.training))

            def on_validation_start(self):
                t = self.trainer
                self.recorded.append(("val", t.state.fn, t.state.stage, t.validating, t.sanity_checking, t.evaluating))

        return M

    ref = cases.run("lightning", make, max_epochs=1)
    got = cases.run("mopt_fast", make, max_epochs=1)
    norm = [tuple(str(x) if not isinstance(x, bool) else x for x in r) for r in ref["recorded"]]
    assert [tuple(str(x) if not isinstance(x, bool) else x for x in r) for r in got["recorded"]] == norm
    for key in ("fn", "stage", "status"):
        assert str(getattr(got["trainer"].state, key)) == str(getattr(ref["trainer"].state, key)), key
    assert got["trainer"].interrupted is ref["trainer"].interrupted is False


# -- harness ------------------------------------------------------------------------------------------
def classes(fw: str) -> tuple[type, type, type, type]:
    """(LightningModule, Trainer, LightningDataModule, Callback) of `fw`."""
    LM, Trainer = cases.frameworks(fw)
    if fw == "lightning":
        from lightning.pytorch import Callback, LightningDataModule
    else:
        from mopt_fast import Callback, LightningDataModule
    return LM, Trainer, LightningDataModule, Callback


def new_trainer(fw: str, root: str, **kw: Any) -> Any:
    args = dict(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, default_root_dir=root)
    args.update(kw)
    return classes(fw)[1](**args)


CALLBACK_HOOKS = (
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end", "on_validation_start",
    "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_batch_start",
    "on_validation_batch_end", "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end",
    "on_test_batch_start", "on_test_batch_end", "on_predict_start", "on_predict_end", "on_predict_epoch_start",
    "on_predict_epoch_end", "on_predict_batch_start", "on_predict_batch_end", "on_exception",
)


def recorder(fw: str) -> Any:
    """A callback of `fw` recording every hook: its name, the trainer's stage flags, and the batch
    index / dataloader index / stage argument it got."""
    Callback = classes(fw)[3]
    calls: list[tuple] = []

    def make(name: str):
        def hook(self, trainer, pl_module, *args, **kwargs):
            extra = []
            if "batch" in name:
                extra = [a for a in args[1:] if isinstance(a, int)]
                extra += [kwargs[k] for k in sorted(kwargs)]
            elif name in ("setup", "teardown"):
                extra = [str(kwargs.get("stage", args[0] if args else None)).split(".")[-1].lower()]
            elif name == "on_exception":
                extra = [type(args[0]).__name__]
            flags = (trainer.training, trainer.validating, trainer.testing, trainer.predicting, trainer.sanity_checking)
            calls.append((name, *flags, torch.is_grad_enabled(), torch.is_inference_mode_enabled(), *extra))

        return hook

    cls = type("Recorder", (Callback,), {name: make(name) for name in CALLBACK_HOOKS})
    rec = cls()
    rec.calls = calls
    return rec


def regressor(LM: type) -> type:
    """cases.minimal with validation, test and predict steps that log in every way a user does."""
    class Regressor(cases.minimal(LM)):
        def forward(self, x):
            if isinstance(x, (list, tuple)):
                x = x[0]
            return self.net(x)

        def validation_step(self, batch, batch_idx):
            loss = self.compute_loss(batch)
            self.log("val_loss", loss, prog_bar=True)
            self.log("val_step_sum", batch[0].sum(), on_step=True, on_epoch=True)

        def test_step(self, batch, batch_idx):
            loss = self.compute_loss(batch)
            self.log("test_loss", loss)
            self.log("test_max", loss, reduce_fx="max", prog_bar=True)
            self.log("test_hidden", loss, logger=False)
            self.log("test_both", batch[0].mean(), on_step=True, on_epoch=True)

        def on_test_epoch_end(self):
            self.log("test_epoch_end", torch.tensor(3.0))

        def predict_step(self, batch, batch_idx):
            return self(batch[0]) * 2

    return Regressor


def several_loaders(LM: type) -> type:
    class Several(regressor(LM)):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.recorded.append(("val", batch_idx, dataloader_idx))
            self.log("val_loss", self.compute_loss(batch), prog_bar=True)
            if dataloader_idx == 0:  # from one loader only: Lightning refuses the same name from two
                self.log("val_shared", self.compute_loss(batch), add_dataloader_idx=False)

        def test_step(self, batch, batch_idx, dataloader_idx=0):
            self.recorded.append(("test", batch_idx, dataloader_idx))
            self.log("test_loss", self.compute_loss(batch) * (dataloader_idx + 1), on_step=True)

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return self(batch[0]) + dataloader_idx

    return Several


def predict_data(n: int = 20, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(7)
    return DataLoader(TensorDataset(torch.randn(n, 8, generator=g)), batch_size=batch_size)


def metrics_of(trainer: Any) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "callback": {k: v.detach().clone() for k, v in trainer.callback_metrics.items()},
        "logged": {k: v.detach().clone() for k, v in trainer.logged_metrics.items()},
        "pbar": dict(trainer.progress_bar_metrics),
    }


def assert_metrics_equal(got: dict, ref: dict) -> None:
    for kind in ("callback", "logged"):
        assert sorted(got[kind]) == sorted(ref[kind]), kind
        for k, v in ref[kind].items():
            assert got[kind][k].dtype == v.dtype and torch.equal(got[kind][k], v), (kind, k)
    assert got["pbar"] == ref["pbar"]


def assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def quiet(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# -- validate / test / predict ---------------------------------------------------------------------------
def run_eval_suite(fw: str, case: Callable[[type], type], val_loaders: Any, test_loaders: Any, predict_loaders: Any,
                   tmp: str, capsys: Any, **trainer_kw: Any) -> dict[str, Any]:
    """fit, then validate, test and predict on the same trainer; everything each call returned,
    printed, logged and left behind."""
    LM = classes(fw)[0]
    torch.manual_seed(0)
    model = case(LM)()
    model.recorded = []
    rec = recorder(fw)
    logger = cases.recording_logger(fw)
    trainer = new_trainer(fw, tmp, callbacks=[rec], logger=logger, log_every_n_steps=1, **trainer_kw)
    train, _ = cases.make_data()
    out: dict[str, Any] = {}
    quiet(trainer.fit, model, train, val_loaders)
    out["fit_metrics"] = metrics_of(trainer)
    out["num_val_batches"] = trainer.num_val_batches
    capsys.readouterr()
    out["validate"] = quiet(trainer.validate, model, val_loaders)
    out["validate_printed"] = capsys.readouterr().out
    out["validate_metrics"] = metrics_of(trainer)
    out["test"] = quiet(trainer.test, model, test_loaders)
    out["test_printed"] = capsys.readouterr().out
    out["test_metrics"] = metrics_of(trainer)
    out["num_test_batches"] = trainer.num_test_batches
    out["predict"] = quiet(trainer.predict, model, predict_loaders)
    out["num_predict_batches"] = trainer.num_predict_batches
    out["silent"] = quiet(trainer.test, model, test_loaders, verbose=False)
    out["silent_printed"] = capsys.readouterr().out
    out["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    out["grads"] = [p.grad for p in model.parameters()]
    out["modes"] = [m.training for m in model.modules()]
    out["hooks"] = rec.calls
    out["recorded"] = model.recorded
    out["logger_calls"] = logger.calls
    out["finalized"] = logger.finalized
    out["stage"] = (str(trainer.state.fn), str(trainer.state.stage), str(trainer.state.status))
    return out


def assert_suite_equal(got: dict, ref: dict) -> None:
    for key in ("num_val_batches", "validate", "test", "num_test_batches", "num_predict_batches", "silent",
                "validate_printed", "test_printed", "silent_printed", "hooks", "recorded", "logger_calls", "finalized",
                "stage", "modes"):
        assert got[key] == ref[key], key
    for key in ("fit_metrics", "validate_metrics", "test_metrics"):
        assert_metrics_equal(got[key], ref[key])
    assert_state_equal(got["state"], ref["state"])
    assert [g is None for g in got["grads"]] == [g is None for g in ref["grads"]]
    torch.testing.assert_close(got["predict"], ref["predict"], rtol=0, atol=0)


def test_validate_test_predict_after_fit(tmp_path, capsys) -> None:
    """One val/test/predict loader: the returned results, the printed table, callback/logged/progress
    bar metrics, every callback hook with the stage flags and grad mode it ran under, the logger's
    calls, and the predictions, as Lightning's."""
    train, val = cases.make_data()
    args = (regressor, val, val, predict_data())
    ref = run_eval_suite("lightning", *args, str(tmp_path / "l"), capsys)
    got = run_eval_suite("mopt_fast", *args, str(tmp_path / "m"), capsys)
    assert_suite_equal(got, ref)
    assert "Test metric" in ref["test_printed"] and ref["silent_printed"] == ""
    assert ref["test"][0]["test_epoch_end"] == 3.0 and "test_hidden" not in ref["test"][0]
    assert len(ref["predict"]) == 3


def test_several_dataloaders(tmp_path, capsys) -> None:
    """Two validation / test / predict loaders (a list and a dict): dataloader_idx passed (only
    then), "/dataloader_idx_N" names, one result dict per loader, num_*_batches as lists, the
    predictions per loader, and the step metrics logged per loader."""
    train, val = cases.make_data()
    short = DataLoader(val.dataset, batch_size=8)
    args = (several_loaders, [val, short], {"a": short, "b": val}, [predict_data(), predict_data(12, 5)])
    ref = run_eval_suite("lightning", *args, str(tmp_path / "l"), capsys, limit_val_batches=2)
    got = run_eval_suite("mopt_fast", *args, str(tmp_path / "m"), capsys, limit_val_batches=2)
    assert_suite_equal(got, ref)
    assert ref["num_val_batches"] == [2, 2] and len(ref["test"]) == 2 and len(ref["predict"]) == 2
    assert "val_loss/dataloader_idx_1" in ref["fit_metrics"]["callback"]
    assert "val_shared" in ref["fit_metrics"]["callback"]


@pytest.mark.parametrize("inference_mode", [True, False])
def test_inference_mode(tmp_path, capsys, inference_mode: bool) -> None:
    """validate/test/predict under torch.inference_mode (Trainer(inference_mode=True), the default) or
    no_grad; validation inside fit under no_grad whatever the flag (the recorder sees the modes)."""
    train, val = cases.make_data()
    args = (regressor, val, val, predict_data())
    ref = run_eval_suite("lightning", *args, str(tmp_path / "l"), capsys, inference_mode=inference_mode)
    got = run_eval_suite("mopt_fast", *args, str(tmp_path / "m"), capsys, inference_mode=inference_mode)
    assert_suite_equal(got, ref)
    assert any(c[0] == "on_test_batch_start" and c[7] is inference_mode for c in ref["hooks"])


@pytest.mark.parametrize("kw", [{"limit_test_batches": 2, "limit_predict_batches": 1},
                                {"limit_test_batches": 0.5, "limit_predict_batches": 0.5},
                                {"limit_test_batches": 0, "limit_predict_batches": 0}])
def test_limit_test_and_predict_batches(tmp_path, capsys, kw: dict) -> None:
    train, val = cases.make_data()
    args = (regressor, val, val, predict_data())
    ref = run_eval_suite("lightning", *args, str(tmp_path / "l"), capsys, **kw)
    got = run_eval_suite("mopt_fast", *args, str(tmp_path / "m"), capsys, **kw)
    assert_suite_equal(got, ref)


def test_predict_default_step_and_return_predictions(tmp_path) -> None:
    """predict_step's default (``self(batch)``), return_predictions=False (None returned, the hooks
    still run), predict on a model never fitted."""
    def make(LM):
        class Forward(regressor(LM)):
            predict_step = LM.predict_step  # back to the default

        return Forward

    results = {}
    for fw in ("lightning", "mopt_fast"):
        torch.manual_seed(0)
        model = make(classes(fw)[0])()
        rec = recorder(fw)
        trainer = new_trainer(fw, str(tmp_path / fw), callbacks=[rec])
        full = quiet(trainer.predict, model, predict_data())
        none = quiet(trainer.predict, model, predict_data(), return_predictions=False)
        results[fw] = (full, none, rec.calls)
    torch.testing.assert_close(results["mopt_fast"][0], results["lightning"][0], rtol=0, atol=0)
    assert results["mopt_fast"][1] is results["lightning"][1] is None
    assert results["mopt_fast"][2] == results["lightning"][2]


# -- ckpt_path for validate / test / predict -----------------------------------------------------------
@pytest.mark.parametrize("which", ["best", "last", "path", "no_model", "user_managed"])
def test_eval_ckpt_path(tmp_path, capsys, which: str) -> None:
    """validate/test/predict(ckpt_path="best" | "last" | a path), the "best" default without a model,
    and ``trainer.ckpt_path = ...``: the weights loaded (each Trainer reading its own checkpoints),
    the results, and trainer.ckpt_path afterwards."""
    out = {}
    for fw in ("lightning", "mopt_fast"):
        LM = classes(fw)[0]
        Checkpoint = (__import__("lightning.pytorch.callbacks", fromlist=["x"]).ModelCheckpoint if fw == "lightning"
                      else mopt_fast.ModelCheckpoint)
        torch.manual_seed(0)
        model = regressor(LM)()
        root = tmp_path / fw
        ckpt = Checkpoint(dirpath=str(root / "ckpts"), monitor="val_loss", save_last=True, save_top_k=-1)
        trainer = new_trainer(fw, str(root), max_epochs=3, callbacks=[ckpt], enable_checkpointing=True)
        train, val = cases.make_data()
        quiet(trainer.fit, model, train, val)
        fitted = {k: v.clone() for k, v in model.state_dict().items()}
        best, last = os.path.basename(ckpt.best_model_path), os.path.basename(ckpt.last_model_path)
        with torch.no_grad():  # what a loaded checkpoint must overwrite
            for p in model.parameters():
                p.add_(1.0)
        kwargs: dict[str, Any] = {"dataloaders": val}
        if which == "no_model":
            args: tuple = ()
        else:
            args = (model,)
            if which == "path":
                kwargs["ckpt_path"] = ckpt.best_model_path
            elif which == "user_managed":
                trainer.ckpt_path = ckpt.last_model_path
            else:
                kwargs["ckpt_path"] = which
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = trainer.validate(*args, verbose=False, **kwargs)
            tested = trainer.test(*args, verbose=False, **kwargs)
            predicted = trainer.predict(*args, dataloaders=predict_data(),
                                        **{k: v for k, v in kwargs.items() if k != "dataloaders"})
        loaded = trainer.ckpt_path
        out[fw] = {
            "result": result, "tested": tested, "predicted": predicted,
            "loaded": None if loaded is None else os.path.basename(loaded),
            "best": best, "last": last,
            "state": {k: v.clone() for k, v in model.state_dict().items()}, "fitted": fitted,
            "best_default_warned": any("best model of the previous `fit`" in str(w.message) for w in caught),
        }
    got, ref = out["mopt_fast"], out["lightning"]
    for key in ("result", "tested", "loaded", "best", "last", "best_default_warned"):
        assert got[key] == ref[key], key
    torch.testing.assert_close(got["predicted"], ref["predicted"], rtol=0, atol=0)
    assert_state_equal(got["state"], ref["state"])
    assert ref["loaded"] is not None
    if which == "last" or which == "user_managed":
        assert_state_equal(ref["state"], ref["fitted"])  # the last checkpoint is the end of fit


def test_eval_ckpt_path_errors(tmp_path) -> None:
    """"best" without a ModelCheckpoint, "best" with one that saved nothing: Lightning's ValueErrors."""
    for fw in ("lightning", "mopt_fast"):
        LM = classes(fw)[0]
        model = regressor(LM)()
        _, val = cases.make_data()
        trainer = new_trainer(fw, str(tmp_path / fw))
        with pytest.raises(ValueError, match=r'`.validate\(ckpt_path="best"\)` is set but `ModelCheckpoint` is not '
                                             'configured.'):
            quiet(trainer.validate, model, val, ckpt_path="best")
        trainer = new_trainer(fw, str(tmp_path / fw), enable_checkpointing=True)
        with pytest.raises(ValueError, match="not configured to save the best model"):
            quiet(trainer.test, model, val, ckpt_path="best")


# -- LightningDataModule ------------------------------------------------------------------------------------
def datamodule_class(fw: str) -> type:
    DataModule = classes(fw)[2]

    class Data(DataModule):
        def __init__(self, batch_size: int = 16, shift: float = 0.0, calls: list | None = None) -> None:
            super().__init__()
            self.save_hyperparameters(ignore=["calls"])
            self.calls = calls if calls is not None else []
            self.epochs_seen = 0

        def prepare_data(self):
            self.calls.append(("prepare_data",))

        def setup(self, stage):
            self.calls.append(("setup", str(stage).split(".")[-1].lower()))
            train, val = cases.make_data(batch_size=self.hparams.batch_size)
            self.train_set, self.val_set = train.dataset, val.dataset

        def teardown(self, stage):
            self.calls.append(("teardown", str(stage).split(".")[-1].lower()))

        def train_dataloader(self):
            self.calls.append(("train_dataloader",))
            return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

        def val_dataloader(self):
            self.calls.append(("val_dataloader",))
            return DataLoader(self.val_set, batch_size=self.hparams.batch_size)

        def test_dataloader(self):
            self.calls.append(("test_dataloader",))
            return [DataLoader(self.val_set, batch_size=8), DataLoader(self.val_set, batch_size=20)]

        def predict_dataloader(self):
            self.calls.append(("predict_dataloader",))
            return DataLoader(TensorDataset(self.val_set.tensors[0]), batch_size=10)

        def state_dict(self):
            return {"epochs_seen": self.epochs_seen}

        def load_state_dict(self, state):
            self.calls.append(("load_state_dict", state["epochs_seen"]))
            self.epochs_seen = state["epochs_seen"]

    return Data


@pytest.mark.parametrize("positional", [True, False], ids=["fit(model, dm)", "fit(datamodule=dm)"])
def test_datamodule(tmp_path, positional: bool) -> None:
    """fit / validate / test / predict with a LightningDataModule: its hooks in Lightning's order,
    the same weights and results, its hyperparameters logged with the module's, and its state in
    the checkpoint and back."""
    out = {}
    for fw in ("lightning", "mopt_fast"):
        LM = classes(fw)[0]
        calls: list = []
        dm = datamodule_class(fw)(batch_size=12, shift=0.5, calls=calls)
        torch.manual_seed(0)
        model = several_loaders(LM)()
        model.recorded = []
        logger = cases.recording_logger(fw)
        hparams: list = []
        logger.log_hyperparams = lambda params, *a, _into=hparams, **k: _into.append(dict(params))
        trainer = new_trainer(fw, str(tmp_path / fw), logger=logger, callbacks=[recorder(fw)])
        quiet(trainer.fit, model, dm) if positional else quiet(trainer.fit, model, datamodule=dm)
        dm.epochs_seen = 5
        path = str(tmp_path / fw / "saved.ckpt")
        trainer.save_checkpoint(path)
        dm.epochs_seen = 0
        validated = quiet(trainer.validate, model, dm, ckpt_path=path, verbose=False)
        tested = quiet(trainer.test, model, datamodule=dm, verbose=False)
        predicted = quiet(trainer.predict, model, dm)
        saved = torch.load(path, weights_only=False)
        out[fw] = {
            "calls": calls, "hparams": hparams, "validated": validated, "tested": tested, "predicted": predicted,
            "state": {k: v.clone() for k, v in model.state_dict().items()}, "recorded": model.recorded,
            "dm_state": saved.get(type(dm).__qualname__), "dm_hparams": dict(saved.get("datamodule_hyper_parameters", {})),
            "attached": (trainer.datamodule is dm, dm.trainer is trainer), "epochs_seen": dm.epochs_seen,
            "hooks": trainer.callbacks[0].calls,
        }
    got, ref = out["mopt_fast"], out["lightning"]
    for key in ("calls", "hparams", "validated", "tested", "recorded", "dm_state", "dm_hparams", "attached",
                "epochs_seen", "hooks"):
        assert got[key] == ref[key], key
    assert_state_equal(got["state"], ref["state"])
    torch.testing.assert_close(got["predicted"], ref["predicted"], rtol=0, atol=0)
    assert ref["dm_state"] == {"epochs_seen": 5} and ref["epochs_seen"] == 5
    assert ref["hparams"] and ref["hparams"][0] == {"batch_size": 12, "shift": 0.5}


@pytest.mark.parametrize("entry", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize("saves", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["neither", "module", "datamodule", "both"])
def test_hyperparameters_logged_with_a_datamodule(tmp_path, entry: str, saves: tuple) -> None:
    """A LightningDataModule (like a LightningModule) logs no hyperparameters until it calls
    save_hyperparameters: with neither calling it the loggers get no log_hyperparams call and
    CSVLogger writes no hparams.yaml; otherwise the merged hyperparameters, in every entry point."""
    module_saves, dm_saves = saves
    out = {}
    for fw in ("lightning", "mopt_fast"):
        LM, _, DataModule, _ = classes(fw)
        CSVLogger = (__import__("lightning.pytorch.loggers", fromlist=["x"]).CSVLogger if fw == "lightning"
                     else mopt_fast.CSVLogger)

        class Data(DataModule):
            def __init__(self, batch_size: int = 16) -> None:
                super().__init__()
                if dm_saves:
                    self.save_hyperparameters()
                self.loaders = cases.make_data(batch_size=batch_size)

            def train_dataloader(self):
                return self.loaders[0]

            def val_dataloader(self):
                return self.loaders[1]

            test_dataloader = val_dataloader

            def predict_dataloader(self):
                return predict_data()

        class Model(regressor(LM)):
            def __init__(self, lr: float = 0.05) -> None:
                super().__init__()
                if module_saves:
                    self.save_hyperparameters()

        torch.manual_seed(0)
        logger = cases.recording_logger(fw)
        hparams: list = []
        logger.log_hyperparams = lambda params, *a, _into=hparams, **k: _into.append(dict(params))
        root = tmp_path / fw
        trainer = new_trainer(fw, str(root), max_epochs=1, logger=[logger, CSVLogger(str(root))])
        quiet(getattr(trainer, entry), Model(), datamodule=Data(), **({"verbose": False} if entry in ("validate", "test")
                                                                      else {}))
        out[fw] = (hparams, sorted(p.name for p in root.rglob("hparams.yaml")))
    assert out["mopt_fast"] == out["lightning"]
    assert bool(out["lightning"][0]) is (module_saves or dm_saves)


@pytest.mark.parametrize("weights_only", [False, True])
@pytest.mark.parametrize("given", ["init", "dict"])
def test_datamodule_in_the_checkpoint(tmp_path, weights_only: bool, given: str) -> None:
    """The data module's hyperparameters with Lightning's "datamodule_hparams_name" (the __init__
    argument a dict came from, else "kwargs") and its state_dict, in full and in weights-only
    checkpoints, and test(ckpt_path=) gives the state back. save_hyperparameters(None) saves
    nothing."""
    out = {}
    for fw in ("lightning", "mopt_fast"):
        DataModule = classes(fw)[2]

        class Data(DataModule):
            loaded: list = []

            def __init__(self, config: dict | None = None, batch_size: int = 16) -> None:
                super().__init__()
                self.save_hyperparameters(config) if given == "dict" else self.save_hyperparameters()
                self.loaders = cases.make_data(batch_size=batch_size)

            def train_dataloader(self):
                return self.loaders[0]

            def test_dataloader(self):
                return self.loaders[1]

            def state_dict(self):
                return {"seen": 3}

            def load_state_dict(self, state):
                self.loaded.append(state)

        torch.manual_seed(0)
        trainer = new_trainer(fw, str(tmp_path / fw), max_epochs=1)
        quiet(trainer.fit, regressor(classes(fw)[0])(), datamodule=Data({"batch_size": 8, "lr": 0.1}, batch_size=8))
        path = str(tmp_path / fw / "saved.ckpt")
        trainer.save_checkpoint(path, weights_only=weights_only)
        saved = torch.load(path, weights_only=False)
        quiet(new_trainer(fw, str(tmp_path / fw)).test, regressor(classes(fw)[0])(), datamodule=Data(), ckpt_path=path,
              verbose=False)
        loaded_by_test = list(Data.loaded)
        # LightningDataModule.load_from_checkpoint: __init__ from the stored hyperparameters (a
        # keyword over them), then load_state_dict with the stored state
        rebuilt = Data.load_from_checkpoint(path, weights_only=False, batch_size=4)
        out[fw] = {"saved": {k: v for k, v in saved.items() if k.startswith("datamodule") or k.endswith("Data")},
                   "loaded": loaded_by_test, "rebuilt": (dict(rebuilt.hparams), Data.loaded[len(loaded_by_test):],
                                                         rebuilt.loaders[0].batch_size)}
    assert out["mopt_fast"] == out["lightning"]
    assert out["lightning"]["saved"]["datamodule_hparams_name"] == ("config" if given == "dict" else "kwargs")
    assert out["lightning"]["rebuilt"][1] == [{"seen": 3}]
    assert out["lightning"]["loaded"] == [{"seen": 3}]


def test_datamodule_argument_errors(tmp_path) -> None:
    for fw in ("lightning", "mopt_fast"):
        LM = classes(fw)[0]
        model = regressor(LM)()
        dm = datamodule_class(fw)()
        train, val = cases.make_data()
        trainer = new_trainer(fw, str(tmp_path / fw))
        with pytest.raises(MisconfigurationException_of(fw), match="You cannot pass `train_dataloader` or"):
            trainer.fit(model, train, datamodule=dm)
        with pytest.raises(MisconfigurationException_of(fw), match=r"You cannot pass both `trainer.test\(dataloaders"):
            trainer.test(model, val, datamodule=dm)
        with pytest.raises(MisconfigurationException_of(fw), match=r"You cannot pass both `trainer.predict"):
            trainer.predict(model, val, datamodule=dm)


def MisconfigurationException_of(fw: str) -> type:
    if fw == "lightning":
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    else:
        from mopt_fast import MisconfigurationException
    return MisconfigurationException


# -- what Lightning rejects -----------------------------------------------------------------------------
def both_raise(make_and_run: Callable[[str], Any], error: type | tuple, match: str) -> None:
    """`make_and_run(fw)` raises `error` matching `match` under both Trainers (`error` may name
    Lightning's MisconfigurationException as "misconf")."""
    for fw in ("lightning", "mopt_fast"):
        err = MisconfigurationException_of(fw) if error == "misconf" else error
        with pytest.raises(err, match=match):
            quiet(make_and_run, fw)


@pytest.mark.parametrize("entry", ["validate", "test", "predict"])
def test_entry_point_without_a_model(tmp_path, entry: str) -> None:
    both_raise(lambda fw: getattr(new_trainer(fw, str(tmp_path)), entry)(),
               TypeError, rf"`Trainer.{entry}\(\)` requires a `LightningModule` when it hasn't been passed")


@pytest.mark.parametrize("entry,step", [("validate", "validation_step"), ("test", "test_step")])
def test_eval_without_its_step(tmp_path, entry: str, step: str) -> None:
    def run(fw: str) -> None:
        LM = classes(fw)[0]

        class NoSteps(cases.minimal(LM)):
            validation_step = LM.validation_step

        getattr(new_trainer(fw, str(tmp_path)), entry)(NoSteps(), cases.make_data()[1])

    both_raise(run, "misconf", rf"No `{step}\(\)` method defined to run `Trainer.{entry}`")


def test_predict_step_none(tmp_path) -> None:
    def run(fw: str) -> None:
        model = regressor(classes(fw)[0])()
        model.predict_step = None
        new_trainer(fw, str(tmp_path)).predict(model, predict_data())

    both_raise(run, "misconf", r"`predict_step` cannot be None to run `Trainer.predict`")


_NOT_REGISTERED = r"the loop's result collection is not registered yet\. This is most likely because you are trying to log in a `predict` hook"


@pytest.mark.parametrize("hook, entry, match", [
    ("predict_step", "predict", _NOT_REGISTERED),
    ("on_predict_epoch_end", "predict", _NOT_REGISTERED),
    ("setup", "predict", _NOT_REGISTERED),
    ("setup", "fit", r"You can't `self.log\(\)` inside `setup`"),
    ("on_fit_start", "fit", r"You can't `self.log\(\)` inside `on_fit_start`"),
    ("setup", "test", r"You can't `self.log\(\)` inside `setup`"),
    ("after", "fit", _NOT_REGISTERED),
], ids=["predict_step", "on_predict_epoch_end", "setup-predict", "setup-fit", "on_fit_start", "setup-test", "after-fit"])
def test_self_log_where_it_cannot_log(tmp_path, hook: str, entry: str, match: str) -> None:
    """self.log in predict hooks, in setup / on_fit_start, or after fit: Lightning's error for
    each (its checks in its order: no result collection outside fit/validate/test, then a hook
    that may not log)."""
    def run(fw: str) -> None:
        class Logs(regressor(classes(fw)[0])):
            pass

        if hook != "after":
            original = getattr(Logs, hook)

            def logging_hook(self, *args, **kwargs):
                self.log("x", 1.0)
                return original(self, *args, **kwargs)

            setattr(Logs, hook, logging_hook)
        model = Logs()
        trainer = new_trainer(fw, str(tmp_path / fw), max_epochs=1)
        train, val = cases.make_data()
        if entry == "fit":
            trainer.fit(model, train)
        else:
            getattr(trainer, entry)(model, predict_data() if entry == "predict" else val)
        model.log("x", 1.0)

    both_raise(run, "misconf", match)


@pytest.mark.parametrize("several", [True, False])
def test_dataloader_idx_in_the_step_signature(tmp_path, several: bool) -> None:
    """Several loaders need `dataloader_idx` in the step; one loader refuses it without a default."""
    def run(fw: str) -> None:
        LM = classes(fw)[0]

        class NoIdx(regressor(LM)):
            def test_step(self, batch, batch_idx):
                pass

        class IdxNoDefault(regressor(LM)):
            def test_step(self, batch, batch_idx, dataloader_idx):
                pass

        val = cases.make_data()[1]
        model = NoIdx() if several else IdxNoDefault()
        new_trainer(fw, str(tmp_path)).test(model, [val, val] if several else val)

    match = "You provided multiple `test_dataloader`, but no `dataloader_idx`" if several else (
        "You provided only a single `test_dataloader`, but have included `dataloader_idx`")
    both_raise(run, RuntimeError, match)


def test_reserved_dataloader_idx_name_in_self_log(tmp_path) -> None:
    def run(fw: str) -> None:
        LM = classes(fw)[0]

        class Reserved(regressor(LM)):
            def validation_step(self, batch, batch_idx):
                self.log("val/dataloader_idx_0", 1.0)

        new_trainer(fw, str(tmp_path)).validate(Reserved(), cases.make_data()[1])

    both_raise(run, "misconf", r"should not contain information about `dataloader_idx`")


def test_same_name_from_two_loaders_without_the_suffix(tmp_path) -> None:
    def run(fw: str) -> None:
        LM = classes(fw)[0]

        class Shared(regressor(LM)):
            def validation_step(self, batch, batch_idx, dataloader_idx=0):
                self.log("shared", 1.0, add_dataloader_idx=False)

        val = cases.make_data()[1]
        new_trainer(fw, str(tmp_path)).validate(Shared(), [val, val])

    both_raise(run, "misconf", r"You called `self.log\(shared, ...\)` twice in `validation_step` with different")


def test_optimizer_idx_in_training_step(tmp_path) -> None:
    def run(fw: str) -> None:
        LM = classes(fw)[0]

        class OldStyle(cases.automatic()(LM)):
            def training_step(self, batch, batch_idx, optimizer_idx):
                return self.compute_loss(batch)

        new_trainer(fw, str(tmp_path)).fit(OldStyle(), cases.make_data()[0])

    both_raise(run, RuntimeError, r"Remove the `optimizer_idx` argument from `training_step`")


def test_scheduler_without_the_lr_scheduler_api(tmp_path) -> None:
    """A scheduler that is not torch's LRScheduler (no `step()` as torch's) is refused before
    training, unless lr_scheduler_step is overridden."""
    class Custom:
        def __init__(self, optimizer):
            self.optimizer = optimizer

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    def make(fw: str, override: bool) -> Any:
        LM = classes(fw)[0]

        class WithCustom(cases.automatic()(LM)):
            def configure_optimizers(self):
                opt = torch.optim.SGD(self.parameters(), lr=0.1)
                return [opt], [Custom(opt)]

            if override:
                def lr_scheduler_step(self, scheduler, metric):
                    self.recorded.append("stepped")

        return WithCustom()

    both_raise(lambda fw: new_trainer(fw, str(tmp_path)).fit(make(fw, False), cases.make_data()[0]),
               "misconf", r"The provided lr scheduler `Custom` doesn't follow PyTorch's LRScheduler API")
    for fw in ("lightning", "mopt_fast"):
        model = make(fw, True)
        model.recorded = []
        quiet(new_trainer(fw, str(tmp_path), max_epochs=2).fit, model, cases.make_data()[0])
        assert model.recorded == ["stepped", "stepped"]


@pytest.mark.parametrize("legacy", ["training_epoch_end", "validation_epoch_end"])
def test_removed_epoch_end_hooks(tmp_path, legacy: str) -> None:
    def run(fw: str) -> None:
        model = regressor(classes(fw)[0])()
        setattr(model, legacy, lambda outputs: None)
        train, val = cases.make_data()
        new_trainer(fw, str(tmp_path)).fit(model, train, val)

    both_raise(run, NotImplementedError, rf"Support for `{legacy}` has been removed in v2.0.0")


# -- hooks assigned on the instance ------------------------------------------------------------------------
def test_hooks_assigned_on_the_instance(tmp_path) -> None:
    """``m.validation_step = None`` turns validation off; a function assigned as a hook is called."""
    out = {}
    for fw in ("lightning", "mopt_fast"):
        torch.manual_seed(0)
        model = regressor(classes(fw)[0])()
        calls: list = []
        model.validation_step = None
        model.on_train_epoch_end = lambda _c=calls, _m=model: _c.append(("epoch_end", _m.current_epoch))
        model.on_train_batch_end = lambda outputs, batch, batch_idx, _c=calls: _c.append(("batch_end", batch_idx))
        rec = recorder(fw)
        trainer = new_trainer(fw, str(tmp_path / fw), callbacks=[rec], limit_train_batches=2)
        quiet(trainer.fit, model, *cases.make_data())
        out[fw] = (calls, rec.calls, {k: v.clone() for k, v in model.state_dict().items()})
    assert out["mopt_fast"][0] == out["lightning"][0] and out["lightning"][0]
    assert out["mopt_fast"][1] == out["lightning"][1]
    assert not any("validation" in c[0] for c in out["lightning"][1])
    assert_state_equal(out["mopt_fast"][2], out["lightning"][2])


# -- Trainer flags ------------------------------------------------------------------------------------------
def flag_run(fw: str, tmp: str, case: Callable[[type], type] = None, callbacks: list | None = None,
             **kw: Any) -> dict[str, Any]:
    """cases.run with a hook-recording callback and a recording logger."""
    rec = recorder(fw)
    logger = cases.recording_logger(fw)
    # With checkpoints: no logger, so both write to <default_root_dir>/checkpoints.
    kw.setdefault("logger", False if kw.get("enable_checkpointing") else logger)
    out = cases.run(fw, case or cases.automatic(), callbacks=[rec, *(callbacks or [])], default_root_dir=tmp,
                    log_every_n_steps=2, **kw)
    out["hooks"] = rec.calls
    out["logger_calls"] = logger.calls
    out["files"] = sorted(os.path.relpath(os.path.join(d, f), tmp) for d, _, fs in os.walk(tmp) for f in fs)
    return out


def assert_runs_equal(got: dict, ref: dict) -> None:
    from test_trainer_vs_lightning import assert_same

    assert_same(ref, got)
    for key in ("hooks", "logger_calls", "files"):
        assert got[key] == ref[key], key
    assert sorted(got["logged_metrics"]) == sorted(ref["logged_metrics"])


@pytest.mark.parametrize(
    "kw",
    [
        {"fast_dev_run": True},
        {"fast_dev_run": 3, "enable_checkpointing": True},
        {"overfit_batches": 2, "max_epochs": 3},
        {"overfit_batches": 0.5, "max_epochs": 2, "enable_checkpointing": True},
        {"num_sanity_val_steps": -1},
        {"max_epochs": None, "max_steps": 5},
        {"min_steps": 3, "max_epochs": 2},
        {"detect_anomaly": True, "max_epochs": 1},
        {"enable_autolog_hparams": False, "use_distributed_sampler": False, "sync_batchnorm": True},
        {"limit_train_batches": 3.0, "max_epochs": 2},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_flags_match_lightning(tmp_path, kw: dict) -> None:
    """Weights, steps, epochs, metrics, hooks with stage flags, logger calls and the files written."""
    ref = flag_run("lightning", str(tmp_path / "l"), **kw)
    got = flag_run("mopt_fast", str(tmp_path / "m"), **kw)
    assert_runs_equal(got, ref)
    if "fast_dev_run" in kw:
        assert ref["logger_calls"] == [] and ref["files"] == []  # logging and checkpointing suppressed


def stopper(fw: str, at_step: int) -> Any:
    """A callback of `fw` that sets trainer.should_stop once global_step reaches `at_step`."""
    Callback = classes(fw)[3]

    class Stopper(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step >= at_step:
                trainer.should_stop = True

    return Stopper()


@pytest.mark.parametrize("kw", [{}, {"min_epochs": 3}, {"min_steps": 14}, {"min_epochs": 2, "min_steps": 4}])
def test_should_stop_with_min_epochs_and_min_steps(tmp_path, kw: dict) -> None:
    """should_stop ends the fit (with a validation run) once min_epochs / min_steps are met."""
    ref = flag_run("lightning", str(tmp_path / "l"), callbacks=[stopper("lightning", 4)], max_epochs=5, **kw)
    got = flag_run("mopt_fast", str(tmp_path / "m"), callbacks=[stopper("mopt_fast", 4)], max_epochs=5, **kw)
    assert_runs_equal(got, ref)
    assert 4 <= ref["global_step"] < 30


class FakeClock:
    """time.monotonic for both Trainers: 10 seconds per optimizer step of the trainer it watches, so
    time-based behaviour is deterministic."""

    def __init__(self) -> None:
        self.trainer: Any = None
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return 1000.0 + (10.0 * self.trainer.global_step if self.trainer is not None else 0.0)


def timed_run(fw: str, tmp: str, monkeypatch: Any, **kw: Any) -> dict[str, Any]:
    clock = FakeClock()
    Callback = classes(fw)[3]

    class Watch(Callback):
        def setup(self, trainer, pl_module, stage):
            clock.trainer = trainer

    monkeypatch.setattr("time.monotonic", clock)
    try:
        return flag_run(fw, tmp, callbacks=[Watch()], **kw)
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("max_time", ["00:00:00:35", {"seconds": 35}, "timedelta"])
def test_max_time(tmp_path, monkeypatch, max_time: Any) -> None:
    """max_time (a "DD:HH:MM:SS" string, a dict, a timedelta) stops the fit after the step that
    reaches it (a Timer callback, as Lightning), with max_epochs unset."""
    if max_time == "timedelta":
        max_time = timedelta(seconds=35)
    # max_steps only guards against a Timer that never stops (max_epochs is then -1)
    ref = timed_run("lightning", str(tmp_path / "l"), monkeypatch, max_time=max_time, max_epochs=None, max_steps=12)
    got = timed_run("mopt_fast", str(tmp_path / "m"), monkeypatch, max_time=max_time, max_epochs=None, max_steps=12)
    assert_runs_equal(got, ref)
    assert ref["global_step"] == 4


@pytest.mark.parametrize("interval", ["00:00:00:30", {"seconds": 50}])
@pytest.mark.parametrize("every", [1, None])
def test_time_based_val_check_interval(tmp_path, monkeypatch, interval: Any, every: int | None) -> None:
    ref = timed_run("lightning", str(tmp_path / "l"), monkeypatch, val_check_interval=interval,
                    check_val_every_n_epoch=every, max_epochs=2)
    got = timed_run("mopt_fast", str(tmp_path / "m"), monkeypatch, val_check_interval=interval,
                    check_val_every_n_epoch=every, max_epochs=2)
    assert_runs_equal(got, ref)
    assert sum(1 for h in ref["hooks"] if h[0] == "on_validation_start") >= 2


@pytest.mark.parametrize("deterministic,cudnn_benchmark", [(True, None), ("warn", None), (False, True), (None, False)])
def test_deterministic_and_benchmark(tmp_path, deterministic: Any, cudnn_benchmark: Any) -> None:
    """The torch flags each Trainer sets when constructed, as Lightning's _set_torch_flags."""
    def flags() -> tuple:
        return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))

    before = flags()
    seen = {}
    try:
        for fw in ("lightning", "mopt_fast"):
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.benchmark = not bool(cudnn_benchmark)
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
            new_trainer(fw, str(tmp_path), deterministic=deterministic, benchmark=cudnn_benchmark)
            seen[fw] = flags()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]
        if before[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = before[3]
    assert seen["mopt_fast"] == seen["lightning"]


def test_every_lightning_argument_is_accepted_at_its_default(tmp_path) -> None:
    """Trainer(**{every Lightning Trainer argument: its default}) constructs and fits; the ones not built
    raise NotImplementedError naming them when set to anything else."""
    import inspect

    from lightning.pytorch import Trainer as PLTrainer

    ours = inspect.signature(mopt_fast.Trainer.__init__).parameters
    theirs = inspect.signature(PLTrainer.__init__).parameters
    assert list(ours) == list(theirs)
    defaults = {name: p.default for name, p in theirs.items() if name != "self"}
    assert all(ours[name].default == default for name, default in defaults.items())
    defaults.update(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, max_epochs=1, default_root_dir=str(tmp_path))
    torch.manual_seed(0)
    quiet(mopt_fast.Trainer(**defaults).fit, cases.minimal(mopt_fast.LightningModule)(), cases.make_data()[0])
    with pytest.raises(mopt_fast.exceptions.NotBuiltError, match=r"`Trainer\(model_registry='m'\)`"):
        mopt_fast.Trainer(model_registry="m")


def test_default_logger_is_tensorboard_when_installed(tmp_path) -> None:
    importorskip_unless_ci("tensorboard")
    from lightning.pytorch import Trainer as PLTrainer

    ref = PLTrainer(default_root_dir=str(tmp_path), enable_progress_bar=False)
    got = mopt_fast.Trainer(default_root_dir=str(tmp_path), enable_progress_bar=False)
    assert type(ref.logger).__name__ == type(got.logger).__name__ == "TensorBoardLogger"
    assert got.logger.log_dir == ref.logger.log_dir


# -- Ctrl-C ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["training_step", "validation_step", "test_step"])
def test_keyboard_interrupt(tmp_path, where: str) -> None:
    """Ctrl-C (KeyboardInterrupt) inside fit or test: on_exception runs, the loggers are finalized as
    "failed", further Ctrl-C is ignored and the process exits with status 1 (SystemExit), with
    trainer.interrupted True, as Lightning's _call_and_handle_interrupt."""
    def make(LM):
        class Interrupted(regressor(LM)):
            def training_step(self, batch, batch_idx):
                if where == "training_step" and self.global_step == 3:
                    raise KeyboardInterrupt
                return super().training_step(batch, batch_idx)

            def validation_step(self, batch, batch_idx):
                if where == "validation_step" and not self.trainer.sanity_checking:
                    raise KeyboardInterrupt
                return super().validation_step(batch, batch_idx)

            def test_step(self, batch, batch_idx):
                if where == "test_step" and batch_idx == 1:
                    raise KeyboardInterrupt
                return super().test_step(batch, batch_idx)

        return Interrupted

    out = {}
    handler = signal.getsignal(signal.SIGINT)
    try:
        for fw in ("lightning", "mopt_fast"):
            torch.manual_seed(0)
            model = make(classes(fw)[0])()
            model.recorded = []
            rec = recorder(fw)
            logger = cases.recording_logger(fw)
            trainer = new_trainer(fw, str(tmp_path / fw), callbacks=[rec], logger=logger)
            train, val = cases.make_data()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            with pytest.raises(SystemExit) as exc:
                if where == "test_step":
                    quiet(trainer.test, model, val)
                else:
                    quiet(trainer.fit, model, train, val)
            out[fw] = {
                "code": exc.value.code, "interrupted": trainer.interrupted, "finalized": logger.finalized,
                "sigint_ignored": signal.getsignal(signal.SIGINT) is signal.SIG_IGN, "hooks": rec.calls,
                "state": (str(trainer.state.fn), str(trainer.state.stage), str(trainer.state.status)),
                "weights": {k: v.clone() for k, v in model.state_dict().items()}, "step": trainer.global_step,
            }
    finally:
        signal.signal(signal.SIGINT, handler)
    got, ref = out["mopt_fast"], out["lightning"]
    for key in ("code", "interrupted", "finalized", "sigint_ignored", "hooks", "state", "step"):
        assert got[key] == ref[key], key
    assert_state_equal(got["weights"], ref["weights"])
    assert ref["code"] == 1 and ref["interrupted"] and ref["hooks"][-1][0] == "on_exception"


def test_seeded_workers_get_lightnings_worker_init_fn(tmp_path, monkeypatch) -> None:
    """After seed_everything(workers=True) (PL_SEED_WORKERS=1), a loader without a worker_init_fn gets
    pl_worker_init_function with the rank, as Lightning's _auto_add_worker_init_fn."""
    seed = pytest.importorskip("mopt_fast.seed")
    monkeypatch.setenv("PL_SEED_WORKERS", "1")
    for fw, fn in (("lightning", "pl_worker_init_function"), ("mopt_fast", seed.pl_worker_init_function.__name__)):
        torch.manual_seed(0)
        trainer = new_trainer(fw, str(tmp_path / fw), max_epochs=1)
        train, val = cases.make_data()
        quiet(trainer.fit, regressor(classes(fw)[0])(), train, val)
        init = trainer.train_dataloader.worker_init_fn
        assert init.func.__name__ == fn and init.keywords == {"rank": 0}


# -- the module's hooks around evaluation -------------------------------------------------------------------
MODULE_HOOKS = (
    "setup", "teardown", "prepare_data", "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
    "on_validation_start", "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end", "on_validation_model_eval", "on_validation_model_train",
    "on_validation_model_zero_grad", "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end",
    "on_test_batch_start", "on_test_batch_end", "on_test_model_eval", "on_test_model_train", "on_predict_start",
    "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end", "on_predict_batch_start",
    "on_predict_batch_end", "on_predict_model_eval",
)


def module_recording(case: Callable[[type], type], keep_dropout_off: bool) -> Callable[[type], type]:
    """`case` with every module hook above recorded (name, global step, the modules' modes); with
    `keep_dropout_off`, on_validation_model_train / on_test_model_train are overridden to leave the
    dropout in eval mode (then Lightning does not put the modes back itself)."""
    def make(LM: type) -> type:
        cls = case(LM)

        def hook_for(name: str):
            def hook(self, *args, **kwargs):
                result = getattr(super(recorded, self), name)(*args, **kwargs)
                if keep_dropout_off and name in ("on_validation_model_train", "on_test_model_train"):
                    self.net[2].eval()
                self.recorded.append((name, self.trainer.global_step, tuple(m.training for m in self.modules()),
                                      *[a for a in args[1:] if isinstance(a, int)]))
                return result

            return hook

        names = [n for n in MODULE_HOOKS if keep_dropout_off or n not in ("on_validation_model_train",
                                                                          "on_test_model_train")]
        recorded = type("Recorded" + cls.__name__, (cls,), {n: hook_for(n) for n in names})
        return recorded

    return make


@pytest.mark.parametrize("keep_dropout_off", [False, True])
def test_module_hooks_around_evaluation(tmp_path, capsys, keep_dropout_off: bool) -> None:
    """The module's own hooks through fit, validate, test and predict, in Lightning's order, with the
    submodules' train/eval modes each saw; the model-train hooks overridden or not."""
    train, val = cases.make_data()
    args = (module_recording(several_loaders, keep_dropout_off), [val, val], val, predict_data())
    ref = run_eval_suite("lightning", *args, str(tmp_path / "l"), capsys)
    got = run_eval_suite("mopt_fast", *args, str(tmp_path / "m"), capsys)
    assert_suite_equal(got, ref)
    assert any(r[0] == "on_test_model_eval" for r in ref["recorded"])


# -- no per-batch host reads in validate / test / predict ------------------------------------------
@pytest.mark.parametrize("entry", ["validate", "test", "predict"])
@pytest.mark.parametrize("logger", [False, True])
def test_evaluation_reads_nothing_back_per_batch(tmp_path, entry: str, logger: bool) -> None:
    """The host reads of a whole validate/test/predict run do not grow with the number of batches
    when the module logs per epoch only: whatever the loop reads (the epoch results, the printed
    table) it reads once per run, never per batch."""

    class M(mopt_fast.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.layer(x)

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self(batch[0]).square().mean(), on_step=False, on_epoch=True)

        test_step = validation_step

        def predict_step(self, batch, batch_idx):
            return self(batch[0])

    def reads(n_batches: int) -> int:
        loader = DataLoader(TensorDataset(torch.randn(8 * n_batches, 4)), batch_size=8)
        trainer = mopt_fast.Trainer(
            accelerator="cpu", logger=mopt_fast.CSVLogger(str(tmp_path)) if logger else False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
        with HostReads() as mode:
            getattr(trainer, entry)(M(), loader, verbose=False) if entry != "predict" else trainer.predict(M(), loader)
        return mode.count

    few, many = reads(2), reads(9)
    assert few == many, f"{entry}: {few} host reads over 2 batches, {many} over 9"
