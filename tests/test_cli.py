"""mopt_fast.cli.LightningCLI side by side with Lightning's own on the same argv / config: the
same parsed config, the same config.yaml, the same printed config, the same errors, and the same
final weights after ``fit``.

The modules and data modules are built once per framework in a module of their own
(``cli_cases_lightning`` / ``cli_cases_mopt_fast``), so that their class paths differ only in that
name; `normalized` maps the names that necessarily differ (those modules, the cli module, the
version header) to one spelling before comparing.
"""
from __future__ import annotations

import re
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import importorskip_unless_ci

importorskip_unless_ci("lightning")
importorskip_unless_ci("jsonargparse")

import lightning.pytorch as pl  # noqa: E402
import lightning.pytorch.cli as pl_cli  # noqa: E402

import mopt_fast  # noqa: E402
import mopt_fast.cli as mf_cli  # noqa: E402

FRAMEWORKS = ("lightning", "mopt_fast")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--trainer.enable_checkpointing=false"]

pytestmark = pytest.mark.filterwarnings(
    "ignore:LightningCLI's args parameter", "ignore:The '.*dataloader' does not have many workers",
    "ignore:.*does not have many workers", "ignore:GPU available", "ignore:You defined a `validation_step`")


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)


def _case_module(fw: str) -> types.ModuleType:
    """``cli_cases_<fw>``: a module, a subclass with one more argument and a data module on
    `fw`'s base classes, importable by class path."""
    name = f"cli_cases_{fw}"
    if name in sys.modules:
        return sys.modules[name]
    base = pl if fw == "lightning" else mopt_fast
    module = types.ModuleType(name)

    class Net(base.LightningModule):  # type: ignore[misc,name-defined]
        """A small regressor."""

        def __init__(self, hidden: int = 16, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, 1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.validation_step(batch, batch_idx)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(*_data(64, 1)), batch_size=16, shuffle=True)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(*_data(32, 2)), batch_size=16)

    class DeepNet(Net):
        """Net with a second hidden layer."""

        def __init__(self, depth: int = 2, hidden: int = 16, lr: float = 0.05) -> None:
            super().__init__(hidden, lr)
            self.net = nn.Sequential(nn.Linear(8, hidden), nn.Tanh(), *[nn.Linear(hidden, hidden)] * (depth - 1),
                                     nn.Linear(hidden, 1))

    class Data(base.LightningDataModule):  # type: ignore[misc,name-defined]
        """Random regression data."""

        def __init__(self, batch_size: int = 16, hidden_hint: int = 16) -> None:
            super().__init__()
            self.batch_size = batch_size
            self.hidden_hint = hidden_hint

        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(*_data(64, 3)), batch_size=self.batch_size, shuffle=True)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(*_data(32, 4)), batch_size=self.batch_size)

        def test_dataloader(self) -> DataLoader:
            return self.val_dataloader()

    cli = pl_cli if fw == "lightning" else mf_cli

    class InjectedNet(Net):
        """Net whose optimizer and scheduler are configurable arguments (the CLI's type aliases)."""

        def __init__(self, optimizer: Any = torch.optim.Adam, scheduler: Any = None, hidden: int = 16) -> None:
            super().__init__(hidden)
            self.optimizer, self.scheduler = optimizer, scheduler

        def configure_optimizers(self) -> Any:
            optimizer = self.optimizer(self.parameters())
            if self.scheduler is None:
                return optimizer
            return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}

    # the framework's aliases as objects (string annotations would be evaluated in this file's globals)
    InjectedNet.__init__.__annotations__.update(optimizer=cli.OptimizerCallable,
                                                scheduler=cli.LRSchedulerCallable | None)

    for cls in (Net, DeepNet, Data, InjectedNet):
        cls.__module__, cls.__qualname__ = name, cls.__name__
        setattr(module, cls.__name__, cls)
    sys.modules[name] = module
    return module


def _cli(fw: str) -> Any:
    return pl_cli if fw == "lightning" else mf_cli


