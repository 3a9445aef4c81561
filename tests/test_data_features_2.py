"""Data features beyond tests/test_data_features.py: a resumed fit with several training loaders
that keep persistent workers, CombinedLoaders in their own mode as evaluation dataloaders, and
stateful dataloaders in checkpoints. Side by side with Lightning 2.6 where Lightning has the
behaviour; against the uninterrupted mopt_fast fit where the behaviour is a resume's exactness."""
from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import mopt_fast
from mopt_fast import ModelCheckpoint
from mopt_fast.utilities import CombinedLoader

from helpers import importorskip_unless_ci
from lightning_cases import frameworks

pl = importorskip_unless_ci("lightning.pytorch")
from lightning.pytorch.utilities import CombinedLoader as LightningCombinedLoader  # noqa: E402

FRAMEWORKS = ("lightning", "mopt_fast")
QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)


def assert_same_tensors(got: Any, ref: Any, where: str) -> None:
    """The same nested data, tensors equal bit for bit (dtype and shape included)."""
    if isinstance(ref, torch.Tensor):
        assert got.dtype == ref.dtype and torch.equal(got, ref), where
    elif isinstance(ref, dict):
        assert got.keys() == ref.keys(), where
        for key in ref:
            assert_same_tensors(got[key], ref[key], f"{where}.{key}")
    elif isinstance(ref, (list, tuple)):
        assert len(got) == len(ref), where
        for i, (a, b) in enumerate(zip(got, ref)):
            assert_same_tensors(a, b, f"{where}[{i}]")
    else:
        assert got == ref, where


class Jittered(Dataset):
    """Samples with optional noise drawn where the sample is loaded (in a worker process)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, noise: float) -> None:
        self.x, self.y, self.noise = x, y, noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i] + self.noise * torch.randn(self.x.shape[1]) if self.noise else self.x[i]
        return x, self.y[i]


class TwoLoaderModel(mopt_fast.LightningModule):
    """A linear model with dropout (a main-process draw) trained on a list of two loaders' batches."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return sum(torch.nn.functional.mse_loss(self.net(x), y) for x, y in batch)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


# -- 1. several training loaders with persistent workers, resumed ---------------------------------
@pytest.mark.parametrize("noise", [0.0, 0.3], ids=["no_augmentation", "augmentation_in_workers"])
def test_resume_several_loaders_with_persistent_workers(noise: float, tmp_path) -> None:
    """Two shuffled training loaders with a persistent worker each (the shorter one cycled). Inside
    the first epoch every checkpoint resumes exactly; from a later epoch the main process's draws
    (both orders, dropout) resume exactly but the workers start anew, and the warning the single
    loader gives says so; without augmentation the resume is exact."""

    def fit(ckpt_path: str | None = None, callbacks: tuple = ()) -> tuple[Any, Any, list[str]]:
        torch.manual_seed(0 if ckpt_path is None else 99)
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(64, 8, generator=g)
        y = x @ torch.randn(8, 1, generator=g)
        loaders = [DataLoader(Jittered(x, y, noise), batch_size=16, shuffle=True, num_workers=1,
                              persistent_workers=True),
                   DataLoader(Jittered(x[:40], y[:40], noise), batch_size=16, shuffle=True, num_workers=1,
                              persistent_workers=True)]
        model = TwoLoaderModel()
        trainer = mopt_fast.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                                    enable_model_summary=False, enable_checkpointing=bool(callbacks),
                                    callbacks=list(callbacks))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(model, loaders, ckpt_path=ckpt_path)
        assert all(dl._iterator is None for dl in loaders)  # the workers stop with the fit
        warned = [str(w.message) for w in caught if "persistent_workers=True on" in str(w.message)]
        return model, trainer, warned

    ref_model, ref, _ = fit(callbacks=(ModelCheckpoint(dirpath=str(tmp_path), every_n_train_steps=1, save_top_k=-1),))
    for name, first_epoch in [("epoch=0-step=2.ckpt", True), ("epoch=1-step=6.ckpt", False)]:
        model, trainer, warned = fit(ckpt_path=str(tmp_path / name))
        assert trainer.global_step == ref.global_step == 12
        if first_epoch:
            assert not warned, (name, warned)
        else:
            assert len(warned) == 1 and "training DataLoader" in warned[0], (name, warned)
        if first_epoch or not noise:
            assert_same_tensors(model.state_dict(), ref_model.state_dict(), name)
            assert_same_tensors(trainer.optimizers[0].state_dict(), ref.optimizers[0].state_dict(), name)


