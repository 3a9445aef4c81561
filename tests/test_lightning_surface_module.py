"""The module surface of the Lightning front, side by side with Lightning 2.6: seed_everything and
the worker seeds, the LightningModule members (logger(s), ranks, freeze, nested modules),
save_hyperparameters / hparams / load_from_checkpoint, the hparams.yaml the loggers write,
self.log with max/min reductions, torchmetrics objects and from callbacks, configure_optimizers
returning None, and the import paths (mopt_fast.callbacks, mopt_fast.loggers, exceptions, what is
not built). Each test runs the same code under lightning.pytorch and mopt_fast and compares."""
from __future__ import annotations

import argparse
import copy
import os
import pickle
import random
import tempfile
import types
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import lightning_cases as cases
from helpers import importorskip_unless_ci

importorskip_unless_ci("lightning")
torchmetrics = importorskip_unless_ci("torchmetrics")

import lightning.fabric.utilities.seed as pl_seed  # noqa: E402
import lightning.pytorch as pl  # noqa: E402

import mopt_fast  # noqa: E402
import mopt_fast.seed as mf_seed  # noqa: E402

FRAMEWORKS = ("lightning", "mopt_fast")


def api(fw: str) -> dict[str, Any]:
    """The names a script imports, under `fw`'s import paths."""
    if fw == "lightning":
        from lightning.pytorch import callbacks, loggers
        from lightning.pytorch.utilities import exceptions

        return {"LM": pl.LightningModule, "Trainer": pl.Trainer, "callbacks": callbacks, "loggers": loggers,
                "seed_everything": pl.seed_everything, "seed": pl_seed, "exceptions": exceptions}
    from mopt_fast import callbacks, exceptions, loggers

    return {"LM": mopt_fast.LightningModule, "Trainer": mopt_fast.Trainer, "callbacks": callbacks, "loggers": loggers,
            "seed_everything": mopt_fast.seed_everything, "seed": mf_seed, "exceptions": exceptions}


_TMP: list[str] = []


@pytest.fixture(autouse=True)
def _tmp_root(tmp_path):
    """The folder `fresh_dir` makes folders in: this test's tmp_path."""
    _TMP.append(str(tmp_path))
    yield
    _TMP.pop()


def fresh_dir(prefix: str = "") -> str:
    return tempfile.mkdtemp(prefix=prefix, dir=_TMP[-1])


def trainer(fw: str, **kw: Any) -> Any:
    cases.frameworks(fw)  # quiets Lightning's loggers
    args = dict(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=fresh_dir())
    args.update(kw)
    return api(fw)["Trainer"](**args)


def fit(fw: str, model: Any, data: tuple | None = None, **kw: Any) -> Any:
    t = trainer(fw, **kw)
    train, val = data if data is not None else cases.make_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(model, train, val)
    return t


def raised(fn: Any) -> tuple[type, str]:
    """(exception class, message) of what `fn()` raises."""
    with pytest.raises(BaseException) as info:
        fn()
    return type(info.value), str(info.value)


def same_error(ref: tuple[type, str], got: tuple[type, str]) -> None:
    """The same exception class (by name: the two frameworks define their own) and message."""
    assert got[0].__name__ == ref[0].__name__, (ref, got)
    assert issubclass(got[0], tuple(c for c in ref[0].__mro__ if c.__module__ == "builtins")), (ref, got)
    assert got[1] == ref[1]


def warning_messages(fn: Any) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught]


def assert_tensors_equal(ref: dict, got: dict) -> None:
    assert sorted(got) == sorted(ref)
    for k, v in ref.items():
        w = got[k]
        if isinstance(v, torch.Tensor):
            assert w.dtype == v.dtype and torch.equal(w, v) or (v.isnan().all() and w.isnan().all()), (k, v, w)
        else:
            assert w == v, (k, v, w)


# -- seeds ----------------------------------------------------------------------------------------
def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


@pytest.fixture
def clean_seed_env(monkeypatch):
    for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("seed,workers", [(0, False), (42, True), (2**32 - 1, False), ("7", False), (3.9, True)])
def test_seed_everything_seeds_and_records_the_same(clean_seed_env, seed, workers) -> None:
    results = {}
    for fw in FRAMEWORKS:
        random.seed(999), np.random.seed(999), torch.manual_seed(999)
        os.environ["PL_SEED_WORKERS"] = os.environ["PL_GLOBAL_SEED"] = "unset"
        ret = api(fw)["seed_everything"](seed, workers=workers)
        results[fw] = (ret, os.environ["PL_GLOBAL_SEED"], os.environ["PL_SEED_WORKERS"], draws())
    assert results["mopt_fast"] == results["lightning"]


def test_seed_everything_from_the_environment(monkeypatch, clean_seed_env) -> None:
    results = {}
    for fw in FRAMEWORKS:
        monkeypatch.setenv("PL_GLOBAL_SEED", "123")
        results[fw] = (api(fw)["seed_everything"](), draws())
    assert results["mopt_fast"] == results["lightning"] and results["lightning"][0] == 123
    for fw in FRAMEWORKS:  # none given, none in the environment: 0, with a warning
        monkeypatch.delenv("PL_GLOBAL_SEED")
        messages = warning_messages(lambda fw=fw: results.__setitem__(fw, (api(fw)["seed_everything"](), draws())))
        assert messages == ["No seed found, seed set to 0"], (fw, messages)
    assert results["mopt_fast"] == results["lightning"] and results["lightning"][0] == 0
    # reset_seed seeds again from what seed_everything recorded
    for fw in FRAMEWORKS:
        api(fw)["seed_everything"](5, workers=True)
        torch.rand(7)
        api(fw)["seed"].reset_seed()
        results[fw] = (draws(), os.environ["PL_SEED_WORKERS"])
    assert results["mopt_fast"] == results["lightning"]


@pytest.mark.parametrize("seed,env", [(-1, None), (2**32, None), (None, "abc"), (None, "-3")])
def test_seed_everything_bad_seeds(monkeypatch, clean_seed_env, seed, env) -> None:
    errors = {}
    for fw in FRAMEWORKS:
        if env is not None:
            monkeypatch.setenv("PL_GLOBAL_SEED", env)
        errors[fw] = raised(lambda fw=fw: api(fw)["seed_everything"](seed))
    same_error(errors["lightning"], errors["mopt_fast"])
    assert errors["lightning"][0] is ValueError