def run_cli(fw: str, *args: Any, model: str | None = "Net", data: str | None = None, **kwargs: Any) -> Any:
    """`fw`'s LightningCLI on `fw`'s module / data module classes (None: subclass mode, any class)."""
    cases = _case_module(fw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _cli(fw).LightningCLI(getattr(cases, model) if model else None,
                                     getattr(cases, data) if data else None, *args, **kwargs)


_SAME = [(r"cli_cases_(lightning|mopt_fast)", "cli_cases"),
         (r"/(?:lightning|mopt_fast)(?=/|\s|$)", "/FW"),  # each framework's own tmp_path / fw directory
         (r"(lightning\.pytorch|mopt_fast)\.cli\.", "CLI."),
         (r"# (lightning\.pytorch|mopt_fast)==\S+", "# VERSION"),
         # jsonargparse names a class by its shortest import path: ours are exported at the top level
         (r"lightning\.pytorch\.(?:callbacks|loggers)\.", "mopt_fast.")]


def normalized(value: Any) -> Any:
    """`value` with the names that necessarily differ between the two CLIs spelled alike."""
    if isinstance(value, str):
        for pattern, same in _SAME:
            value = re.sub(pattern, same, value)
        return value
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(normalized(v) for v in value)
    return value


def both(fn: Any) -> dict[str, Any]:
    return {fw: fn(fw) for fw in FRAMEWORKS}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix: value}


def assert_same(results: dict[str, Any]) -> None:
    a, b = (normalized(results[fw]) for fw in FRAMEWORKS)
    if a != b and isinstance(a, dict) and isinstance(b, dict):  # name the keys that differ
        flat_a, flat_b = _flat(a), _flat(b)
        differ = {k: (flat_a.get(k, "<missing>"), flat_b.get(k, "<missing>"))
                  for k in flat_a.keys() | flat_b.keys() if flat_a.get(k, "<missing>") != flat_b.get(k, "<missing>")}
        assert not differ, f"(lightning, mopt_fast) differ at {differ}"
    assert a == b


def config_dict(cli: Any) -> dict[str, Any]:
    return cli.config.as_dict()  # type: ignore[no-any-return]


# -- parsing -------------------------------------------------------------------------------------
def test_trainer_arguments_parse_alike() -> None:
    argv = ["--trainer.max_epochs", "3", "--trainer.precision", "32", "--trainer.devices", "1",
            "--trainer.limit_train_batches", "0.5", "--trainer.gradient_clip_val", "1", "--trainer.logger", "false",
            "--trainer.deterministic", "warn", "--trainer.max_time", "00:00:01:00", "--model.hidden", "8"]
    results = both(lambda fw: config_dict(run_cli(fw, run=False, args=argv)))
    assert results["mopt_fast"]["trainer"]["max_epochs"] == 3
    assert results["mopt_fast"]["trainer"]["precision"] == 32
    assert_same(results)
    cli = run_cli("mopt_fast", run=False, args=argv)
    assert isinstance(cli.trainer, mopt_fast.Trainer) and cli.trainer.max_epochs == 3
    assert isinstance(cli.model, mopt_fast.LightningModule) and cli.model.hparams.hidden == 8