# -- 2. a CombinedLoader in its own mode as the evaluation dataloaders -----------------------------
def random_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x @ torch.randn(4, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g))


def as_plain(obj: Any) -> Any:
    """A batch, hook argument or metric as plain data, to compare across the two Trainers."""
    if isinstance(obj, torch.Tensor):
        return [round(v, 6) for v in obj.flatten().tolist()]
    if isinstance(obj, dict):
        return {k: as_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_plain(v) for v in obj]
    return obj


def evaluator(LM: type) -> Any:
    """A module that fits on one loader and logs, on step and epoch, a loss summed over whatever
    combined batch evaluation gives it (None entries skipped: "max_size"), recording the hooks."""

    class Evaluator(LM):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.calls: list[Any] = []

        def loss(self, batch: Any) -> torch.Tensor:
            pairs = [p for p in (batch.values() if isinstance(batch, dict) else batch) if p is not None]
            return sum(torch.nn.functional.mse_loss(self.layer(x), y) for x, y in pairs)  # type: ignore[return-value]

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def on_validation_batch_start(self, batch: Any, batch_idx: int, *rest: Any) -> None:
            self.calls.append(("on_validation_batch_start", as_plain(batch), batch_idx, rest))

        def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, *rest: Any) -> None:
            self.calls.append(("on_validation_batch_end", as_plain(outputs), batch_idx, rest))

        def on_test_batch_start(self, batch: Any, batch_idx: int, *rest: Any) -> None:
            self.calls.append(("on_test_batch_start", as_plain(batch), batch_idx, rest))

        def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self.loss(batch)
            self.log("val_loss", loss, on_step=True, on_epoch=True)
            return loss

        def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self.loss(batch)
            self.log("test_loss", loss, on_step=True, on_epoch=True)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return Evaluator


def combined_eval_loaders(framework: str, mode: str, shape: str) -> Any:
    loaders = [DataLoader(random_data(16, 1), batch_size=4), DataLoader(random_data(8, 2), batch_size=4)]
    cls = LightningCombinedLoader if framework == "lightning" else CombinedLoader
    return cls({"a": loaders[0], "b": loaders[1]} if shape == "dict" else loaders, mode)


@pytest.mark.parametrize("mode", ["min_size", "max_size_cycle", "max_size"])
@pytest.mark.parametrize("ours", [False, True], ids=["lightning_combined", "our_combined"])
def test_combined_loader_in_its_mode_for_evaluation(mode: str, ours: bool, tmp_path) -> None:
    """validate and test over a CombinedLoader in a mode other than "sequential", and a fit
    validating on one (sanity check included, limit_val_batches limiting each loader): the same
    combined batches, hook arguments (no dataloader_idx), results, callback_metrics, logged names
    and values, and weights as Lightning's."""
    got = {}
    for framework in FRAMEWORKS:
        LM, Trainer = frameworks(framework)
        kind = framework if ours else "lightning"  # Lightning's Trainer knows its own CombinedLoader only
        torch.manual_seed(0)
        model = evaluator(LM)()
        logger = pl.loggers.CSVLogger(str(tmp_path / framework), name="", version="") if framework == "lightning" \
            else mopt_fast.loggers.CSVLogger(str(tmp_path / framework), name="", version="")
        trainer = Trainer(max_epochs=2, logger=logger, num_sanity_val_steps=1, limit_val_batches=3,
                          log_every_n_steps=1, **QUIET)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, DataLoader(random_data(24, 3), batch_size=8),
                        combined_eval_loaders(kind, mode, "list"))
            fit_metrics = as_plain(dict(trainer.callback_metrics))
            validated = trainer.validate(model, combined_eval_loaders(kind, mode, "dict"), verbose=False)
            tested = trainer.test(model, combined_eval_loaders(kind, mode, "list"), verbose=False)
        with open(tmp_path / framework / "metrics.csv") as f:
            logged = f.read()
        got[framework] = dict(calls=model.calls, fit_metrics=fit_metrics, validated=as_plain(validated),
                              tested=as_plain(tested), logged=logged, weights=as_plain(model.state_dict()))
    for key in got["lightning"]:
        assert got["mopt_fast"][key] == got["lightning"][key], key
    assert any(call[0] == "on_test_batch_start" for call in got["lightning"]["calls"])


