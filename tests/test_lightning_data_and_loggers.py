"""Lightning's own data modules and loggers inside mopt_fast.Trainer, the batch-transfer hooks, and
the logger surface, each run side by side with Lightning 2.6's Trainer on the same seed: the same
hook calls, weights (bitwise), checkpoint entries, logged names / values / steps, hyperparameters
and files."""
from __future__ import annotations

import csv
import io
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import mopt_fast

import lightning_cases as cases
from helpers import importorskip_unless_ci

pl = importorskip_unless_ci("lightning.pytorch")

FRAMEWORKS = ("lightning", "mopt_fast")
QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)


def regressor(LM: type) -> type:
    """A small regressor that logs a step and an epoch value in training and a validation loss."""

    class Regressor(LM):
        def __init__(self, lr: float = 0.1, hidden: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.log("val_loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]))

        def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.log("test_loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]))

        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
            return self(batch[0])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return Regressor


def random_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g))


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def quietly(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


# -- a data module of Lightning's class ----------------------------------------------------------------
def lightning_datamodule(record: list[str]) -> pl.LightningDataModule:
    """A data module written on lightning.pytorch.LightningDataModule, recording its hook calls."""

    class Data(pl.LightningDataModule):
        def __init__(self, batch_size: int = 16, seed: int = 3) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.restored: dict | None = None
            self.setups = 0

        def prepare_data(self) -> None:
            record.append("prepare_data")

        def setup(self, stage: str) -> None:
            record.append(f"setup:{stage}")
            self.setups += 1
            self.train, self.val = random_data(64, self.hparams.seed), random_data(24, self.hparams.seed + 1)

        def teardown(self, stage: str) -> None:
            record.append(f"teardown:{stage}")

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.train, batch_size=self.hparams.batch_size, shuffle=True)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(self.val, batch_size=8)

        def test_dataloader(self) -> DataLoader:
            return DataLoader(self.val, batch_size=12)

        def predict_dataloader(self) -> DataLoader:
            return DataLoader(self.val, batch_size=10)

        def state_dict(self) -> dict:
            return {"setups": self.setups}

        def load_state_dict(self, state_dict: dict) -> None:
            record.append(f"load_state_dict:{state_dict}")
            self.restored = state_dict

    return Data()


def run_datamodule_case(fw: str, how: str, root: str) -> dict:
    """fit, validate, test, predict and a resumed fit with a Lightning data module given `how`."""
    LM, Trainer = cases.frameworks(fw)
    record: list[str] = []
    dm = lightning_datamodule(record)
    torch.manual_seed(0)
    model = regressor(LM)()
    loggers = pl.loggers if fw == "lightning" else mopt_fast.loggers
    trainer = Trainer(max_epochs=2, default_root_dir=root, logger=loggers.CSVLogger(root), **QUIET)
    args: tuple = (dm,) if how == "positional" else ()
    kwargs: dict = {"datamodule": dm} if how == "keyword" else {}
    quietly(lambda: trainer.fit(model, *args, **kwargs))
    assert trainer.datamodule is dm and dm.trainer is trainer
    validated = quietly(lambda: trainer.validate(model, *args, **kwargs))
    tested = quietly(lambda: trainer.test(model, *args, **kwargs))
    predicted = quietly(lambda: trainer.predict(model, *args, **kwargs))
    ckpt_path = trainer.checkpoint_callback.best_model_path
    ckpt = torch.load(ckpt_path, weights_only=False)
    # resuming restores the data module's state
    resumed = Trainer(max_epochs=3, default_root_dir=root, logger=False, **QUIET)
    dm2 = lightning_datamodule(record)
    quietly(lambda: resumed.fit(regressor(LM)(), datamodule=dm2, ckpt_path=ckpt_path))
    hparams = open(os.path.join(root, "lightning_logs", "version_0", "hparams.yaml")).read()
    return dict(record=record, model=model, validated=validated, tested=tested, predicted=predicted,
                ckpt={k: v for k, v in ckpt.items() if k.startswith("datamodule") or k.endswith(".Data")},
                restored=dm2.restored, hparams=hparams)


@pytest.mark.parametrize("how", ["positional", "keyword"])
def test_lightning_datamodule_in_our_trainer(how: str, tmp_path) -> None:
    got = {fw: run_datamodule_case(fw, how, str(tmp_path / fw)) for fw in FRAMEWORKS}
    ours, theirs = got["mopt_fast"], got["lightning"]
    assert ours["record"] == theirs["record"]
    assert ours["record"][:3] == ["prepare_data", "setup:TrainerFn.FITTING", "teardown:TrainerFn.FITTING"]
    assert "load_state_dict:{'setups': 1}" in ours["record"]
    assert_same_weights(ours["model"], theirs["model"])
    assert ours["validated"] == theirs["validated"] and ours["tested"] == theirs["tested"]
    assert all(torch.equal(a, b) for a, b in zip(ours["predicted"], theirs["predicted"]))
    assert ours["ckpt"] == theirs["ckpt"] == {"datamodule_hyper_parameters": {"batch_size": 16, "seed": 3},
                                              "datamodule_hparams_name": "kwargs",
                                              "lightning_datamodule.<locals>.Data": {"setups": 1}}
    assert ours["restored"] == theirs["restored"] == {"setups": 1}
    assert ours["hparams"] == theirs["hparams"] and "batch_size: 16" in ours["hparams"]


def test_lightning_datamodule_rejects_loaders_beside_it() -> None:
    record: list[str] = []
    dm = lightning_datamodule(record)
    trainer = mopt_fast.Trainer(max_epochs=1, logger=False, **QUIET)
    with pytest.raises(mopt_fast.MisconfigurationException, match="You cannot pass `train_dataloader`"):
        trainer.fit(regressor(mopt_fast.LightningModule)(), DataLoader(random_data(8, 0)), datamodule=dm)
    with pytest.raises(TypeError, match="`datamodule` must be"):
        trainer.fit(regressor(mopt_fast.LightningModule)(), datamodule=object())  # type: ignore[arg-type]


def test_datamodule_str_matches_lightning() -> None:
    class Stream(IterableDataset):
        def __iter__(self) -> Any:
            return iter(range(3))

    def data_class(base: type) -> type:
        class Data(base):
            def train_dataloader(self) -> DataLoader:
                return DataLoader(random_data(20, 0), batch_size=4)

            def val_dataloader(self) -> list[DataLoader]:
                return [DataLoader(random_data(6, 1)), DataLoader(Stream())]

            def test_dataloader(self) -> DataLoader:
                raise RuntimeError("no test data")

        return Data

    ours, theirs = str(data_class(mopt_fast.LightningDataModule)()), str(data_class(pl.LightningDataModule)())
    assert ours == theirs
    assert ours.splitlines() == ["{Train dataloader: size=20}", "{Validation dataloader: 1. size=6 ; 2. size=NA}",
                                 "{Test dataloader: None}", "{Predict dataloader: None}"]
    assert str(mopt_fast.LightningDataModule()) == str(pl.LightningDataModule())


# -- Lightning's CombinedLoader in our Trainer (fit with it: tests/test_data_features.py) --------------
@pytest.mark.parametrize("entry", ["validate", "test", "predict", "hook"])
def test_non_sequential_combined_loader_for_evaluation(entry: str) -> None:
    """Predict refuses a CombinedLoader in a mode other than "sequential" with Lightning's error;
    validate/test run it in its mode (compared with Lightning in tests/test_data_features_2.py): one
    result for the combined batches."""
    from lightning.pytorch.utilities import CombinedLoader

    loaders = [DataLoader(random_data(16, 0), batch_size=4), DataLoader(random_data(8, 1), batch_size=4)]
    combined = CombinedLoader(loaders, mode="max_size_cycle")

    class OnFirstLoader(regressor(mopt_fast.LightningModule)):  # type: ignore[misc]
        """Steps on the first loader's part of a combined batch."""

        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            super().validation_step(batch[0], batch_idx)

        def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            super().test_step(batch[0], batch_idx)

    model = OnFirstLoader()
    trainer = mopt_fast.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, **QUIET)
    calls = {
        "validate": lambda: trainer.validate(model, combined),
        "test": lambda: trainer.test(model, dataloaders=combined),
        "predict": lambda: trainer.predict(model, combined),
    }
    if entry == "hook":
        model.val_dataloader = lambda: combined  # type: ignore[method-assign]
        calls["hook"] = lambda: trainer.validate(model)
    if entry == "predict":
        with pytest.raises(ValueError, match=r'only supports the `CombinedLoader\(mode="sequential"\)` mode'):
            quietly(calls[entry])
        return
    results = quietly(calls[entry])
    assert len(results) == 1 and all("/dataloader_idx_" not in name for name in results[0])


