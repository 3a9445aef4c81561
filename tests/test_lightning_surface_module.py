"""The module surface of the Lightning front, side by side with Lightning 2.6: seed_everything and
the worker seeds, the LightningModule members (logger(s), ranks, freeze, nested modules),
save_hyperparameters / hparams / load_from_checkpoint, the hparams.yaml the loggers write,
self.log with max/min reductions, torchmetrics objects and from callbacks, configure_optimizers
returning None, and the import paths (mopt_fast.callbacks, mopt_fast.loggers, exceptions, what is
not built). Each test runs the same code under lightning.pytorch and mopt_fast and compares."""
from __future__ import annotations

import os
import random
import tempfile
import warnings
from typing import Any

import numpy as np
import pytest
import torch
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


# -- import paths, exceptions, what is not built ---------------------------------------------------
def test_import_paths() -> None:
    from lightning.pytorch import callbacks as pl_callbacks
    from lightning.pytorch import loggers as pl_loggers

    from mopt_fast import callbacks, loggers
    from mopt_fast.exceptions import NotBuiltError
    from mopt_fast.trainer import callbacks as trainer_callbacks
    from mopt_fast.trainer import checkpoint
    from mopt_fast.trainer import loggers as trainer_loggers

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
    # the callbacks another part of mopt_fast adds show up under the import path
    for name in ("EarlyStopping", "LearningRateMonitor", "RichProgressBar"):
        assert (name in callbacks.__all__) == hasattr(trainer_callbacks, name) or hasattr(checkpoint, name)
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


@pytest.mark.parametrize("what", ["LightningCLI", "Tuner", "to_onnx", "to_torchscript", "Fabric", "LightningDataModule"])
def test_not_built_features_say_so(what: str) -> None:
    from mopt_fast.cli import LightningCLI
    from mopt_fast.tuner import Tuner

    calls = {
        "LightningCLI": lambda: LightningCLI(cases.minimal(mopt_fast.LightningModule)),
        "Tuner": lambda: Tuner(mopt_fast.Trainer(logger=False)),
        "to_onnx": lambda: cases.minimal(mopt_fast.LightningModule)().to_onnx("m.onnx", torch.randn(1, 8)),
        "to_torchscript": lambda: cases.minimal(mopt_fast.LightningModule)().to_torchscript(),
        "Fabric": lambda: mopt_fast.Fabric,
        "LightningDataModule": lambda: exec("from mopt_fast import LightningDataModule", {}),
    }
    with pytest.raises(NotImplementedError, match=rf"{what}\b.* is not built in mopt_fast"):
        calls[what]()
