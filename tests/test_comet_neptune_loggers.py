"""CometLogger and NeptuneLogger side by side with Lightning 2.6's.

Comet runs offline with every network feature of comet_ml switched off and sockets refused (the
tests also check nothing tried to connect); each experiment is ended, which writes comet's offline
archive, and the archives of the two loggers are compared: parameters, metrics (name, value,
step, epoch), the "others" the logger sets, the project.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import warnings
import zipfile
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import mopt_fast

import lightning_cases as cases
from helpers import importorskip_unless_ci

pl = importorskip_unless_ci("lightning.pytorch")

FRAMEWORKS = ("lightning", "mopt_fast")
QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
# comet_ml features that reach the network (cloud metadata, error reports) or are slow (code, git, packages).
COMET_OFF = ("AUTO_LOG_ENV_DETAILS", "AUTO_LOG_ENV_HOST", "AUTO_LOG_ENV_GPU", "AUTO_LOG_ENV_CPU",
             "AUTO_LOG_ENV_NETWORK", "AUTO_LOG_ENV_DISK", "AUTO_LOG_CODE", "AUTO_LOG_GIT_METADATA",
             "AUTO_LOG_GIT_PATCH", "AUTO_LOG_CO2", "AUTO_LOG_CLI_ARGUMENTS", "ERROR_TRACKING_ENABLE")
# The "others" a logger sets itself (the rest are comet's own bookkeeping, e.g. already imported modules).
LOGGER_OTHERS = ("Created from", "Name", "hasNestedParams", "offline_experiment")


@pytest.fixture
def comet_offline(monkeypatch) -> list:
    """Offline comet without the network; returns the addresses anything tried to connect to."""
    for key in COMET_OFF:
        monkeypatch.setenv("COMET_" + key, "false")
    monkeypatch.setenv("COMET_START_ONLINE", "false")
    monkeypatch.setenv("COMET_DISPLAY_SUMMARY_LEVEL", "0")
    monkeypatch.setenv("COMET_DISABLE_AUTO_LOGGING", "1")  # both loggers set it; restored after the test
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    importorskip_unless_ci("comet_ml")
    tried: list = []

    def refuse(self: socket.socket, address: Any) -> None:
        tried.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return tried


def archive(directory: str) -> dict:
    """What an ended offline experiment wrote: its comet zip file, read back."""
    (name,) = [f for f in os.listdir(directory) if f.endswith(".zip")]
    with zipfile.ZipFile(os.path.join(directory, name)) as z:
        experiment = json.loads(z.read("experiment.json"))
        messages = [json.loads(line) for line in z.read("messages.json").decode().splitlines() if line]
    params = [(m["payload"]["param"]["paramName"], m["payload"]["param"]["paramValue"],
               m["payload"]["param"]["source"]) for m in messages if m["type"] == "parameter_msg"]
    metrics = [(m["payload"]["metric"]["metricName"], m["payload"]["metric"]["metricValue"],
                m["payload"]["metric"]["step"], m["payload"]["metric"].get("epoch"))
               for m in messages if m["type"] == "metric_msg"
               and m["payload"]["metric"]["metricName"] != "process duration"]  # a time, comet's own
    others = [(m["payload"]["key"], m["payload"]["value"]) for m in messages
              if m["type"] == "log_other" and m["payload"]["key"] in LOGGER_OTHERS]
    graph = [m["payload"]["graph"] for m in messages if m["type"] == "graph"]
    return {"project": experiment["project_name"], "params": params, "metrics": metrics, "others": others,
            "graph": graph}


def regressor(LM: type) -> type:
    class Regressor(LM):
        def __init__(self, lr: float = 0.1, hidden: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(8, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return Regressor


def random_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g))


def fit_with_comet(fw: str, logger_cls: type, root: str) -> dict:
    LM, Trainer = cases.frameworks(fw)
    torch.manual_seed(0)
    logger = logger_cls(project="proj", name="run", offline_directory=root)
    trainer = Trainer(max_epochs=2, logger=logger, log_every_n_steps=2, default_root_dir=root, **QUIET)
    train, val = DataLoader(random_data(48, 0), batch_size=8, shuffle=True), DataLoader(random_data(16, 1), 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(regressor(LM)(), train, val)
    key = logger.version
    where = {"name": logger.name, "save_dir": logger.save_dir == root, "log_dir": trainer.log_dir == root,
             "ckpt_dir": os.path.relpath(trainer.checkpoint_callback.dirpath, root).replace(key, "<key>")}
    logger.experiment.end()
    return {**archive(root), **where}


@pytest.mark.parametrize("logger_from", FRAMEWORKS)
def test_comet_offline_in_our_trainer_matches_lightning(logger_from: str, tmp_path, comet_offline) -> None:
    """Lightning's Trainer with Lightning's CometLogger, against ours with Lightning's or ours: the
    same archive (hyperparameters, metric names, values, steps and epochs) and folders."""
    ours = (pl.loggers if logger_from == "lightning" else mopt_fast.loggers).CometLogger
    got = {"lightning": fit_with_comet("lightning", pl.loggers.CometLogger, str(tmp_path / "l")),
           "mopt_fast": fit_with_comet("mopt_fast", ours, str(tmp_path / "m"))}
    assert got["mopt_fast"] == got["lightning"]
    assert comet_offline == []
    assert sorted(p for p in got["mopt_fast"]["params"] if p[2] == "manual") == [("hidden", 4, "manual"),
                                                                                  ("lr", 0.1, "manual")]
    assert {name for name, *_ in got["mopt_fast"]["metrics"]} == {"train_loss_step", "train_loss_epoch", "val_loss"}
    assert got["mopt_fast"]["ckpt_dir"] == os.path.join("proj", "<key>", "checkpoints")


def direct_calls(cls: type, root: str) -> dict:
    """The logger's own entry points, called as a script would: prefix, tensors, nested
    hyperparameters, an epoch, a graph; pickling keeps the experiment's key."""
    logger = cls(project="proj", name="run", offline_directory=root, prefix="exp1")
    g = torch.Generator().manual_seed(3)
    values = torch.randn(3, generator=g)
    logger.log_hyperparams({"lr": float(values[0]), "opt": {"name": "sgd", "momentum": 0.9}})
    logger.log_metrics({"loss": values[1], "acc": float(values[2]), "epoch": 1}, step=5)
    logger.log_metrics({"loss": values[2]}, step=6)
    logger.log_graph(torch.nn.Linear(2, 1))
    state = logger.__getstate__()
    seen = {"state_key": state["_experiment_key"] == logger.version, "state_experiment": state["_experiment"],
            "name": logger.name, "save_dir": logger.save_dir == root, "log_dir": logger.log_dir,
            "version_is_key": logger.version == logger.experiment.get_key()}
    logger.finalize("success")
    logger.experiment.end()
    return {**archive(root), **seen}