# -- the batch-transfer hooks ------------------------------------------------------------------------
class Pair:
    """A batch type of the user's own: the loops cannot move it without transfer_batch_to_device."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y


def stage_of(trainer: Any) -> str:
    for name in ("sanity_checking", "training", "validating", "testing", "predicting"):
        if getattr(trainer, name):
            return name
    return "none"


def transfer_hooks(base: type, record: list[str], which: tuple[str, ...]) -> type:
    """`base` (a module or data module class) with the batch-transfer hooks in `which` overridden:
    the batch becomes a `Pair` before the transfer, is moved by hand, and its x doubled after."""

    class Hooks(base):
        pass

    def on_before_batch_transfer(self: Any, batch: Any, dataloader_idx: int) -> Any:
        record.append(f"{type(self).__name__}.before:{dataloader_idx}:{stage_of(self.trainer)}")
        return Pair(*batch) if isinstance(batch, (list, tuple)) else batch

    def transfer_batch_to_device(self: Any, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        record.append(f"{type(self).__name__}.transfer:{device}:{dataloader_idx}")
        if isinstance(batch, Pair):
            return Pair(batch.x.to(device), batch.y.to(device))
        return [t.to(device) for t in batch]

    def on_after_batch_transfer(self: Any, batch: Any, dataloader_idx: int) -> Any:
        record.append(f"{type(self).__name__}.after:{dataloader_idx}")
        if isinstance(batch, Pair):
            return Pair(batch.x * 2, batch.y)
        return batch

    for name, fn in (("on_before_batch_transfer", on_before_batch_transfer),
                     ("transfer_batch_to_device", transfer_batch_to_device),
                     ("on_after_batch_transfer", on_after_batch_transfer)):
        if name in which:
            setattr(Hooks, name, fn)
    return Hooks


def pair_regressor(LM: type) -> type:
    class PairRegressor(regressor(LM)):
        """Steps that take a Pair (or, where no hook made one, a list)."""

        @staticmethod
        def xy(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return (batch.x, batch.y) if isinstance(batch, Pair) else (batch[0], batch[1])

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = self.xy(batch)
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log("train_loss", loss, batch_size=len(x))  # no batch size to infer from a Pair
            return loss

        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            x, y = self.xy(batch)
            self.log("val_loss", torch.nn.functional.mse_loss(self(x), y), batch_size=len(x))

        def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            x, y = self.xy(batch)
            self.log("test_loss", torch.nn.functional.mse_loss(self(x), y), batch_size=len(x))

        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
            return self(self.xy(batch)[0])

    return PairRegressor


def run_transfer_case(fw: str, module_hooks: tuple[str, ...], dm_hooks: tuple[str, ...] | None,
                      dm_framework: str | None = None) -> dict:
    """fit (with a sanity check and two validation loaders), validate, test (two loaders) and predict,
    with the hooks named overridden on the module and (`dm_hooks` not None) on a data module of
    `dm_framework`'s class; the hook calls, warnings, weights and results."""
    LM, Trainer = cases.frameworks(fw)
    from lightning.pytorch.trainer.connectors import data_connector

    data_connector.warning_cache.clear()  # Lightning warns once per process; each case here counts afresh
    record: list[str] = []
    torch.manual_seed(0)
    model = transfer_hooks(pair_regressor(LM), record, module_hooks)()
    train = DataLoader(random_data(32, 0), batch_size=8, shuffle=True)
    vals = [DataLoader(random_data(8, 1), batch_size=4), DataLoader(random_data(4, 2), batch_size=4)]
    dm = None
    if dm_hooks is not None:
        base = (pl.LightningDataModule if (dm_framework or fw) == "lightning" else mopt_fast.LightningDataModule)
        dm = transfer_hooks(base, record, dm_hooks).from_datasets(random_data(32, 0), [random_data(8, 1)],
                                                                  [random_data(8, 1), random_data(4, 2)],
                                                                  random_data(6, 3), batch_size=4)
    trainer = Trainer(max_epochs=2, logger=False, enable_checkpointing=False, num_sanity_val_steps=1, **QUIET)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if dm is None:
            trainer.fit(model, train, vals)
            results = [trainer.validate(model, vals, verbose=False), trainer.test(model, vals, verbose=False),
                       trainer.predict(model, vals)]
        else:
            trainer.fit(model, datamodule=dm)
            results = [trainer.validate(model, datamodule=dm, verbose=False),
                       trainer.test(model, datamodule=dm, verbose=False), trainer.predict(model, datamodule=dm)]
    messages = sorted({str(w.message) for w in caught if "overridden" in str(w.message)})
    return dict(record=record, messages=messages, model=model, results=results)