@pytest.mark.parametrize("worker_id,rank", [(0, 0), (1, 0), (3, 2), (0, None), (2, None)])
def test_worker_init_function_matches(monkeypatch, worker_id, rank) -> None:
    # No rank given: the process's rank (0 here; Lightning's from its strategy, mopt_fast's from
    # the launcher's RANK / LOCAL_RANK environment, which its DDP strategy sets).
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    results = {}
    for fw in FRAMEWORKS:
        torch.manual_seed(1234 + worker_id)  # a worker's torch seed is its base seed + its id
        api(fw)["seed"].pl_worker_init_function(worker_id, rank)
        results[fw] = draws()
    assert results["mopt_fast"] == results["lightning"]
    torch.manual_seed(1234 + worker_id)
    mf_seed.pl_worker_init_function(worker_id, 5)
    assert draws() != results["lightning"]  # the rank does reach the seeds


class RandomItems(Dataset):
    """Each item drawn from the worker's torch, numpy and Python RNGs."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([torch.rand(1).item(), float(np.random.rand()), random.random()])


def test_worker_init_function_in_dataloader_workers() -> None:
    out = {}
    for fw in FRAMEWORKS:
        g = torch.Generator().manual_seed(7)
        loader = DataLoader(RandomItems(), batch_size=2, num_workers=2, generator=g,
                            worker_init_fn=api(fw)["seed"].pl_worker_init_function)
        out[fw] = torch.cat(list(loader))
    assert torch.equal(out["mopt_fast"], out["lightning"])
    assert len({tuple(r.tolist()) for r in out["lightning"]}) == 8  # the workers differ


def test_isolate_rng_matches() -> None:
    from lightning.pytorch.utilities.seed import isolate_rng as pl_isolate

    results = {}
    for fw, isolate in (("lightning", pl_isolate), ("mopt_fast", mf_seed.isolate_rng)):
        mopt_fast.seed_everything(3, verbose=False)
        with isolate():
            inside = draws()
        results[fw] = (inside, draws())
    assert results["mopt_fast"] == results["lightning"]
    assert results["lightning"][0] == results["lightning"][1]  # the state was put back


# -- LightningModule members ----------------------------------------------------------------------
def nested(LM: type) -> type:
    class Inner(LM):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 8)

    class Outer(cases.minimal(LM)):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner()  # a LightningModule child: gets the trainer
            self.wrapped = nn.Sequential(Inner())  # inside a plain nn.Module: does not, in Lightning either
            self.seen: list = []

        def on_train_start(self) -> None:
            t = self.trainer
            self.seen.append((
                self.logger is t.logger, self.loggers == t.loggers, type(self.logger).__name__,
                [type(lg).__name__ for lg in self.loggers], self.global_rank, self.local_rank,
                self.inner.trainer is t, self.inner.logger is t.logger, self.wrapped[0]._trainer is None,
            ))

        def training_step(self, batch: Any, batch_idx: int) -> None:
            super().training_step(batch, batch_idx)
            if batch_idx == 0 and self.current_epoch == 0:
                try:
                    self.inner.log("from_child", 1.0)  # the child's own log is not Trainer-managed
                except Exception as e:  # noqa: BLE001 - compared below
                    self.seen.append((type(e).__name__, str(e)))

    return Outer


@pytest.mark.parametrize("with_logger", [True, False])
def test_module_members_during_fit(with_logger: bool) -> None:
    seen = {}
    for fw in FRAMEWORKS:
        torch.manual_seed(0)
        model = nested(api(fw)["LM"])()
        logger = api(fw)["loggers"].CSVLogger(fresh_dir()) if with_logger else False
        t = fit(fw, model, logger=logger, max_epochs=1)
        copied = copy.deepcopy(model)  # a copy (or pickle) leaves the trainer behind
        seen[fw] = model.seen + [(model.trainer is t, model.inner.trainer is t, copied._trainer, copied.inner._trainer,
                                  model.dtype, copied.dtype, model.on_gpu)]
    assert seen["mopt_fast"] == seen["lightning"]
    assert seen["lightning"][0][6]  # the child was attached
    assert seen["lightning"][1][0] == "MisconfigurationException"


def test_module_members_without_a_trainer() -> None:
    got = {}
    for fw in FRAMEWORKS:
        model = nested(api(fw)["LM"])()
        got[fw] = (model.logger, model.loggers, model.global_rank, model.local_rank, model.current_epoch,
                   model.global_step, raised(lambda m=model: m.trainer), raised(lambda m=model: m.print("x")),
                   warning_messages(lambda m=model: m.log("x", 1.0)))
    ref, mine = got["lightning"], got["mopt_fast"]
    assert mine[:6] == ref[:6] == (None, [], 0, 0, 0, 0)
    same_error(ref[6], mine[6])
    same_error(ref[7], mine[7])
    assert mine[8] == ref[8] and len(ref[8]) == 1


def test_freeze_unfreeze() -> None:
    got = {}
    for fw in FRAMEWORKS:
        model = nested(api(fw)["LM"])()
        model.net[0].weight.requires_grad_(False)
        frozen = model.freeze()
        state1 = ([p.requires_grad for p in model.parameters()], [m.training for m in model.modules()])
        unfrozen = model.unfreeze()
        state2 = ([p.requires_grad for p in model.parameters()], [m.training for m in model.modules()])
        got[fw] = (frozen is model, unfrozen is model, state1, state2)
    assert got["mopt_fast"] == got["lightning"]
    assert not any(got["lightning"][2][0]) and all(got["lightning"][3][0])


# -- import paths, exceptions, what is not built ---------------------------------------------------
def test_import_paths() -> None:
    from lightning.pytorch import callbacks as pl_callbacks
    from lightning.pytorch import loggers as pl_loggers

    from mopt_fast import callbacks, loggers

    # the classes in the files that define them (one file per callback and logger)
    from mopt_fast.callbacks import callback, model_checkpoint, model_summary
    from mopt_fast.callbacks.progress import tqdm_progress
    from mopt_fast.exceptions import NotBuiltError
    from mopt_fast.loggers import csv_logs, logger, tensorboard

    checkpoint = model_checkpoint
    trainer_callbacks = types.SimpleNamespace(Callback=callback.Callback, ModelSummary=model_summary.ModelSummary,
                                              TQDMProgressBar=tqdm_progress.TQDMProgressBar)
    trainer_loggers = types.SimpleNamespace(CSVLogger=csv_logs.CSVLogger, TensorBoardLogger=tensorboard.TensorBoardLogger,
                                            Logger=logger.Logger)

    assert callbacks.ModelCheckpoint is checkpoint.ModelCheckpoint is mopt_fast.ModelCheckpoint
    for name in ("Callback", "ModelSummary", "TQDMProgressBar"):
        assert getattr(callbacks, name) is getattr(trainer_callbacks, name) is getattr(mopt_fast, name)
    for name in ("CSVLogger", "TensorBoardLogger", "Logger"):
        assert getattr(loggers, name) is getattr(trainer_loggers, name)
    assert mopt_fast.CSVLogger is loggers.CSVLogger and mopt_fast.TensorBoardLogger is loggers.TensorBoardLogger
    # every name Lightning exports there: ours, or a clear error that is both an ImportError and
    # a NotImplementedError, naming it
    for ours, theirs in ((callbacks, pl_callbacks), (loggers, pl_loggers)):
        for name in theirs.__all__:
            if name in ours.__all__:
                assert isinstance(getattr(ours, name), type)
                continue
            with pytest.raises(NotBuiltError, match=rf"lightning\.pytorch\.\w+\.{name} is not built"):
                exec(f"from {ours.__name__} import {name}", {})
            with pytest.raises(ImportError):
                getattr(ours, name)
            with pytest.raises(NotImplementedError):
                getattr(ours, name)
    # the callbacks in their own files show up under the import path, as the same classes
    from mopt_fast.callbacks import early_stopping, lr_monitor, timer
    from mopt_fast.callbacks.progress import progress_bar, rich_progress

    trainer_package = types.SimpleNamespace(
        EarlyStopping=early_stopping.EarlyStopping, LearningRateMonitor=lr_monitor.LearningRateMonitor,
        RichProgressBar=rich_progress.RichProgressBar, Timer=timer.Timer, ProgressBar=progress_bar.ProgressBar)

    for name in ("EarlyStopping", "LearningRateMonitor", "RichProgressBar", "Timer", "ProgressBar"):
        assert name in callbacks.__all__, name
        assert getattr(callbacks, name) is getattr(trainer_package, name)
    with pytest.raises(AttributeError):
        callbacks.NoSuchCallback  # noqa: B018
    assert not hasattr(loggers, "NoSuchLogger")


def test_exceptions_scripts_catch() -> None:
    from lightning.pytorch.utilities import exceptions as pl_exceptions

    from mopt_fast import exceptions

    for name in ("MisconfigurationException", "SIGTERMException"):
        ours, theirs = getattr(exceptions, name), getattr(pl_exceptions, name)
        assert set(ours.__mro__) >= {c for c in theirs.__mro__ if c.__module__ == "builtins"}, name
    assert mopt_fast.MisconfigurationException is exceptions.MisconfigurationException


@pytest.mark.parametrize("what", ["to_onnx", "to_torchscript", "Fabric"])
def test_not_built_features_say_so(what: str) -> None:
    calls = {
        "to_onnx": lambda: cases.minimal(mopt_fast.LightningModule)().to_onnx("m.onnx", torch.randn(1, 8)),
        "to_torchscript": lambda: cases.minimal(mopt_fast.LightningModule)().to_torchscript(),
        "Fabric": lambda: mopt_fast.Fabric,
    }
    with pytest.raises(NotImplementedError, match=rf"{what}\b.* is not built in mopt_fast"):
        calls[what]()


# -- save_hyperparameters ----------------------------------------------------------------------------
def hparams_classes(LM: type) -> dict[str, Any]:
    """Modules calling save_hyperparameters in each of its forms; each entry builds one."""

    class Parent(cases.minimal(LM)):
        def __init__(self, lr: float = 0.05, hidden: int = 16, *args: Any, **kwargs: Any) -> None:
            super().__init__()
            self.save_hyperparameters()

    class Child(Parent):  # the parent saves: the child's own arguments are kept too
        def __init__(self, lr: float, dropout: float = 0.1, *, tag: str = "c", **kwargs: Any) -> None:
            super().__init__(lr, 32, **kwargs)

    class GrandChild(Child):
        def __init__(self, depth: int = 3, **kwargs: Any) -> None:
            super().__init__(lr=0.2, **kwargs)

    class ChildSaves(cases.minimal(LM)):  # the child saves after its parent's __init__
        def __init__(self, lr: float = 0.3, layers: tuple = (1, 2), net_arg: nn.Module | None = None) -> None:
            super().__init__()
            lr = lr * 2  # the value at the time of the call counts
            self.save_hyperparameters(ignore="net_arg")

    class Named(cases.minimal(LM)):
        def __init__(self, a: int = 1, b: str = "x", c: float = 2.5) -> None:
            super().__init__()
            self.save_hyperparameters("a", "c", logger=False)

    class FromDict(cases.minimal(LM)):
        def __init__(self, config: dict) -> None:
            super().__init__()
            self.save_hyperparameters(config)

    class FromNamespace(cases.minimal(LM)):
        def __init__(self, args: argparse.Namespace, other: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters(args)

    class IgnoresParent(Parent):  # drops what its parent saved
        def __init__(self, lr: float = 0.01) -> None:
            super().__init__(lr)
            self.save_hyperparameters(ignore=["hidden"])

    class ModuleArg(cases.minimal(LM)):
        def __init__(self, encoder: nn.Module, size: int = 3) -> None:
            super().__init__()
            self.save_hyperparameters()

    class Primitive(cases.minimal(LM)):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters(lr)

    class EmptyContainer(cases.minimal(LM)):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters({})

    return {
        "parent": lambda: Parent(0.1, 8, 1, 2, extra="e"),
        "child": lambda: Child(0.5, dropout=0.3, tag="t", more=[1, 2]),
        "grandchild": lambda: GrandChild(depth=4, dropout=0.0),
        "child_saves": lambda: ChildSaves(0.25, net_arg=nn.Linear(2, 2)),
        "named": lambda: Named(5, "y"),
        "from_dict": lambda: FromDict({"lr": 0.1, "sizes": [4, 8], "nested": {"k": None}}),
        "from_namespace": lambda: FromNamespace(argparse.Namespace(lr=0.4, name="ns")),
        "ignores_parent": lambda: IgnoresParent(),
        "module_arg": lambda: ModuleArg(nn.Linear(3, 3)),
        "primitive": lambda: Primitive(),
        "empty_container": lambda: EmptyContainer(),
    }


def comparable(v: Any) -> Any:
    return repr(v) if isinstance(v, nn.Module) else v


def hparams_view(model: Any) -> dict[str, Any]:
    hp = model.hparams
    return {
        "hparams": {k: comparable(v) for k, v in hp.items()},
        "type": type(hp).__name__,
        "initial": {k: comparable(v) for k, v in model.hparams_initial.items()},
        "initial_type": type(model.hparams_initial).__name__,
        "repr": repr(hp) if not any(isinstance(v, nn.Module) for v in hp.values()) else None,
        "name": getattr(model, "_hparams_name", "<unset>"),
        "to_logger": model._log_hyperparams,
        "attributes": {k: comparable(getattr(hp, k)) for k in hp if isinstance(k, str) and k.isidentifier()},
    }


@pytest.mark.parametrize("name", list(hparams_classes(nn.Module)))
def test_save_hyperparameters(name: str) -> None:
    got = {}
    for fw in FRAMEWORKS:
        build = hparams_classes(api(fw)["LM"])[name]
        result: dict[str, Any] = {}

        def run(build=build, result=result) -> None:
            try:
                result["view"] = hparams_view(build())
            except Exception as e:  # noqa: BLE001 - compared below
                result["error"] = (type(e), str(e))

        result["warnings"] = warning_messages(run)
        got[fw] = result
    ref, mine = got["lightning"], got["mopt_fast"]
    if "error" in ref:
        same_error(ref["error"], mine["error"])
        return
    assert mine["view"] == ref["view"]
    assert mine["warnings"] == ref["warnings"]
    if name in ("child", "grandchild"):
        assert {"lr", "dropout", "tag", "hidden"} <= set(ref["view"]["hparams"])  # the parents' and the child's


def test_hparams_initial_is_frozen() -> None:
    for fw in FRAMEWORKS:
        model = hparams_classes(api(fw)["LM"])["from_dict"]()
        model.hparams.lr = 9.0
        model.hparams["new"] = 1
        model.hparams_initial["sizes"].append(99)
        assert model.hparams.lr == 9.0 and model.hparams.new == 1
        assert model.hparams_initial == {"lr": 0.1, "sizes": [4, 8], "nested": {"k": None}}, fw


class Color:  # a value YAML dumps as a Python object
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Color({self.name})"


# -- load_from_checkpoint ------------------------------------------------------------------------------
def saved_module(LM: type) -> type:
    class Saved(cases.minimal(LM)):
        def __init__(self, lr: float = 0.05, hidden: int = 16, layers: tuple = (16,), tag: str = "a",
                     extra: dict | None = None) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, 1))
            self.seen_checkpoint: list | None = None

        def on_load_checkpoint(self, checkpoint: dict) -> None:
            self.seen_checkpoint = sorted(k for k in ("state_dict", "hyper_parameters", "hparams_name")
                                          if k in checkpoint)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    return Saved


def train_and_save(fw: str, how: str, make: Any = None, **init: Any) -> tuple[type, str, Any]:
    """(the class, the checkpoint file, the trained model): a fit of `make(LM)(**init)`, saved
    with Trainer.save_checkpoint (`how` "save_checkpoint" / "weights_only") or ModelCheckpoint."""
    cls = (make or saved_module)(api(fw)["LM"])
    torch.manual_seed(0)
    model = cls(**init)
    root = fresh_dir(fw)
    callbacks = [api(fw)["callbacks"].ModelCheckpoint(dirpath=root, filename="best")] if how == "model_checkpoint" else []
    t = fit(fw, model, max_epochs=2, callbacks=callbacks, enable_checkpointing=how == "model_checkpoint")
    path = os.path.join(root, "best.ckpt")
    if how != "model_checkpoint":
        t.save_checkpoint(path, weights_only=how == "weights_only")
    return cls, path, model


def loaded_view(model: Any) -> dict[str, Any]:
    return {
        "type": type(model).__name__, "hparams": dict(model.hparams), "hparams_type": type(model.hparams).__name__,
        "initial": dict(model.hparams_initial), "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": model.training, "device": str(next(model.parameters()).device),
        "requires_grad": [p.requires_grad for p in model.parameters()], "seen": model.seen_checkpoint,
        "attached": model._trainer is not None,
    }


def assert_same_loaded(ref: dict, got: dict) -> None:
    assert_tensors_equal(ref.pop("state"), got.pop("state"))
    assert got == ref
    assert {type(v) for v in got["hparams"].values()} == {type(v) for v in ref["hparams"].values()}


@pytest.mark.parametrize("map_location", [None, "cpu", torch.device("cpu"), {"cpu": "cpu"}, "callable"])
@pytest.mark.parametrize("how", ["save_checkpoint", "model_checkpoint", "weights_only"])
def test_load_from_checkpoint_round_trip(how: str, map_location: Any) -> None:
    if map_location == "callable":
        map_location = lambda storage, loc: storage  # noqa: E731
    init = dict(lr=0.1, hidden=12, layers=(12, 4), tag="t", extra={"k": [1, 2.5, None], "b": True})
    views, files = {}, {}
    for fw in FRAMEWORKS:
        cls, files[fw], trained = train_and_save(fw, how, **init)
        loaded = cls.load_from_checkpoint(files[fw], map_location=map_location)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trained.state_dict().values()))
        views[fw] = loaded_view(loaded)
        if fw == "mopt_fast":  # mopt_fast's class reads Lightning's checkpoint too
            views["mopt_fast_from_lightning"] = loaded_view(cls.load_from_checkpoint(files["lightning"]))
    assert views["lightning"]["hparams"] == init
    assert_same_loaded(dict(views["lightning"]), views["mopt_fast"])
    views["lightning"]["seen"] = views["mopt_fast_from_lightning"]["seen"]  # the keys of Lightning's file
    assert_same_loaded(views["lightning"], views["mopt_fast_from_lightning"])
    # the checkpoint is plain data: it opens with weights_only=True
    assert torch.load(files["mopt_fast"], weights_only=True)["hyper_parameters"] == init


def test_load_from_checkpoint_overrides_and_strictness() -> None:
    got: dict[str, dict] = {fw: {} for fw in FRAMEWORKS}
    for fw in FRAMEWORKS:
        cls, path, _ = train_and_save(fw, "save_checkpoint", lr=0.1, hidden=12)
        r = got[fw]
        # kwargs override the stored hyperparameters; unknown ones are dropped (no **kwargs in __init__)
        r["override"] = dict(cls.load_from_checkpoint(path, lr=0.5, tag="z", unknown=3).hparams)
        # a different architecture: load_state_dict's error, or with strict=False its warnings
        r["strict_error"] = raised(lambda cls=cls, path=path: cls.load_from_checkpoint(path, hidden=6))

        class Narrower(cls):
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.net = self.net[:1]

        r["unexpected_keys"] = warning_messages(lambda N=Narrower, path=path: N.load_from_checkpoint(path, strict=False))

        class Wider(cls):
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.head = nn.Linear(1, 1)

        r["missing_keys"] = warning_messages(lambda W=Wider, path=path: W.load_from_checkpoint(path, strict=False))
        r["missing_error"] = raised(lambda W=Wider, path=path: W.load_from_checkpoint(path))

        class Lenient(cls):
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.strict_loading = False
                self.head = nn.Linear(1, 1)

        r["strict_loading"] = warning_messages(lambda L=Lenient, path=path: L.load_from_checkpoint(path))
        r["strict_conflict"] = raised(lambda L=Lenient, path=path: L.load_from_checkpoint(path, strict=True))
        r["on_instance"] = raised(lambda cls=cls, path=path: cls().load_from_checkpoint(path))
        r["bad_hparams_file"] = raised(lambda cls=cls, path=path: cls.load_from_checkpoint(path, hparams_file="h.txt"))
    ref, mine = got["lightning"], got["mopt_fast"]
    assert mine["override"] == ref["override"] == {"lr": 0.5, "hidden": 12, "layers": (16,), "tag": "z", "extra": None}
    for key in ("strict_error", "missing_error", "strict_conflict", "on_instance", "bad_hparams_file"):
        same_error(ref[key], mine[key])
    for key in ("unexpected_keys", "missing_keys", "strict_loading"):
        assert mine[key] == ref[key] and ref[key], key


def config_modules(LM: type) -> dict[str, type]:
    class FromDict(cases.minimal(LM)):
        def __init__(self, config: dict, seed: int = 0) -> None:
            super().__init__()
            self.save_hyperparameters(config)
            self.config = config

    class FromNamespace(cases.minimal(LM)):
        def __init__(self, args: Any) -> None:
            super().__init__()
            self.save_hyperparameters(args)
            self.args = args

    return {"dict": FromDict, "namespace": FromNamespace}


@pytest.mark.parametrize("kind", ["dict", "namespace"])
def test_load_from_checkpoint_of_a_config_argument(kind: str) -> None:
    """Hyperparameters saved from one dict / Namespace argument go back as that argument (the
    checkpoint's "hparams_name"), as a dict."""
    init = {"config": {"lr": 0.2, "depth": 3}} if kind == "dict" else {"args": argparse.Namespace(lr=0.2, depth=3)}
    got = {}
    for fw in FRAMEWORKS:
        make = lambda LM, kind=kind: config_modules(LM)[kind]  # noqa: E731
        cls, path, _ = train_and_save(fw, "save_checkpoint", make, **init)
        loaded = cls.load_from_checkpoint(path)
        got[fw] = (dict(loaded.hparams), loaded._hparams_name, loaded.config if kind == "dict" else loaded.args,
                   torch.load(path, weights_only=False)["hparams_name"])
    assert got["mopt_fast"] == got["lightning"]
    assert got["lightning"][1] == ("config" if kind == "dict" else "args")


def test_hyperparameters_that_are_not_plain_data() -> None:
    """A hyperparameter that is not plain data is pickled into the checkpoint, as Lightning 2.6
    pickles it: torch's default load (weights_only=True) refuses the file with the same
    UnpicklingError in both, and load_from_checkpoint(weights_only=False) rebuilds the model with
    it. mopt_fast warns once, when it saves, that the file needs weights_only=False."""
    seen = {}
    for fw in ("lightning", "mopt_fast"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls, path, _ = train_and_save(fw, "save_checkpoint", extra={"color": Color("red")}, tag="t")
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            cls.load_from_checkpoint(path)
        loaded = cls.load_from_checkpoint(path, weights_only=False)
        seen[fw] = (loaded.hparams.extra["color"].name, loaded.hparams.tag, loaded.hparams.lr)
        again = cls.load_from_checkpoint(path, weights_only=False, extra={"color": Color("blue")})
        assert again.hparams.extra["color"].name == "blue" and again.hparams.tag == "t"
    assert seen["lightning"] == seen["mopt_fast"] == ("red", "t", 0.05)
    model = saved_module(mopt_fast.LightningModule)(extra={"c": Color("x")})
    messages = warning_messages(lambda: model._checkpoint_hparams())
    assert len(messages) == 1 and "'extra' holds a Color, which is not plain data: the checkpoint pickles" in messages[0]
    assert warning_messages(lambda: model._checkpoint_hparams()) == []  # once per hyperparameter


# -- the files the loggers write ------------------------------------------------------------------------
def logged_module(LM: type, save: str) -> Any:
    class Logged(cases.minimal(LM)):
        def __init__(self, lr: float = 0.05, layers: tuple = (16, 8), name: str = "run", flag: bool = True,
                     nothing: None = None, opts: dict | None = None, ns: Any = None, color: Any = None) -> None:
            super().__init__()
            if save == "all":
                self.save_hyperparameters()
            elif save == "no_logger":
                self.save_hyperparameters(logger=False)
            self.example_input_array = torch.randn(2, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    return Logged(opts={"a": 1, "b": [1, 2], "c": {"d": "e"}}, ns=argparse.Namespace(k=1), color=Color("red"))


def tree(root: str) -> dict[str, bytes | None]:
    """Every file under `root` by relative path: its bytes for the text files Lightning and
    mopt_fast both write, None for checkpoints and event files (their formats differ)."""
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            path = os.path.join(folder, f)
            rel = os.path.relpath(path, root)
            if f.startswith("events.out.tfevents."):
                rel = os.path.join(os.path.dirname(rel), "events.out.tfevents.*")
            out[rel] = open(path, "rb").read() if f.endswith((".yaml", ".csv")) else None
    return out


def tensorboard_contents(folder: str) -> dict[str, Any]:
    """The scalars (tag -> [(step, value)]), the HPARAMS-tab data (wall times left out) and whether
    a graph is there, of the event file in `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(folder, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    hparams = {}
    try:
        contents = acc.PluginTagToContent("hparams")
    except KeyError:  # no hyperparameters logged
        contents = {}
    for tag, content in contents.items():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        data.session_start_info.start_time_secs = 0
        hparams[tag] = str(data)
    return {"scalars": scalars, "hparams": hparams, "graph": acc.Tags().get("graph", False)}


@pytest.mark.parametrize("save", ["all", "no_logger", "none"])
def test_logger_files_match(save: str) -> None:
    importorskip_unless_ci("tensorboard")
    roots, trainers = {}, {}
    for fw in FRAMEWORKS:
        root = roots[fw] = fresh_dir(fw)
        loggers = api(fw)["loggers"]
        torch.manual_seed(0)
        model = logged_module(api(fw)["LM"], save)
        trainers[fw] = fit(fw, model, max_epochs=2, log_every_n_steps=2, default_root_dir=root,
                           enable_checkpointing=True,
                           logger=[loggers.CSVLogger(root), loggers.TensorBoardLogger(root, name="tb", log_graph=True)])
    ref, mine = tree(roots["lightning"]), tree(roots["mopt_fast"])
    assert sorted(mine) == sorted(ref)
    for rel, content in ref.items():
        assert mine[rel] == content, rel
    assert ("lightning_logs/version_0/hparams.yaml" in ref) == (save == "all")
    assert ref["tb/version_0/hparams.yaml"] == (b"{}\n" if save != "all" else ref["lightning_logs/version_0/hparams.yaml"])
    tb = {fw: tensorboard_contents(os.path.join(roots[fw], "tb", "version_0")) for fw in FRAMEWORKS}
    assert tb["mopt_fast"] == tb["lightning"]
    assert ("hp_metric" in tb["lightning"]["scalars"]) == (save == "all")
    assert tb["lightning"]["graph"]


def test_load_from_checkpoint_with_an_hparams_file() -> None:
    got = {}
    for fw in FRAMEWORKS:
        cls, path, _ = train_and_save(fw, "save_checkpoint", lr=0.1)
        folder = fresh_dir()
        logger = api(fw)["loggers"].CSVLogger(folder)
        logger.log_hyperparams({"lr": 0.7, "hidden": 10, "tag": "from_yaml"})
        csv_file = os.path.join(folder, "tags.csv")
        with open(csv_file, "w") as f:
            f.write("key,value\nlr,0.3\nhidden,16\ntag,plain\n")
        yaml_file = os.path.join(logger.log_dir, "hparams.yaml")
        got[fw] = [
            (dict(m.hparams), m.net[0].out_features)
            for m in (cls.load_from_checkpoint(path, hparams_file=yaml_file, hidden=16, strict=False),
                      cls.load_from_checkpoint(path, hparams_file=csv_file, strict=False))
        ]
    assert got["mopt_fast"] == got["lightning"]


# -- self.log: reductions, torchmetrics, callbacks ------------------------------------------------------
def per_batch_recorder(fw: str) -> Any:
    """A callback keeping callback_metrics and logged_metrics after every training and validation
    batch and epoch end."""

    class Recorder(api(fw)["callbacks"].Callback):
        def __init__(self) -> None:
            self.rows: list = []

        def _row(self, where: str, trainer: Any) -> None:
            self.rows.append((where, trainer.global_step, {k: v.clone() for k, v in trainer.callback_metrics.items()},
                              {k: v.clone() for k, v in trainer.logged_metrics.items()}))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._row("train_batch", trainer)

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self._row("val_batch", trainer)

        def on_train_epoch_end(self, trainer, pl_module):
            self._row("train_epoch", trainer)

        def on_validation_epoch_end(self, trainer, pl_module):
            self._row("val_epoch", trainer)

    return Recorder()


def run_logging(case: Any, data: tuple | None = None, **kw: Any) -> dict[str, dict]:
    """`case` fitted under both frameworks with a recording logger and a per-batch recorder."""
    out = {}
    extra_callbacks = kw.pop("extra_callbacks", [])
    for fw in FRAMEWORKS:
        torch.manual_seed(0)
        model = case(api(fw)["LM"])()
        recorder = per_batch_recorder(fw)
        logger = cases.recording_logger(fw)
        callbacks = [recorder] + [make(fw) for make in extra_callbacks]
        args = dict(max_epochs=2, log_every_n_steps=1, logger=logger, callbacks=callbacks)
        args.update(kw)
        t = fit(fw, model, data=data, **args)
        out[fw] = {"rows": recorder.rows, "calls": logger.calls, "model": model, "trainer": t,
                   "callback_metrics": dict(t.callback_metrics), "logged_metrics": dict(t.logged_metrics),
                   "state": model.state_dict()}
    return out


def assert_same_logging(out: dict[str, dict]) -> None:
    ref, mine = out["lightning"], out["mopt_fast"]
    assert len(mine["rows"]) == len(ref["rows"])
    for r, m in zip(ref["rows"], mine["rows"]):
        assert m[:2] == r[:2]
        assert_tensors_equal(r[2], m[2])
        assert_tensors_equal(r[3], m[3])
    assert len(mine["calls"]) == len(ref["calls"])
    for (rs, rm), (ms, mm) in zip(ref["calls"], mine["calls"]):
        assert ms == rs
        assert sorted(mm) == sorted(rm)
        for k in rm:
            assert mm[k] == rm[k] or (np.isnan(mm[k]) and np.isnan(rm[k])), (rs, k, rm[k], mm[k])
    assert_tensors_equal(ref["callback_metrics"], mine["callback_metrics"])
    assert_tensors_equal(ref["logged_metrics"], mine["logged_metrics"])
    assert_tensors_equal(dict(ref["state"]), dict(mine["state"]))


def reductions_case(LM: type) -> type:
    class Reductions(cases.minimal(LM)):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            super().training_step(batch, batch_idx)
            x = float(batch_idx % 4) - 1.5
            nan = float("nan") if batch_idx == 2 else x  # NaN: torch.max propagates it, builtin max may not
            self.log("b_max", nan, reduce_fx=max, on_epoch=True)
            self.log("b_min", nan, reduce_fx=min, on_epoch=True)
            self.log("t_max", nan, reduce_fx=torch.max, on_epoch=True)
            self.log("s_max", nan, reduce_fx="MAX", on_epoch=True)
            self.log("t_min", x, reduce_fx=torch.min, on_epoch=True, on_step=False)
            self.log("b_sum", x, reduce_fx=sum, on_epoch=True, on_step=False)
            self.log("avg", torch.tensor(x, dtype=torch.float64), reduce_fx="avg", on_epoch=True, on_step=False)
            self.log("f64_max", torch.tensor(x, dtype=torch.float64), reduce_fx=max, on_epoch=True, on_step=False)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            loss = self.compute_loss(batch)
            self.log("val_max", loss, reduce_fx=max)
            self.log("val_min", loss, reduce_fx=min, prog_bar=True)

    return Reductions


def test_log_reductions_max_min_as_lightning() -> None:
    out = run_logging(reductions_case)
    assert_same_logging(out)
    metrics = out["lightning"]["callback_metrics"]
    assert metrics["t_max_epoch"].isnan() and not metrics["b_max_epoch"].isnan()  # the two differ, and match


@pytest.mark.parametrize("bad", ["mixed", "custom", "median", "mean_then_max"])
def test_log_reduction_errors(bad: str) -> None:
    def case(LM: type) -> type:
        class Bad(cases.minimal(LM)):
            def training_step(self, batch: Any, batch_idx: int) -> None:
                super().training_step(batch, batch_idx)
                if bad == "mixed":  # the builtin and torch's max are different reductions to Lightning
                    self.log("m", 1.0, reduce_fx=max if batch_idx == 0 else torch.max)
                elif bad == "custom":
                    self.log("m", 1.0, reduce_fx=lambda x: x)
                elif bad == "median":
                    self.log("m", 1.0, reduce_fx="median")
                else:
                    self.log("m", 1.0, reduce_fx="mean" if batch_idx == 0 else "max")

        return Bad

    errors = {}
    for fw in FRAMEWORKS:
        errors[fw] = raised(lambda fw=fw: fit(fw, case(api(fw)["LM"])()))
    if bad == "custom":  # the message names the function object: compare up to it
        errors = {fw: (e[0], e[1].split(" Found:")[0]) for fw, e in errors.items()}
    same_error(errors["lightning"], errors["mopt_fast"])


def metrics_case(how: str) -> Any:
    def case(LM: type) -> type:
        class WithMetrics(cases.minimal(LM)):
            def __init__(self) -> None:
                super().__init__()
                self.train_mse = torchmetrics.MeanSquaredError()
                self.train_mae = torchmetrics.MeanAbsoluteError()
                self.val_mse = torchmetrics.MeanSquaredError()
                self.val_collection = torchmetrics.MetricCollection(
                    {"val_mae": torchmetrics.MeanAbsoluteError(), "val_rmse": torchmetrics.MeanSquaredError(squared=False)})
                self.never_logged = torchmetrics.SumMetric()

            def training_step(self, batch: Any, batch_idx: int) -> None:
                x, y = batch
                with torch.no_grad():
                    pred = self.net(x)
                # logged before any tensor: the first log of a new epoch resets the hook's logged
                # tensors, never the Metric objects (the user has just updated this one)
                self.train_mse(pred, y)  # forward: the batch value, and the running state
                self.log("train_mse", self.train_mse, on_step=True, on_epoch=True, prog_bar=True)
                self.train_mae.update(pred, y)  # update only: no step value
                self.log("train_mae", self.train_mae, on_step=how != "epoch_only", on_epoch=True)
                self.never_logged.update(1.0)
                super().training_step(batch, batch_idx)

            def validation_step(self, batch: Any, batch_idx: int) -> None:
                x, y = batch
                pred = self.net(x)
                self.log("val_loss", nn.functional.mse_loss(pred, y))
                self.val_mse.update(pred, y)
                self.log("val_mse", self.val_mse)
                self.val_collection(pred, y)
                self.log_dict(self.val_collection, on_step=how == "val_steps", on_epoch=True)

            def on_train_epoch_end(self) -> None:
                self.recorded.append(("epoch_end", self.train_mse._update_count, self.train_mae._update_count,
                                      self.val_mse._update_count, self.never_logged._update_count))

        return WithMetrics

    return case


@pytest.mark.parametrize("how", ["default", "epoch_only", "val_steps"])
def test_log_torchmetrics_objects(how: str) -> None:
    """Step values from the metric's forward, epoch values from compute(), reset at the end of
    each epoch and validation run (the sanity check's batches never reach an epoch value), and the
    metric updated only by the user's own calls."""
    out = run_logging(metrics_case(how), num_sanity_val_steps=2, limit_val_batches=2)
    assert_same_logging(out)
    for fw in FRAMEWORKS:
        model = out[fw]["model"]
        out[fw]["counts"] = (model.recorded, model.train_mse._update_count, model.val_mse._update_count,
                             model.never_logged._update_count, model.val_collection["val_mae"]._update_count)
    assert out["mopt_fast"]["counts"] == out["lightning"]["counts"]
    assert out["lightning"]["counts"][3] == 12  # a metric never logged is never reset
    logged = out["lightning"]["logged_metrics"]
    assert "train_mse_epoch" in logged and "val_mse" in logged
    assert ("val_rmse_epoch" if how == "val_steps" else "val_rmse") in logged


def test_log_a_metric_again_after_its_epoch_value_was_read() -> None:
    """Logged again in the same hook after trainer.callback_metrics computed its epoch value, a
    Metric is computed afresh (Lightning keeps the value only until the next log)."""
    def case(LM: type) -> type:
        class Tally(cases.minimal(LM)):
            def __init__(self) -> None:
                super().__init__()
                self.tally = torchmetrics.SumMetric()

            def on_train_epoch_end(self) -> None:
                self.tally.update(10.0)
                self.log("tally", self.tally)

        return Tally

    def callbacks(fw: str) -> list:
        class LogsFirst(api(fw)["callbacks"].Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                pl_module.tally.update(1.0)
                pl_module.log("tally", pl_module.tally)

        class Reads(api(fw)["callbacks"].Callback):
            seen: list = []

            def on_train_epoch_end(self, trainer, pl_module):
                self.seen.append(trainer.callback_metrics["tally"].item())

        return [LogsFirst(), Reads()]

    got = {}
    for fw in FRAMEWORKS:
        torch.manual_seed(0)
        cbs = callbacks(fw)
        t = fit(fw, case(api(fw)["LM"])(), callbacks=cbs)
        got[fw] = (cbs[1].seen, t.callback_metrics["tally"].item())
    assert got["mopt_fast"] == got["lightning"] == ([1.0, 1.0], 11.0)


@pytest.mark.parametrize("where", ["not_an_attribute", "no_metric_attributes"])
def test_log_metric_not_an_attribute(where: str) -> None:
    def case(LM: type) -> type:
        class Loose(cases.minimal(LM)):
            def __init__(self) -> None:
                super().__init__()
                if where == "not_an_attribute":
                    self.kept = torchmetrics.SumMetric()

            def training_step(self, batch: Any, batch_idx: int) -> None:
                super().training_step(batch, batch_idx)
                metric = torchmetrics.SumMetric()
                metric(1.0)
                self.log("loose", metric)

        return Loose

    errors = {fw: raised(lambda fw=fw: fit(fw, case(api(fw)["LM"])())) for fw in FRAMEWORKS}
    same_error(errors["lightning"], errors["mopt_fast"])


def logging_callback(fw: str) -> Any:
    class LogsToo(api(fw)["callbacks"].Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            pl_module.log("cb_batch", float(batch_idx), on_epoch=True, reduce_fx="sum")

        def on_train_epoch_start(self, trainer, pl_module):
            pl_module.log("cb_epoch_start", float(trainer.current_epoch))

        def on_train_epoch_end(self, trainer, pl_module):
            pl_module.log("cb_epoch_end", trainer.callback_metrics["loss_epoch"] * 2)

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            pl_module.log("cb_val_batch", float(batch_idx), reduce_fx=max, prog_bar=True)

        def on_validation_epoch_end(self, trainer, pl_module):
            pl_module.log("cb_val_end", trainer.callback_metrics.get("cb_val_batch", torch.tensor(-1.0)) + 1)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            pl_module.log("cb_lr", optimizer.param_groups[0]["lr"])

    return LogsToo()


@pytest.mark.parametrize("case", ["manual", "automatic"])
def test_log_from_callback_hooks(case: str) -> None:
    make = cases.minimal if case == "manual" else cases.automatic()
    out = run_logging(make, extra_callbacks=[logging_callback])
    assert_same_logging(out)
    assert {"cb_batch_epoch", "cb_epoch_start", "cb_epoch_end", "cb_val_batch", "cb_val_end", "cb_lr"} <= set(
        out["lightning"]["logged_metrics"])


def test_log_from_a_callback_hook_that_cannot_log() -> None:
    def bad(fw: str) -> Any:
        class Bad(api(fw)["callbacks"].Callback):
            def on_train_end(self, trainer, pl_module):
                pl_module.log("x", 1.0)

        return Bad()

    errors = {fw: raised(lambda fw=fw: fit(fw, cases.minimal(api(fw)["LM"])(), callbacks=[bad(fw)]))
              for fw in FRAMEWORKS}
    same_error(errors["lightning"], errors["mopt_fast"])


def test_logged_tensor_is_a_snapshot() -> None:
    """A logged tensor later changed in place (a parameter the optimizer steps, a running count)
    keeps the value it had when logged."""
    def case(LM: type) -> type:
        class Snapshots(cases.minimal(LM)):
            def __init__(self) -> None:
                super().__init__()
                self.register_buffer("count", torch.zeros(()))

            def training_step(self, batch: Any, batch_idx: int) -> None:
                self.log("w0", self.net[0].weight[0, 0], on_epoch=True, reduce_fx=max)
                self.log("count", self.count, on_epoch=True)
                self.count += 1
                super().training_step(batch, batch_idx)

        return Snapshots

    assert_same_logging(run_logging(case))


def test_resume_restores_the_state_of_logged_metrics() -> None:
    """mopt_fast resumes exactly: a checkpoint holds the state of the torchmetrics objects logged
    in the epoch it was taken in, so a fit resumed mid-epoch ends with the epoch values of an
    uninterrupted one (Lightning's checkpoints do not keep it). The uninterrupted run is Lightning's;
    one epoch, so the epoch value compared is the one of the epoch the checkpoint was taken in."""
    case = metrics_case("default")
    folder = fresh_dir()
    runs = {}
    for name, fw in (("lightning", "lightning"), ("full", "mopt_fast"), ("resumed", "mopt_fast")):
        torch.manual_seed(0)
        model = case(api(fw)["LM"])()
        kw: dict[str, Any] = {}
        if name == "full":
            kw["callbacks"] = [api(fw)["callbacks"].ModelCheckpoint(dirpath=folder, filename="{step}",
                                                                    every_n_train_steps=3, save_top_k=-1)]
        t = trainer(fw, max_epochs=1, enable_checkpointing=name == "full", **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t.fit(model, *cases.make_data(), ckpt_path=os.path.join(folder, "step=3.ckpt") if name == "resumed" else None)
        runs[name] = (dict(t.callback_metrics), dict(t.logged_metrics),
                      {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                       for k, v in model.train_mse.metric_state.items()}, model.train_mse._update_count)
    assert os.path.exists(os.path.join(folder, "step=3.ckpt"))  # taken mid-epoch: 6 batches an epoch
    for name in ("full", "resumed"):
        assert_tensors_equal(runs["lightning"][0], runs[name][0])
        assert_tensors_equal(runs["lightning"][1], runs[name][1])
        assert_tensors_equal(runs["lightning"][2], runs[name][2])
        assert runs[name][3] == runs["lightning"][3]
    state = torch.load(os.path.join(folder, "step=3.ckpt"), weights_only=True)["mopt_fast"]["metrics"]["train"]
    entry = state["training_step.train_mse"]
    assert entry["metric_attribute"] == "train_mse" and entry["metric_state"]["update_count"] == 3


# -- configure_optimizers returning None --------------------------------------------------------
def no_optimizer(kind: str) -> Any:
    def case(LM: type) -> type:
        base = cases.minimal(LM) if kind.startswith("manual") else cases.automatic()(LM)

        class NoOptimizer(base):
            def training_step(self, batch: Any, batch_idx: int) -> Any:
                if kind.startswith("manual"):
                    opt = self.optimizers()
                    opt.zero_grad()
                    loss = self.compute_loss(batch)
                    self.manual_backward(loss)
                    opt.step()
                    self.log("loss", loss)
                    self.recorded.append((type(opt).__name__, repr(opt.optimizer), batch_idx))
                    return None
                return super().training_step(batch, batch_idx)

            def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
                self.recorded.append([None if p.grad is None else p.grad.sum().item() for p in self.parameters()])

        if kind.endswith("returns_none"):
            NoOptimizer.configure_optimizers = lambda self: None
        else:  # not overridden: the base class's
            NoOptimizer.configure_optimizers = LM.configure_optimizers
        return NoOptimizer

    return case


@pytest.mark.parametrize("kind", ["automatic", "manual"])
def test_configure_optimizers_not_overridden(kind: str) -> None:
    errors = {fw: raised(lambda fw=fw: fit(fw, no_optimizer(f"{kind}_not_overridden")(api(fw)["LM"])()))
              for fw in FRAMEWORKS}
    same_error(errors["lightning"], errors["mopt_fast"])


def test_training_step_not_overridden() -> None:
    def case(LM: type) -> type:
        class NoStep(LM):
            def __init__(self) -> None:
                super().__init__()
                self.lin = nn.Linear(8, 1)

            def configure_optimizers(self) -> Any:
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return NoStep

    errors = {fw: raised(lambda fw=fw: fit(fw, case(api(fw)["LM"])())) for fw in FRAMEWORKS}
    same_error(errors["lightning"], errors["mopt_fast"])


@pytest.mark.parametrize("kind", ["automatic_returns_none", "manual_returns_none"])
def test_configure_optimizers_returning_none(kind: str) -> None:
    """The fit runs without an optimizer, as in Lightning: training_step and backward still run
    (gradients build up: the stand-in's zero_grad does nothing), the weights stay, steps count."""
    got = {}
    for fw in FRAMEWORKS:
        torch.manual_seed(0)
        model = no_optimizer(kind)(api(fw)["LM"])()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        t = trainer(fw, max_epochs=2)
        messages = warning_messages(lambda t=t, model=model: t.fit(model, *cases.make_data()))
        got[fw] = {
            "warnings": [m for m in messages if "configure_optimizers" in m],
            "global_step": t.global_step, "recorded": model.recorded,
            "grads": [p.grad.clone() if p.grad is not None else None for p in model.parameters()],
            "unchanged": all(torch.equal(before[k], v) for k, v in model.state_dict().items()),
            "optimizers": [repr(o) for o in t.optimizers], "callback_metrics": dict(t.callback_metrics),
        }
    ref, mine = got["lightning"], got["mopt_fast"]
    assert mine["warnings"] == ref["warnings"] and ref["warnings"]
    assert mine["global_step"] == ref["global_step"] and mine["recorded"] == ref["recorded"]
    assert mine["unchanged"] and ref["unchanged"]
    assert mine["optimizers"] == ref["optimizers"] == ["No Optimizer"]
    assert len(mine["grads"]) == len(ref["grads"])
    for g, r in zip(mine["grads"], ref["grads"]):
        assert (g is None) == (r is None) and (r is None or torch.equal(g, r))
    grad_sums = [r[0] for r in ref["recorded"] if isinstance(r, list)]
    assert grad_sums[0] != grad_sums[1] and grad_sums[0] is not None  # backward ran, the gradients built up
    assert_tensors_equal(ref["callback_metrics"], mine["callback_metrics"])