def test_combined_loader_in_its_mode_for_a_dataloader_iter_step() -> None:
    """``validation_step(self, dataloader_iter)`` over a "max_size" CombinedLoader: the same
    ``(batch, batch_idx, dataloader_idx)`` triples, batch-end hook arguments and results as Lightning's."""
    got = {}
    for framework in FRAMEWORKS:
        LM, Trainer = frameworks(framework)

        class IterStep(LM):
            def __init__(self) -> None:
                super().__init__()
                self.layer = torch.nn.Linear(4, 1)
                self.calls: list[Any] = []

            def validation_step(self, dataloader_iter: Any) -> None:
                batch, batch_idx, dataloader_idx = next(dataloader_iter)
                self.calls.append((as_plain(batch), batch_idx, dataloader_idx))
                pairs = [p for p in batch if p is not None]
                self.log("v", sum(torch.nn.functional.mse_loss(self.layer(x), y) for x, y in pairs))

            def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, *rest: Any) -> None:
                self.calls.append(("on_validation_batch_end", batch_idx, rest))

        torch.manual_seed(0)
        model = IterStep()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = Trainer(logger=False, limit_val_batches=3, **QUIET).validate(
                model, combined_eval_loaders(framework, "max_size", "list"), verbose=False)
        got[framework] = (model.calls, as_plain(results))
    assert got["mopt_fast"] == got["lightning"] and len(got["lightning"][0]) == 6


# -- 3. stateful dataloaders in checkpoints ---------------------------------------------------------
class StatefulBatches:
    """A loader that records how far its current pass went and, given that state, starts its next
    pass there (what torchdata's StatefulDataLoader does). Each pass starts its batches at another
    offset, so a new loader merely skipping batches gives other ones than a restored loader."""

    def __init__(self, data: TensorDataset, batch_size: int) -> None:
        self.data, self.batch_size = data, batch_size
        self.position = 0  # batches given in the current pass
        self.passes = 0  # passes started
        self.resume: dict[str, int] | None = None

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self) -> Any:
        if self.resume is not None:
            (self.position, self.passes), self.resume = (self.resume["position"], self.resume["passes"]), None
        else:
            self.position, self.passes = 0, self.passes + 1
        n = len(self)
        for i in range(self.position, n):
            self.position = i + 1
            j = (i + self.passes) % n
            yield self.data[j * self.batch_size:(j + 1) * self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "passes": self.passes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resume = dict(state)


def stateful_recorder(LM: type) -> Any:
    """A module trained on one stateful loader's batches or a list of them, recording each batch."""

    class Recorder(LM):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.seen: list[Any] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.seen.append((batch_idx, as_plain(batch)))
            pairs = batch if isinstance(batch[0], (list, tuple)) else [batch]
            return sum(torch.nn.functional.mse_loss(self.layer(x), y) for x, y in pairs)  # type: ignore[return-value]

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return Recorder


@pytest.mark.parametrize("several", [False, True], ids=["one_loader", "two_loaders"])
def test_stateful_loaders_resume_as_lightning(several: bool, tmp_path) -> None:
    """A fit on stateful loaders checkpointed inside an epoch: the checkpoint holds the loaders'
    states where Lightning puts them (``loops.fit_loop.state_dict.combined_loader``); resumed by
    either Trainer from either Trainer's file, the loaders carry on from there (no batch skipped
    or repeated) to the weights of the uninterrupted fit, batches as Lightning's resume sees them."""

    def fit(framework: str, ckpt_path: str | None = None, save: bool = False) -> tuple[Any, list[Any]]:
        LM, Trainer = frameworks(framework)
        make = lambda n, seed: StatefulBatches(random_data(n, seed), batch_size=8)  # noqa: E731
        loaders: Any = [make(32, 1), make(24, 2)] if several else make(32, 1)
        torch.manual_seed(0)
        model = stateful_recorder(LM)()
        callbacks = []
        if save:
            Checkpoint = pl.callbacks.ModelCheckpoint if framework == "lightning" else ModelCheckpoint
            callbacks.append(Checkpoint(dirpath=str(tmp_path / framework), every_n_train_steps=1, save_top_k=-1))
        trainer = Trainer(max_epochs=2, logger=False, callbacks=callbacks, limit_val_batches=0,
                          **{**QUIET, "enable_checkpointing": save})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, loaders, ckpt_path=ckpt_path)
        return as_plain(model.state_dict()), model.seen

    name = "epoch=1-step=6.ckpt"  # after the 2nd of 4 batches of the second epoch
    weights, states = {}, {}
    for framework in FRAMEWORKS:
        weights[framework], _ = fit(framework, save=True)
        ckpt = torch.load(tmp_path / framework / name, weights_only=False)
        states[framework] = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert weights["mopt_fast"] == weights["lightning"]
    assert states["mopt_fast"] == states["lightning"]
    assert states["lightning"][0] == {"position": 2, "passes": 2} and len(states["lightning"]) == 1 + several
    resumed = {(runner, writer): fit(runner, ckpt_path=str(tmp_path / writer / name))
               for runner in FRAMEWORKS for writer in FRAMEWORKS}
    for (runner, writer), (got_weights, seen) in resumed.items():
        assert seen == resumed[("lightning", "lightning")][1], (runner, writer)
        assert got_weights == weights["lightning"], (runner, writer)
    assert [idx for idx, _ in resumed[("mopt_fast", "mopt_fast")][1]] == [2, 3]