def assert_same_run(ours: dict, theirs: dict) -> None:
    assert ours["record"] == theirs["record"]
    assert ours["messages"] == theirs["messages"]
    assert_same_weights(ours["model"], theirs["model"])
    assert ours["results"][:2] == theirs["results"][:2]
    torch.testing.assert_close(ours["results"][2], theirs["results"][2], rtol=0, atol=0)


@pytest.mark.parametrize("hooks", [
    ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"),
    ("on_after_batch_transfer",),
    ("transfer_batch_to_device",),
])
def test_batch_transfer_hooks_match_lightning(hooks: tuple[str, ...]) -> None:
    got = {fw: run_transfer_case(fw, hooks, None) for fw in FRAMEWORKS}
    assert_same_run(got["mopt_fast"], got["lightning"])
    record = got["mopt_fast"]["record"]
    assert record  # the hooks ran, on every batch of every loop (both dataloader indices)
    if "on_before_batch_transfer" in hooks:
        stages = {entry.split(":")[-1] for entry in record if ".before:" in entry}
        assert stages == {"sanity_checking", "training", "validating", "testing", "predicting"}
        assert any(".before:1:" in entry for entry in record)


@pytest.mark.parametrize("dm_framework", FRAMEWORKS)
def test_batch_transfer_hooks_of_the_datamodule(dm_framework: str) -> None:
    """The data module's hook runs instead of the module's (Lightning's warning when both override
    it, and when only the module does but a data module is attached)."""
    module_hooks = ("on_before_batch_transfer", "on_after_batch_transfer")
    dm_hooks = ("on_before_batch_transfer", "transfer_batch_to_device")
    theirs = run_transfer_case("lightning", module_hooks, dm_hooks)
    ours = run_transfer_case("mopt_fast", module_hooks, dm_hooks, dm_framework)
    assert_same_run(ours, theirs)
    assert len(ours["messages"]) == 2
    assert any(e.startswith("Hooks.before") for e in ours["record"])  # the data module's class is Hooks too