def test_trainer_subclass_passing_kwargs_on() -> None:
    def trainer_class(fw: str) -> type:
        class MyTrainer(frameworks_trainer(fw)):  # type: ignore[misc]
            def __init__(self, extra: int = 1, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.extra = extra

        return MyTrainer

    argv = ["--trainer.extra=3", "--trainer.max_epochs=2", "--trainer.logger=false",
            "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping", "--trainer.callbacks.monitor=x"]
    clis = both(lambda fw: run_cli(fw, run=False, args=argv, trainer_class=trainer_class(fw)))
    assert_same({fw: config_dict(cli) for fw, cli in clis.items()})
    ours = clis["mopt_fast"].trainer
    assert (ours.extra, ours.max_epochs) == (3, 2) and any(type(c) is pl.callbacks.EarlyStopping for c in ours.callbacks)


def frameworks_trainer(fw: str) -> type:
    return pl.Trainer if fw == "lightning" else mopt_fast.Trainer


def test_callbacks_and_loggers_by_class_path_ours_and_lightnings(tmp_path: Path) -> None:
    argv = ["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val_loss",
            "--trainer.callbacks+=LearningRateMonitor", "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={tmp_path}"]
    assert_same(both(lambda fw: config_dict(run_cli(fw, run=False, args=argv))))
    cli = run_cli("mopt_fast", run=False, args=argv)
    callbacks = [type(c) for c in cli.trainer.callbacks]
    assert mopt_fast.callbacks.EarlyStopping in callbacks and mopt_fast.callbacks.LearningRateMonitor in callbacks
    assert isinstance(cli.trainer.logger, mopt_fast.loggers.CSVLogger)
    # Lightning's own, named by class path: our Trainer runs them
    argv = ["--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping", "--trainer.callbacks.monitor=val_loss",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp_path}"]
    cli = run_cli("mopt_fast", run=False, args=argv)
    assert any(type(c) is pl.callbacks.EarlyStopping for c in cli.trainer.callbacks)
    assert type(cli.trainer.logger) is pl.loggers.CSVLogger


def test_config_files_later_wins_and_args_as_dict_or_list(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("trainer:\n  max_epochs: 5\n  max_steps: 7\nmodel:\n  hidden: 4\nseed_everything: 3\n")
    second.write_text("trainer:\n  max_epochs: 2\nmodel:\n  lr: 0.2\n")
    argv = ["--config", str(first), "--config", str(second), "--model.hidden=6"]
    results = both(lambda fw: config_dict(run_cli(fw, run=False, args=argv)))
    assert_same(results)
    ours = results["mopt_fast"]
    assert (ours["trainer"]["max_epochs"], ours["trainer"]["max_steps"]) == (2, 7)
    assert (ours["model"], ours["seed_everything"]) == ({"hidden": 6, "lr": 0.2}, 3)
    as_dict = {"trainer": {"max_epochs": 2, "max_steps": 7}, "model": {"hidden": 6, "lr": 0.2}, "seed_everything": 3}
    # seed_everything_default=False: the seed in the config must come from the dict
    from_dict = both(lambda fw: config_dict(run_cli(fw, run=False, args=as_dict, seed_everything_default=False)))
    assert_same(from_dict)
    assert {k: v for k, v in from_dict["mopt_fast"].items() if k != "config"} == {
        k: v for k, v in ours.items() if k != "config"}


def test_seed_everything_default_and_config() -> None:
    for default in (11, False):
        results = both(lambda fw, default=default: config_dict(
            run_cli(fw, run=False, args=[], seed_everything_default=default)))
        assert_same(results)
        assert results["mopt_fast"]["seed_everything"] == default
    run_cli("mopt_fast", run=False, args=["--seed_everything=5"])
    first = torch.rand(3)
    run_cli("mopt_fast", run=False, args=["--seed_everything=5"])
    assert torch.equal(first, torch.rand(3))


def test_trainer_defaults_and_parser_kwargs(tmp_path: Path) -> None:
    defaults = {"max_epochs": 4, "limit_val_batches": 0}
    results = both(lambda fw: config_dict(run_cli(
        fw, run=False, args=[], trainer_defaults=defaults, parser_kwargs={"default_env": True})))
    assert_same(results)
    assert results["mopt_fast"]["trainer"]["max_epochs"] == 4
    cb = mopt_fast.callbacks.LearningRateMonitor()
    cli = run_cli("mopt_fast", run=False, args=[], trainer_defaults={"callbacks": [cb]})
    assert cb in cli.trainer.callbacks


def test_subclass_mode_with_class_path() -> None:
    config = lambda fw: {"model": {"class_path": f"cli_cases_{fw}.DeepNet", "init_args": {"depth": 3}},  # noqa: E731
                         "data": {"class_path": f"cli_cases_{fw}.Data", "init_args": {"batch_size": 8}}}
    results = both(lambda fw: config_dict(run_cli(fw, run=False, args=config(fw), model="Net", data="Data",
                                                  subclass_mode_model=True, subclass_mode_data=True)))
    assert_same(results)
    clis = both(lambda fw: run_cli(fw, run=False, args=config(fw), model=None, data=None))
    assert type(clis["mopt_fast"].model).__name__ == "DeepNet" and clis["mopt_fast"].datamodule.batch_size == 8
    assert_same({fw: dict(cli.model.hparams) for fw, cli in clis.items()})  # the class path saved as Lightning's
    assert "_class_path" in clis["mopt_fast"].model.hparams


class _LinkedCLI:
    """add_arguments_to_parser with a link, and hooks recording the order they ran in."""

    @staticmethod
    def build(fw: str) -> type:
        class CLI(_cli(fw).LightningCLI):  # type: ignore[misc,name-defined]
            calls: list[str] = []

            def add_arguments_to_parser(self, parser: Any) -> None:
                parser.link_arguments("data.hidden_hint", "model.hidden")

            def before_instantiate_classes(self) -> None:
                self.calls.append("before_instantiate_classes")

            def after_instantiate_classes(self) -> None:
                self.calls.append("after_instantiate_classes")

            def before_fit(self) -> None:
                self.calls.append("before_fit")

            def after_fit(self) -> None:
                self.calls.append("after_fit")

        return CLI


def test_link_arguments_and_hooks(tmp_path: Path) -> None:
    def go(fw: str) -> Any:
        cases = _case_module(fw)
        CLI = _LinkedCLI.build(fw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cli = CLI(cases.Net, cases.Data, args=["fit", "--data.hidden_hint=5", "--trainer.max_steps=2",
                                                   f"--trainer.default_root_dir={tmp_path / fw}", *QUIET])
        return cli, config_dict(cli), CLI.calls

    results = both(go)
    assert_same({fw: r[1] for fw, r in results.items()})
    cli, _, calls = results["mopt_fast"]
    assert cli.model.hparams.hidden == 5 and cli.model.net[0].out_features == 5
    assert calls == ["before_instantiate_classes", "after_instantiate_classes", "before_fit", "after_fit"]


# -- running -------------------------------------------------------------------------------------
def _logged_yaml(root: Path) -> tuple[str, str]:
    """config.yaml (SaveConfigCallback's) and hparams.yaml (the logger's: the module's hyperparameters)."""
    version = root / "lightning_logs" / "version_0"
    return (version / "config.yaml").read_text(), (version / "hparams.yaml").read_text()


@pytest.mark.parametrize("source", ["argv", "yaml"])
def test_fit_same_weights_and_same_config_yaml(tmp_path: Path, source: str) -> None:
    def go(fw: str) -> Any:
        root = tmp_path / fw
        settings = ["--seed_everything=7", "--trainer.max_epochs=2", f"--trainer.default_root_dir={root}",
                    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                    "--model.hidden=12", "--data.batch_size=8", "--optimizer=Adam", "--optimizer.lr=0.01",
                    "--lr_scheduler=StepLR", "--lr_scheduler.step_size=3"]
        if source == "argv":
            argv = ["fit", *settings]
        else:
            config = tmp_path / f"{fw}.yaml"
            parsed = run_cli(fw, run=False, data="Data", args=settings)
            config.write_text(parsed.parser.dump(parsed.config, skip_none=False))
            argv = ["fit", "--config", str(config)]
        cli = run_cli(fw, model="Net", data="Data", args=argv)
        return cli, _logged_yaml(root)

    results = both(go)
    ours, theirs = results["mopt_fast"][0], results["lightning"][0]
    assert ours.trainer.global_step == theirs.trainer.global_step == 16
    for (name, a), (_, b) in zip(ours.model.state_dict().items(), theirs.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert normalized(results["mopt_fast"][1]) == normalized(results["lightning"][1])
    saved = yaml.safe_load(results["mopt_fast"][1][0])
    assert yaml.safe_load(results["mopt_fast"][1][1])["_instantiator"] == "mopt_fast.cli.instantiate_module"
    assert saved["optimizer"]["class_path"] == "torch.optim.Adam" and saved["seed_everything"] == 7
    assert type(ours.model.lr_schedulers()).__name__ == "StepLR"


def test_reduce_lr_on_plateau_then_test_from_the_checkpoint(tmp_path: Path) -> None:
    """fit with ReduceLROnPlateau, then ``test --ckpt_path``: the checkpoint's hyperparameters
    (hidden=6) come into the config, so the module is built to the checkpoint's shape."""
    def go(fw: str) -> Any:
        root = tmp_path / fw
        cli = run_cli(fw, model="Net", data="Data", args=[
            "fit", "--seed_everything=1", "--trainer.max_epochs=2", f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--model.hidden=6",
            "--optimizer=SGD", "--optimizer.lr=0.1", f"--lr_scheduler={_cli(fw).__name__}.ReduceLROnPlateau",
            "--lr_scheduler.monitor=val_loss", "--lr_scheduler.patience=0"])
        ckpt = next((root / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt"))
        tested = run_cli(fw, model="Net", data="Data", args=["test", f"--trainer.default_root_dir={root}", *QUIET,
                                                             f"--ckpt_path={ckpt}"],
                         save_config_kwargs={"overwrite": True})
        return cli, tested

    results = both(go)
    (ours, ours_test), (theirs, theirs_test) = results["mopt_fast"], results["lightning"]
    for a, b in zip(ours.model.parameters(), theirs.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert ours.model.optimizers().param_groups[0]["lr"] == theirs.model.optimizers().param_groups[0]["lr"]
    assert isinstance(ours.model.lr_schedulers(), mf_cli.ReduceLROnPlateau)
    assert ours_test.model.hparams.hidden == 6 and config_dict(ours_test)["test"]["model"]["hidden"] == 6
    assert_same({fw: config_dict(cli) for fw, (_, cli) in results.items()})
    assert ours_test.trainer.callback_metrics == theirs_test.trainer.callback_metrics


def test_saved_config_exists_error_and_save_config_callback_none(tmp_path: Path) -> None:
    def go(fw: str) -> str:
        argv = ["fit", "--trainer.max_steps=1", f"--trainer.default_root_dir={tmp_path / fw}", *QUIET,
                "--trainer.logger=false"]
        run_cli(fw, args=argv)
        with pytest.raises(RuntimeError) as info:
            run_cli(fw, args=argv)
        run_cli(fw, args=argv, save_config_callback=None)
        return str(info.value).replace(fw, "FW")

    assert_same(both(go))


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    def go(fw: str) -> str:
        with pytest.raises(SystemExit) as info:
            run_cli(fw, model=None, data="Data", args=[
                "fit", "--model=" + f"cli_cases_{fw}.DeepNet", "--model.depth=3", "--optimizer=Adam",
                "--trainer.callbacks+=ModelCheckpoint", "--print_config"])
        assert info.value.code == 0
        return capsys.readouterr().out

    results = both(go)
    assert "class_path: cli_cases_mopt_fast.DeepNet" in results["mopt_fast"]
    assert_same(results)


def test_unknown_argument_exits_alike(capsys: pytest.CaptureFixture[str]) -> None:
    def go(fw: str) -> tuple[Any, str]:
        with pytest.raises(SystemExit) as info:
            run_cli(fw, args=["fit", "--trainer.no_such_argument=1"])
        return info.value.code, capsys.readouterr().err

    results = both(go)
    assert results["mopt_fast"][0] == 2 and "no_such_argument" in results["mopt_fast"][1]
    assert_same(results)


def test_auto_configure_optimizers_off_and_configure_optimizers_kept(tmp_path: Path) -> None:
    clis = both(lambda fw: run_cli(fw, run=False, args=[], auto_configure_optimizers=False))
    assert "optimizer" not in config_dict(clis["mopt_fast"])
    assert_same({fw: config_dict(cli) for fw, cli in clis.items()})
    cli = run_cli("mopt_fast", run=False, args=[])  # no --optimizer: the module's own stays
    assert type(cli.model.configure_optimizers()).__name__ == "SGD"


def test_lightning_data_module_given_or_by_class_path(tmp_path: Path) -> None:
    cases, lightning_cases = _case_module("mopt_fast"), _case_module("lightning")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = mf_cli.LightningCLI(cases.Net, lightning_cases.Data, args=[
            "fit", "--trainer.max_steps=2", f"--trainer.default_root_dir={tmp_path}", *QUIET, "--data.batch_size=4"])
        assert type(cli.datamodule) is lightning_cases.Data and cli.trainer.global_step == 2
        cli = mf_cli.LightningCLI(cases.Net, run=False, args=["--data=cli_cases_lightning.Data", "--data.batch_size=4"])
    assert type(cli.datamodule) is lightning_cases.Data and cli.datamodule.batch_size == 4


def test_without_jsonargparse_import_works_and_the_cli_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    monkeypatch.setitem(sys.modules, "jsonargparse", None)  # as if not installed
    try:
        importlib.reload(mf_cli)
        with pytest.raises(ModuleNotFoundError, match=re.escape("pip install 'mopt_fast[cli]'")):
            mf_cli.LightningCLI(_case_module("mopt_fast").Net, args=[])
    finally:
        monkeypatch.undo()
        importlib.reload(mf_cli)
    assert mf_cli.LightningArgumentParser.__mro__[1] is sys.modules["jsonargparse"].ArgumentParser


def test_without_lightning_imported_the_cli_takes_ours_and_never_loads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI recognises Lightning only when the script imported it (sys.modules). No ``--optimizer``
    here: jsonargparse imports the module of every Optimizer subclass alive to resolve a short name,
    and this process holds Lightning's (a script without Lightning holds none)."""
    for name in [m for m in sys.modules if m == "lightning" or m.startswith("lightning.")]:
        monkeypatch.delitem(sys.modules, name)
    cli = run_cli("mopt_fast", run=False, args=["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=x",
                                                "--trainer.logger=false"])
    assert type(cli.trainer.callbacks[1]) is mopt_fast.callbacks.EarlyStopping
    assert not [m for m in sys.modules if m == "lightning" or m.startswith("lightning.")]



def test_optimizer_and_scheduler_callables_as_module_arguments(tmp_path: Path) -> None:
    def go(fw: str) -> Any:
        return run_cli(fw, model="InjectedNet", data="Data", args=[
            "fit", "--seed_everything=3", "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path / fw}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", '--model.optimizer={"class_path": "SGD", "init_args": {"lr": 0.2, "momentum": 0.5}}',
            '--model.scheduler={"class_path": "StepLR", "init_args": {"step_size": 2, "gamma": 0.5}}'])

    clis = both(go)
    assert_same({fw: config_dict(cli) for fw, cli in clis.items()})
    assert_same({fw: dict(cli.model.hparams) for fw, cli in clis.items()})
    ours, theirs = clis["mopt_fast"], clis["lightning"]
    assert type(ours.model.optimizers().optimizer).__name__ == "SGD"
    assert type(ours.model.lr_schedulers()).__name__ == "StepLR"
    for a, b in zip(ours.model.parameters(), theirs.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # load_from_checkpoint rebuilds the callables through the CLI's instantiator, as Lightning's
    loaded = {}
    for fw, cli in clis.items():
        ckpt = next((tmp_path / fw / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt"))
        loaded[fw] = type(cli.model).load_from_checkpoint(ckpt, weights_only=False)
    optimizers = {fw: model.optimizer(model.parameters()) for fw, model in loaded.items()}
    assert_same({fw: (type(o).__name__, o.defaults) for fw, o in optimizers.items()})
    assert optimizers["mopt_fast"].defaults["momentum"] == 0.5
    init = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.3}}
    params = [nn.Parameter(torch.randn(2))]
    assert mf_cli.instantiate_class(params, init).defaults == pl_cli.instantiate_class(params, init).defaults


def test_subcommand_method_on_the_cli_and_parser_kwargs_per_subcommand(tmp_path: Path) -> None:
    defaults = tmp_path / "fit_defaults.yaml"
    defaults.write_text("trainer:\n  max_epochs: 9\nckpt_path: null\n")

    def go(fw: str) -> Any:
        class CLI(_cli(fw).LightningCLI):  # type: ignore[misc,name-defined]
            def fit(self, **kwargs: Any) -> None:  # runs instead of Trainer.fit
                self.fit_kwargs = sorted(kwargs)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cli = CLI(_case_module(fw).Net, args=["fit"], parser_kwargs={"fit": {"default_config_files": [defaults]}})
        return cli.fit_kwargs, cli.trainer.max_epochs, config_dict(cli)

    results = both(go)
    assert results["mopt_fast"][:2] == (["ckpt_path", "model", "weights_only"], 9)
    assert_same(results)