def test_stateful_loader_states_that_do_not_match(tmp_path) -> None:
    """A checkpoint holding one stateful loader's state, resumed on a plain DataLoader: Lightning's
    RuntimeError from either Trainer."""
    LM, Trainer = frameworks("lightning")
    torch.manual_seed(0)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path), every_n_train_steps=1, save_top_k=-1)
    trainer = Trainer(max_epochs=1, logger=False, limit_val_batches=0, limit_train_batches=3, callbacks=[checkpoint],
                      **{**QUIET, "enable_checkpointing": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(stateful_recorder(LM)(), StatefulBatches(random_data(32, 1), batch_size=8))
    path = str(tmp_path / "epoch=0-step=1.ckpt")  # inside the epoch: Lightning restores loader states there
    errors = []
    for framework in FRAMEWORKS:
        LM, Trainer = frameworks(framework)
        trainer = Trainer(max_epochs=2, logger=False, limit_val_batches=0, **QUIET)
        with warnings.catch_warnings(), pytest.raises(RuntimeError) as caught:
            warnings.simplefilter("ignore")
            trainer.fit(stateful_recorder(LM)(), DataLoader(random_data(32, 1), batch_size=8), ckpt_path=path)
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "has 0 stateful loaders, but found 1 states" in errors[0]


def test_stateful_loader_states_at_an_epoch_end_are_not_restored(tmp_path) -> None:
    """A checkpoint from an epoch's end holds the loader's state but, as in Lightning (whose fit loop
    is not restarting there), a resume leaves the loader as it is: the next epoch is a whole one."""
    seen = {}
    for framework in FRAMEWORKS:
        LM, Trainer = frameworks(framework)
        Checkpoint = pl.callbacks.ModelCheckpoint if framework == "lightning" else ModelCheckpoint
        torch.manual_seed(0)
        trainer = Trainer(max_epochs=1, logger=False, limit_val_batches=0, **{**QUIET, "enable_checkpointing": True},
                          callbacks=[Checkpoint(dirpath=str(tmp_path / framework))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(stateful_recorder(LM)(), StatefulBatches(random_data(32, 1), batch_size=8))
            path = tmp_path / framework / "epoch=0-step=4.ckpt"
            assert torch.load(path, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
            model = stateful_recorder(LM)()
            Trainer(max_epochs=2, logger=False, limit_val_batches=0, **QUIET).fit(
                model, StatefulBatches(random_data(32, 1), batch_size=8), ckpt_path=str(path))
        seen[framework] = model.seen
    assert seen["mopt_fast"] == seen["lightning"] and [idx for idx, _ in seen["lightning"]] == [0, 1, 2, 3]