def log_in_hook_error(fw: str) -> tuple[str, str]:
    LM, Trainer = cases.frameworks(fw)

    class Logs(regressor(LM)):
        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            self.log("nope", 1.0)
            return batch

    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, **QUIET)
    with pytest.raises(Exception) as info:
        quietly(lambda: trainer.fit(Logs(), DataLoader(random_data(8, 0), batch_size=4)))
    return type(info.value).__name__, str(info.value)


def test_log_in_a_batch_transfer_hook_is_lightnings_error() -> None:
    errors = {fw: log_in_hook_error(fw) for fw in FRAMEWORKS}
    assert errors["mopt_fast"] == errors["lightning"]
    assert "inside `on_before_batch_transfer`" in errors["mopt_fast"][1]


# -- Lightning's loggers, and ours, in our Trainer ----------------------------------------------------
def fit_logged(fw: str, make_logger: Callable[[str], Any], root: str, module: Callable[[type], type] = regressor,
               **kwargs: Any) -> tuple[Any, Any]:
    LM, Trainer = cases.frameworks(fw)
    torch.manual_seed(0)
    logger = make_logger(root)
    trainer = Trainer(max_epochs=2, logger=logger, log_every_n_steps=2, default_root_dir=root, **QUIET, **kwargs)
    train, val = DataLoader(random_data(48, 0), batch_size=8, shuffle=True), DataLoader(random_data(16, 1), 8)
    quietly(lambda: trainer.fit(module(LM)(), train, val))
    return trainer, logger


def csv_contents(trainer: Any, logger: Any) -> dict:
    return {"metrics": open(os.path.join(logger.log_dir, "metrics.csv")).read(),
            "hparams": open(os.path.join(logger.log_dir, "hparams.yaml")).read(),
            "files": sorted(os.listdir(logger.log_dir)), "log_dir": os.path.relpath(trainer.log_dir, logger.save_dir)}