def test_comet_logger_calls_match_lightning(tmp_path, comet_offline) -> None:
    got = {fw: direct_calls(cls, str(tmp_path / fw))
           for fw, cls in (("lightning", pl.loggers.CometLogger), ("mopt_fast", mopt_fast.loggers.CometLogger))}
    assert got["mopt_fast"] == got["lightning"]
    assert comet_offline == []
    # comet keeps the last epoch for later steps
    assert sorted(m[:1] + m[2:] for m in got["mopt_fast"]["metrics"]) == [
        ("exp1_acc", 5, 1), ("exp1_loss", 5, 1), ("exp1_loss", 6, 1)]
    assert ("opt|momentum", 0.9, "manual") in got["mopt_fast"]["params"] and got["mopt_fast"]["graph"]


def test_comet_online_false_is_lightnings_disabled_experiment(tmp_path, comet_offline) -> None:
    """Lightning's ``online=False`` makes a disabled experiment: nothing is written, in both."""
    seen = {}
    for fw, cls in (("lightning", pl.loggers.CometLogger), ("mopt_fast", mopt_fast.loggers.CometLogger)):
        root = str(tmp_path / fw)
        logger = cls(online=False, offline_directory=root)
        logger.log_metrics({"loss": 1.0}, step=1)
        logger.experiment.end()
        seen[fw] = (type(logger.experiment).__name__, logger.experiment.disabled, os.path.exists(root))
    assert seen["mopt_fast"] == seen["lightning"] == ("OfflineExperiment", True, False)


def test_comet_logger_under_lightnings_path_and_without_comet(monkeypatch) -> None:
    from mopt_fast.loggers import comet as comet_module

    assert mopt_fast.loggers.CometLogger is comet_module.CometLogger
    assert issubclass(mopt_fast.loggers.CometLogger, mopt_fast.loggers.Logger)
    monkeypatch.setitem(sys.modules, "comet_ml", None)
    with pytest.raises(ModuleNotFoundError, match="`comet_ml`"):
        mopt_fast.loggers.CometLogger()


def test_neptune_logger_raises_lightnings_error() -> None:
    """Only under ``loggers.neptune`` (as in Lightning 2.6, not exported by ``loggers``), and
    making one raises Lightning's RuntimeError."""
    from lightning.pytorch.loggers import neptune as theirs

    from mopt_fast.loggers import neptune as ours

    errors = {}
    for fw, module in (("lightning", theirs), ("mopt_fast", ours)):
        with pytest.raises(Exception) as caught:
            module.NeptuneLogger(project="p", api_key="k")
        errors[fw] = (type(caught.value), str(caught.value))
    assert errors["mopt_fast"] == errors["lightning"]
    assert errors["mopt_fast"][0] is RuntimeError and "Neptune has been sunset" in errors["mopt_fast"][1]
    for package in (pl.loggers, mopt_fast.loggers):
        with pytest.raises(ImportError, match="cannot import name 'NeptuneLogger'"):
            exec(f"from {package.__name__} import NeptuneLogger")


def test_lit_logger_is_still_not_built() -> None:
    with pytest.raises(mopt_fast.exceptions.NotBuiltError, match="LitLogger"):
        mopt_fast.loggers.LitLogger  # noqa: B018