def tensorboard_contents(trainer: Any, logger: Any) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir)
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    files = sorted(re.sub(r"events\.out\.tfevents\..*", "events", f) for f in os.listdir(logger.log_dir))
    return {"scalars": scalars, "files": files, "hparams": open(os.path.join(logger.log_dir, "hparams.yaml")).read(),
            "log_dir": os.path.relpath(trainer.log_dir, logger.save_dir)}


def mlflow_contents(trainer: Any, logger: Any) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(logger._tracking_uri)
    run = client.get_run(logger.run_id)
    history = {k: [(m.step, m.value) for m in client.get_metric_history(logger.run_id, k)] for k in run.data.metrics}
    dirpath = trainer.checkpoint_callback.dirpath.replace(logger.run_id, "<run>").replace(logger.experiment_id, "<e>")
    return {"params": run.data.params, "history": history, "status": run.info.status,
            "ckpt_dir": os.path.relpath(dirpath, logger.save_dir), "log_dir": trainer.log_dir == logger.save_dir}


LOGGER_KINDS = {
    "csv": ("CSVLogger", lambda cls, root: cls(root), csv_contents),
    "tensorboard": ("TensorBoardLogger", lambda cls, root: cls(root), tensorboard_contents),
    "mlflow": ("MLFlowLogger", lambda cls, root: cls(tracking_uri="file:" + os.path.join(root, "mlruns")),
               mlflow_contents),
}


@pytest.mark.parametrize("logger_from", ["lightning", "mopt_fast"])
@pytest.mark.parametrize("kind", sorted(LOGGER_KINDS))
def test_loggers_in_our_trainer_match_lightning(kind: str, logger_from: str, tmp_path, monkeypatch) -> None:
    """Lightning's Trainer with Lightning's logger, against ours with Lightning's logger or ours:
    the same metric names, values and steps, hyperparameters and files."""
    if kind == "tensorboard":
        importorskip_unless_ci("tensorboard")
    if kind == "mlflow":
        importorskip_unless_ci("mlflow")
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 needs it for a file: store
    name, make, contents = LOGGER_KINDS[kind]
    got = {}
    for fw, cls in (("lightning", getattr(pl.loggers, name)),
                    ("mopt_fast", getattr(pl.loggers if logger_from == "lightning" else mopt_fast.loggers, name))):
        trainer, logger = fit_logged(fw, lambda root, cls=cls: make(cls, root), str(tmp_path / fw))
        got[fw] = contents(trainer, logger)
    assert got["mopt_fast"] == got["lightning"]


def with_example_input(LM: type) -> type:
    class WithExample(regressor(LM)):
        def __init__(self) -> None:
            super().__init__()
            self.example_input_array = torch.randn(2, 8, generator=torch.Generator().manual_seed(5))

    return WithExample


@pytest.mark.parametrize("logger_from", ["lightning", "mopt_fast"])
def test_tensorboard_log_graph_in_our_trainer(logger_from: str, tmp_path) -> None:
    """log_graph=True traces the module with its example input, moved by the batch-transfer hooks
    (Lightning's TensorBoardLogger calls the module's ``_apply_batch_transfer_handler``)."""
    importorskip_unless_ci("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    graphs = {}
    for fw, cls in (("lightning", pl.loggers.TensorBoardLogger),
                    ("mopt_fast", (pl.loggers if logger_from == "lightning" else mopt_fast.loggers).TensorBoardLogger)):
        _, logger = fit_logged(fw, lambda root, cls=cls: cls(root, log_graph=True), str(tmp_path / fw),
                               module=with_example_input)
        events = EventAccumulator(logger.log_dir)
        events.Reload()
        graphs[fw] = sorted(node.name for node in events.Graph().node)
    assert graphs["mopt_fast"] == graphs["lightning"] and graphs["mopt_fast"]


def mlflow_artifacts(fw: str, cls: type, root: str) -> list:
    """The checkpoint artifacts (files and metadata) an MLflow logger with ``log_model="all"`` logs."""
    import yaml
    from mlflow.tracking import MlflowClient

    _, logger = fit_logged(fw, lambda root: cls(tracking_uri="file:" + os.path.join(root, "ml"), log_model="all"),
                           root)
    client = MlflowClient(logger._tracking_uri)
    found = []
    for artifact in sorted(a.path for a in client.list_artifacts(logger.run_id)):
        files = sorted(f.path for f in client.list_artifacts(logger.run_id, artifact))
        folder = os.path.join(root, "ml", logger.experiment_id, logger.run_id, "artifacts", artifact)
        found.append((files, yaml.safe_load(open(os.path.join(folder, "metadata.yaml"))),
                      open(os.path.join(folder, "aliases.txt")).read()))
    return found


@pytest.mark.parametrize("logger_from", ["lightning", "mopt_fast"])
def test_mlflow_log_model_matches_lightning(logger_from: str, tmp_path, monkeypatch) -> None:
    """log_model="all": each checkpoint ModelCheckpoint saves is logged with Lightning's metadata."""
    importorskip_unless_ci("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    ours_cls = (pl.loggers if logger_from == "lightning" else mopt_fast.loggers).MLFlowLogger
    got = {"lightning": mlflow_artifacts("lightning", pl.loggers.MLFlowLogger, str(tmp_path / "l")),
           "mopt_fast": mlflow_artifacts("mopt_fast", ours_cls, str(tmp_path / "m"))}
    assert got["mopt_fast"] == got["lightning"]
    assert [files[1] for files, _, _ in got["mopt_fast"]] == ["epoch=0-step=6/epoch=0-step=6.ckpt",
                                                             "epoch=1-step=12/epoch=1-step=12.ckpt"]


@pytest.mark.parametrize("logger_from", ["lightning", "mopt_fast"])
def test_wandb_offline_in_our_trainer_matches_lightning(logger_from: str, tmp_path, monkeypatch) -> None:
    wandb = importorskip_unless_ci("wandb")
    from wandb.sdk.wandb_run import Run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged: list[dict] = []
    original = Run.log

    def spy(self: Any, data: dict, *args: Any, **kwargs: Any) -> Any:
        logged.append(dict(data))
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(Run, "log", spy)
    got = {}
    for fw, cls in (("lightning", pl.loggers.WandbLogger),
                    ("mopt_fast", (pl.loggers if logger_from == "lightning" else mopt_fast.loggers).WandbLogger)):
        logged.clear()
        root = str(tmp_path / fw)
        try:
            trainer, logger = fit_logged(fw, lambda root, cls=cls: cls(save_dir=root, project="proj"), root)
            run_id = logger.experiment.id
            got[fw] = {"logged": list(logged), "config": dict(logger.experiment.config),
                       "ckpt_dir": os.path.relpath(trainer.checkpoint_callback.dirpath, root).replace(run_id, "<run>"),
                       "log_dir": trainer.log_dir == root, "name": logger.name, "offline_run": bool(
                           [d for d in os.listdir(os.path.join(root, "wandb")) if d.startswith("offline-run")])}
        finally:
            wandb.finish()
    assert got["mopt_fast"] == got["lightning"]
    assert got["mopt_fast"]["config"] == {"lr": 0.1, "hidden": 4} and got["mopt_fast"]["offline_run"]
    assert got["mopt_fast"]["ckpt_dir"] == os.path.join("proj", "<run>", "checkpoints")


def test_our_wandb_and_mlflow_loggers_under_lightnings_paths(monkeypatch) -> None:
    importorskip_unless_ci("wandb")
    from mopt_fast.loggers import mlflow as mlflow_module
    from mopt_fast.loggers import wandb as wandb_module

    assert mopt_fast.loggers.WandbLogger is wandb_module.WandbLogger
    assert mopt_fast.loggers.MLFlowLogger is mlflow_module.MLFlowLogger
    assert issubclass(mopt_fast.loggers.WandbLogger, mopt_fast.loggers.Logger)
    with pytest.raises(mopt_fast.MisconfigurationException) as ours:
        mopt_fast.loggers.WandbLogger(offline=True, log_model=True)
    with pytest.raises(Exception) as theirs:
        pl.loggers.WandbLogger(offline=True, log_model=True)
    assert str(ours.value) == str(theirs.value)
    # a missing package: a ModuleNotFoundError naming it
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ModuleNotFoundError, match="`wandb`"):
        mopt_fast.loggers.WandbLogger()
    for name in ("mlflow", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ModuleNotFoundError, match="`mlflow`"):
        mopt_fast.loggers.MLFlowLogger()


# -- the logger surface ---------------------------------------------------------------------------------
def logs_step(LM: type) -> type:
    class LogsStep(regressor(LM)):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("step", float(100 + 10 * self.global_step))
            return loss

    return LogsStep


def test_log_step_sets_the_loggers_step(tmp_path) -> None:
    got = {}
    for fw in FRAMEWORKS:
        loggers = pl.loggers if fw == "lightning" else mopt_fast.loggers
        trainer, logger = fit_logged(fw, lambda root, lg=loggers: lg.CSVLogger(root), str(tmp_path / fw),
                                     module=logs_step)
        got[fw] = csv_contents(trainer, logger)["metrics"]
    assert got["mopt_fast"] == got["lightning"]
    rows = list(csv.DictReader(io.StringIO(got["mopt_fast"])))
    steps = [r["step"] for r in rows if r["train_loss_step"]]
    assert steps[:2] == ["110", "130"]  # the logged value (as an int), not the step counter


def test_csv_logger_writes_through_fsspec(tmp_path, monkeypatch) -> None:
    fsspec = importorskip_unless_ci("fsspec")
    monkeypatch.chdir(tmp_path)
    memory = fsspec.filesystem("memory")
    got = {}
    for fw in FRAMEWORKS:
        loggers = pl.loggers if fw == "lightning" else mopt_fast.loggers
        url = f"memory://csv-{fw}-{os.getpid()}"
        trainer, logger = fit_logged(fw, lambda root, lg=loggers, url=url: lg.CSVLogger(url), str(tmp_path / fw),
                                     enable_checkpointing=False)
        assert logger.log_dir == f"{url}/lightning_logs/version_0"
        got[fw] = (memory.cat(f"{logger.log_dir}/metrics.csv"), memory.cat(f"{logger.log_dir}/hparams.yaml"))
        memory.rm(url, recursive=True)
    assert got["mopt_fast"] == got["lightning"]
    assert b"train_loss_step" in got["mopt_fast"][0]
    assert not os.path.exists(tmp_path / "memory:")  # no local folder named after the URL


def fast_dev_run_logger(fw: str, root: str) -> tuple:
    LM, Trainer = cases.frameworks(fw)

    class UsesExperiment(regressor(LM)):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.logger.experiment.add_scalar("x", 1.0, 0)  # a no-op under fast_dev_run
            self.logger[0].experiment.whatever(1)
            return super().training_step(batch, batch_idx)

    loggers = pl.loggers if fw == "lightning" else mopt_fast.loggers
    trainer = Trainer(fast_dev_run=True, logger=loggers.CSVLogger(root), **QUIET)
    quietly(lambda: trainer.fit(UsesExperiment(), DataLoader(random_data(8, 0), batch_size=4)))
    lg = trainer.logger
    return (lg.name, lg.version, lg.experiment.add_image("img", 1), lg.log_metrics({"a": 1.0}, 0),
            lg.anything_else(), lg[0] is lg, os.listdir(root) if os.path.exists(root) else [], lg.save_dir,
            trainer.log_dir)


def test_fast_dev_run_logger_has_an_experiment(tmp_path) -> None:
    seen = {fw: fast_dev_run_logger(fw, str(tmp_path / fw)) for fw in FRAMEWORKS}
    assert seen["mopt_fast"] == seen["lightning"] == ("", "", None, None, None, True, [], None, None)


def setter_states(fw: str, root: str) -> list:
    _, Trainer = cases.frameworks(fw)
    loggers = pl.loggers if fw == "lightning" else mopt_fast.loggers
    a, b = loggers.CSVLogger(os.path.join(root, "a")), loggers.CSVLogger(os.path.join(root, "b"))
    names = {a: "a", b: "b"}
    trainer = Trainer(logger=False, **QUIET)
    states = []
    for attribute, value in (("logger", a), ("logger", None), ("loggers", [a, b]), ("logger", False),
                             ("loggers", None), ("logger", b)):
        setattr(trainer, attribute, value)
        states.append(([names[lg] for lg in trainer.loggers], None if trainer.logger is None else names[trainer.logger]))
    return states


def test_logger_setters_match_lightning(tmp_path) -> None:
    seen = {fw: setter_states(fw, str(tmp_path / fw)) for fw in FRAMEWORKS}
    assert seen["mopt_fast"] == seen["lightning"]
    assert seen["mopt_fast"][2] == (["a", "b"], "a") and seen["mopt_fast"][4] == ([], None)
