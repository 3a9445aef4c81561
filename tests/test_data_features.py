"""Several training dataloaders (`CombinedLoader`), `reload_dataloaders_every_n_epochs` and the
`dataloader_iter` training step, each side by side with Lightning 2.6 on the same seed: the same
weights (bitwise), the same batches seen, the same hook calls (with their batch_idx), the same
counters and the same errors. `CombinedLoader` itself is compared with Lightning's on generated
collections, modes and limits."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import mopt_fast
from mopt_fast.utilities import CombinedLoader

from helpers import importorskip_unless_ci
from lightning_cases import frameworks

pl = importorskip_unless_ci("lightning.pytorch")
from lightning.pytorch.utilities import CombinedLoader as LightningCombinedLoader  # noqa: E402

FRAMEWORKS = ("lightning", "mopt_fast")
MODES = ["min_size", "max_size_cycle", "max_size", "sequential"]
QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, logger=False,
             enable_checkpointing=False)


def combined_class(framework: str) -> type:
    return LightningCombinedLoader if framework == "lightning" else CombinedLoader


# -- CombinedLoader against Lightning's --------------------------------------------------------------
def _draw(combined: Any) -> list[Any]:
    iter(combined)
    return list(combined)


@st.composite
def collections(draw: Any) -> tuple[Any, list[int]]:
    lengths = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
    iterables = [list(range(10 * i, 10 * i + n)) if n % 2 else range(10 * i, 10 * i + n)
                 for i, n in enumerate(lengths)]
    shape = draw(st.sampled_from(["list", "tuple", "dict", "nested"]))
    if shape == "tuple":
        return tuple(iterables), lengths
    if shape == "dict":
        return {f"k{i}": it for i, it in enumerate(iterables)}, lengths
    if shape == "nested" and len(iterables) > 1:
        return {"a": iterables[0], "b": iterables[1:]}, lengths
    return iterables, lengths


@settings(max_examples=150, deadline=None)
@given(collection=collections(), mode=st.sampled_from(MODES), limit=st.none() | st.integers(0, 7),
       per_iterable=st.booleans())
def test_combined_loader_matches_lightning(collection: tuple[Any, list[int]], mode: str, limit: int | None,
                                           per_iterable: bool) -> None:
    iterables, lengths = collection
    ours, theirs = CombinedLoader(iterables, mode), LightningCombinedLoader(iterables, mode)
    limits: Any = limit
    if limit is not None and per_iterable:
        limits = [(limit + i) % 5 for i in range(len(lengths))]
    ours.limits, theirs.limits = limits, limits
    assert ours.limits == theirs.limits
    assert ours.flattened == theirs.flattened
    assert ours.iterables == theirs.iterables
    assert _draw(ours) == _draw(theirs)
    assert len(ours) == len(theirs)
    assert _draw(ours) == _draw(theirs)  # a second pass starts afresh
    assert ours.sampler == theirs.sampler


def test_combined_loader_with_dataloaders_and_errors() -> None:
    g = torch.Generator().manual_seed(3)
    loaders = {"a": DataLoader(torch.randn(6, 2, generator=g), batch_size=4),
               "b": DataLoader(torch.randn(15, 2, generator=g), batch_size=5)}
    for mode in MODES:
        ours, theirs = CombinedLoader(loaders, mode), LightningCombinedLoader(loaders, mode)
        assert str(_draw(ours)) == str(_draw(theirs))
        assert len(ours) == len(theirs)
        assert ours.batch_sampler == theirs.batch_sampler
    errors = []
    for cls in (CombinedLoader, LightningCombinedLoader):
        found = []
        attempts: list[Callable[[type], Any]] = [
            lambda c: c(loaders, "zip"), lambda c: len(c(loaders)),
            lambda c: setattr(c(loaders), "flattened", [1]), lambda c: setattr(c(loaders), "limits", [1])]
        for attempt in attempts:
            with pytest.raises(Exception) as info:
                attempt(cls)
            found.append((type(info.value), str(info.value)))
        errors.append(found)
    assert errors[0] == errors[1]
    assert mopt_fast.utilities.CombinedLoader is CombinedLoader


# -- side-by-side fits ---------------------------------------------------------------------------------
def random_data(n: int, seed: int, width: int = 4) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    return TensorDataset(x, x @ torch.randn(width, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g))


def summary(obj: Any) -> Any:
    """A batch (or hook argument) as plain data, to compare across the two Trainers."""
    if isinstance(obj, torch.Tensor):
        return [round(v, 6) for v in obj.flatten().tolist()]
    if isinstance(obj, dict):
        return {k: summary(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [summary(v) for v in obj]
    return obj


def flat_tensors(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        return [t for v in batch.values() for t in flat_tensors(v)]
    if isinstance(batch, (list, tuple)):
        return [t for v in batch for t in flat_tensors(v)]
    return []


def recorder(LM: type, train: Callable[[Any], Any], val: Callable[[Any], Any] | None = None,
             step_kind: str = "batch", manual: bool = False) -> Any:
    """A module whose train (and val) loaders come from `train(module)` / `val(module)`, that
    records the hooks called (with batch_idx and the trainer's counters) and every batch seen.
    step_kind "batch": training_step(batch, batch_idx); "iter": training_step(dataloader_iter)."""

    class Recorder(LM):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.calls: list[Any] = []
            self.automatic_optimization = not manual

        def loss(self, batch: Any) -> torch.Tensor:
            tensors = flat_tensors(batch)
            xs, ys = tensors[0::2], tensors[1::2]
            return sum(torch.nn.functional.mse_loss(self.layer(x), y) for x, y in zip(xs, ys))  # type: ignore[return-value]

        def train_dataloader(self) -> Any:
            self.calls.append(("train_dataloader", self.trainer.current_epoch))
            return train(self)

        def on_train_epoch_start(self) -> None:
            self.calls.append(("on_train_epoch_start", self.trainer.current_epoch))

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            self.calls.append(("on_train_batch_start", summary(batch), batch_idx, self.trainer.is_last_batch))

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.calls.append(("on_train_batch_end", summary(batch), batch_idx, self.trainer.is_last_batch,
                               self.trainer.global_step))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
            self.calls.append(("predict_step", batch_idx, dataloader_idx))
            return self.loss(batch)

        def step_on(self, batch: Any) -> torch.Tensor:
            self.calls.append(("training_step", summary(batch), self.trainer.fit_loop.epoch_loop.batch_idx))
            loss = self.loss(batch)
            if manual:
                opt = self.optimizers()
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
            return loss

    if step_kind == "iter2":  # two batches per step: the epoch ends at the fetcher's end, not a count
        class Module(Recorder):
            def training_step(self, dataloader_iter: Any) -> torch.Tensor:
                first, second = next(dataloader_iter)[0], next(dataloader_iter)[0]
                return self.step_on([first, second])
    elif step_kind == "iter":
        class Module(Recorder):
            def training_step(self, dataloader_iter: Any) -> torch.Tensor:
                batch, batch_idx, dataloader_idx = next(dataloader_iter)
                self.calls.append(("fetched", batch_idx, dataloader_idx))
                return self.step_on(batch)
    else:
        class Module(Recorder):  # type: ignore[no-redef]
            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                return self.step_on(batch)

    if val is not None:
        def val_dataloader(self: Any) -> Any:
            self.calls.append(("val_dataloader", self.trainer.current_epoch, self.trainer.sanity_checking))
            return val(self)

        def validation_step(self: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.calls.append(("validation_step", summary(batch), batch_idx, dataloader_idx))
            self.log("val_loss", self.loss(batch))

        Module.val_dataloader = val_dataloader  # type: ignore[attr-defined]
        Module.validation_step = validation_step  # type: ignore[attr-defined]
    return Module


def fit(framework: str, make: Callable[[type], type], **kwargs: Any) -> tuple[dict, list, dict]:
    LM, Trainer = frameworks(framework)
    torch.manual_seed(0)
    model = make(LM)()
    trainer = Trainer(**{**QUIET, "max_epochs": 2, "num_sanity_val_steps": 0, **kwargs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
    counters = {"global_step": trainer.global_step, "epoch": trainer.current_epoch,
                "num_training_batches": trainer.num_training_batches,
                "train_dataloader": type(trainer.train_dataloader).__name__,
                "estimated_stepping_batches": trainer.estimated_stepping_batches}
    return {k: v.clone() for k, v in model.state_dict().items()}, model.calls, counters


def assert_same(make: Callable[[type], type], **kwargs: Any) -> list:
    (w1, calls1, c1), (w2, calls2, c2) = (fit(f, make, **kwargs) for f in FRAMEWORKS)
    assert calls2 == calls1
    assert c2 == c1
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    return calls1


def shuffled(n: int, seed: int, batch_size: int = 4) -> DataLoader:
    return DataLoader(random_data(n, seed), batch_size=batch_size, shuffle=True)


def several(kind: str) -> Callable[[str], Callable[[Any], Any]]:
    """train_dataloader returning several loaders, given as `kind`, under either framework."""
    def for_framework(framework: str) -> Callable[[Any], Any]:
        def train(module: Any) -> Any:
            a, b, c = shuffled(20, 1), shuffled(12, 2, batch_size=3), DataLoader(random_data(8, 3), batch_size=4)
            if kind == "list":
                return [a, b]
            if kind == "dict":
                return {"a": a, "rest": (b, c)}
            return combined_class(framework)({"a": a, "b": b}, kind)
        return train
    return for_framework


@pytest.mark.parametrize(("kind", "kwargs"), [
    ("list", {"overfit_batches": 2}),
    ("dict", {"limit_train_batches": 0.5}),
    ("min_size", {}),
    ("max_size_cycle", {"limit_train_batches": 4}),
    ("max_size", {"accumulate_grad_batches": 2}),
])
def test_several_train_loaders_as_lightning(kind: str, kwargs: dict) -> None:
    def make(framework: str) -> Callable[[type], type]:
        return lambda LM: recorder(LM, several(kind)(framework), val=lambda m: shuffled(8, 9))

    results = [fit(f, make(f), **kwargs) for f in FRAMEWORKS]
    (w1, calls1, c1), (w2, calls2, c2) = results
    assert calls2 == calls1 and c2 == c1
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert any(call[0] == "training_step" for call in calls1)


def test_lightning_combined_loader_in_our_trainer() -> None:
    """A script that keeps Lightning's CombinedLoader and switches the Trainer to mopt_fast's."""
    train = several("max_size")("lightning")
    calls = assert_same(lambda LM: recorder(LM, train))
    assert sum(call[0] == "training_step" for call in calls) == 2 * 5


def test_sequential_train_mode_is_lightning_error() -> None:
    messages = []
    for framework in FRAMEWORKS:
        make = recorder(frameworks(framework)[0], several("sequential")(framework))
        _, Trainer = frameworks(framework)
        with pytest.raises(ValueError) as info, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Trainer(**QUIET, max_epochs=1).fit(make())
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "sequential" in messages[0]


def test_train_dataloader_keeps_the_structure() -> None:
    LM, Trainer = frameworks("mopt_fast")
    model = recorder(LM, several("dict")("mopt_fast"))()
    trainer = Trainer(**QUIET, max_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
    assert set(trainer.train_dataloader) == {"a", "rest"} and isinstance(trainer.train_dataloader["rest"], tuple)


def test_distributed_sampler_per_inner_loader(monkeypatch: Any) -> None:
    """Each inner loader goes through the strategy's sampler injection (shuffling by default), as
    Lightning's `_process_dataloader` runs per flattened loader."""
    LM, Trainer = frameworks("mopt_fast")
    trainer = Trainer(**QUIET, max_epochs=1)
    seen: list[tuple[Any, bool]] = []

    def process_loader(loader: Any, shuffle_default: bool) -> Any:
        seen.append((loader, shuffle_default))
        return loader

    monkeypatch.setattr(trainer.strategy, "process_loader", process_loader)
    model = recorder(LM, several("dict")("mopt_fast"))()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
    loaders = trainer.train_dataloader
    assert seen == [(loaders["a"], True), (loaders["rest"][0], True), (loaders["rest"][1], True)]


# -- reload_dataloaders_every_n_epochs -----------------------------------------------------------------
def fresh_each_call(module: Any) -> DataLoader:
    """A new loader of new data at each request (its seed is the request count)."""
    n = sum(call[0] == "train_dataloader" for call in module.calls)
    return shuffled(12, 100 + n)


@pytest.mark.parametrize(("every", "check_val", "sanity"), [(1, 1, 2), (2, 1, 0), (2, 3, 2), (3, 2, 2)])
def test_reload_dataloaders_as_lightning(every: int, check_val: int, sanity: int) -> None:
    def make(LM: type) -> type:
        return recorder(LM, fresh_each_call, val=lambda m: shuffled(8, 200 + len(m.calls), batch_size=8))

    calls = assert_same(make, max_epochs=5, reload_dataloaders_every_n_epochs=every, check_val_every_n_epoch=check_val,
                        num_sanity_val_steps=sanity)
    requests = [call for call in calls if call[0] == "train_dataloader"]
    assert len(requests) == len(range(0, 5, every))


def test_reload_with_several_loaders() -> None:
    def train(module: Any) -> Any:
        n = sum(call[0] == "train_dataloader" for call in module.calls)
        return {"x": shuffled(12, n), "y": shuffled(8, 50 + n)}

    assert_same(lambda LM: recorder(LM, train), max_epochs=3, reload_dataloaders_every_n_epochs=1)


# -- the dataloader_iter training step -----------------------------------------------------------------
class Stream(IterableDataset):
    def __init__(self, n: int) -> None:
        self.data = random_data(n, 7)

    def __iter__(self) -> Any:
        for i in torch.randperm(len(self.data)).tolist():
            yield self.data[i]


@pytest.mark.parametrize(("data", "manual", "kwargs"), [
    ("sized", False, {}),
    ("sized", True, {"limit_train_batches": 3}),
    ("sized", False, {"accumulate_grad_batches": 2}),
    ("several", False, {"val_check_interval": 2}),
    ("stream", False, {}),
    ("two_per_step", False, {}),
])
def test_dataloader_iter_step_as_lightning(data: str, manual: bool, kwargs: dict) -> None:
    loaders: dict[str, Callable[[Any], Any]] = {
        "sized": lambda m: shuffled(16, 4),
        "several": lambda m: [shuffled(16, 4), shuffled(8, 5)],
        "stream": lambda m: DataLoader(Stream(14), batch_size=4),
        "two_per_step": lambda m: shuffled(16, 4),
    }

    def make(LM: type) -> type:
        return recorder(LM, loaders[data], val=lambda m: shuffled(8, 6, batch_size=8),
                        step_kind="iter2" if data == "two_per_step" else "iter", manual=manual)

    calls = assert_same(make, **kwargs)
    assert calls.count(("on_train_epoch_start", 1)) == 1
    assert any(call[0] == "training_step" for call in calls)
    # a stream ends at the StopIteration the step lets out: no end-of-epoch validation then (Lightning's)
    assert any(call[0] == "validation_step" for call in calls) == (data != "stream")


@pytest.mark.parametrize("step_kind", ["iter", "iter2"])
def test_dataloader_iter_resume_inside_an_epoch(tmp_path: Any, step_kind: str) -> None:
    """A fit resumed from a checkpoint taken inside an epoch ends with the weights of the run it
    resumes, and its steps see the batches that run's did (two per step: the fetched ones skipped)."""
    LM, Trainer = frameworks("mopt_fast")
    make = recorder(LM, lambda m: shuffled(24, 4), step_kind=step_kind)
    checkpoint = mopt_fast.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        full = make()
        Trainer(**{**QUIET, "enable_checkpointing": True}, max_epochs=2, callbacks=[checkpoint]).fit(full)
        resumed = make()
        Trainer(**QUIET, max_epochs=2).fit(resumed, ckpt_path=str(tmp_path / "epoch=0-step=2.ckpt"))
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
    steps = [call for call in full.calls if call[0] == "training_step"]
    assert [call for call in resumed.calls if call[0] == "training_step"] == steps[2:]


def eval_iter_module(LM: type, stage: str) -> type:
    """validation/test/predict_step(self, dataloader_iter), recording its batch hooks."""
    base = recorder(LM, lambda m: shuffled(8, 1), val=lambda m: None)

    class Module(base):  # type: ignore[valid-type, misc]
        def iter_step(self, dataloader_iter: Any) -> Any:
            batch, batch_idx, dataloader_idx = next(dataloader_iter)
            loss = self.loss(batch)
            self.calls.append((f"{stage}_step", summary(batch), batch_idx, dataloader_idx))
            if stage != "predict":
                self.log(f"{stage}_loss", loss)
            return loss

        def hook(self, name: str, *args: Any) -> None:
            self.calls.append((name, *[summary(a) for a in args]))

    setattr(Module, f"{stage}_step" if stage != "validation" else "validation_step", Module.iter_step)
    for when in ("start", "end"):
        name = f"on_{stage}_batch_{when}"

        def record(self: Any, *args: Any, _name: str = name) -> None:
            self.hook(_name, *args)

        setattr(Module, name, record)
    return Module


@pytest.mark.parametrize(("entry", "n_loaders"), [("validate", 1), ("validate", 2), ("test", 2), ("predict", 2),
                                                  ("fit", 2)])
def test_dataloader_iter_evaluation_steps_as_lightning(entry: str, n_loaders: int) -> None:
    stage = {"validate": "validation", "fit": "validation"}.get(entry, entry)
    out = []
    for framework in FRAMEWORKS:
        LM, Trainer = frameworks(framework)
        torch.manual_seed(0)
        model = eval_iter_module(LM, stage)()
        loaders = [DataLoader(random_data(10, 2 + i), batch_size=4) for i in range(n_loaders)]
        trainer = Trainer(**QUIET, limit_val_batches=2, max_epochs=1, num_sanity_val_steps=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if entry == "fit":
                trainer.fit(model, shuffled(8, 1), loaders)
                result: Any = summary(trainer.callback_metrics)
            else:
                result = summary(getattr(trainer, entry)(model, loaders, **({} if entry == "predict" else
                                                                           {"verbose": False})))
        out.append((result, model.calls))
    assert out[0] == out[1]
    assert any(call[0] == f"{stage}_step" for call in out[0][1])


# -- evaluation loaders as a CombinedLoader ------------------------------------------------------------
@pytest.mark.parametrize("entry", ["validate", "predict"])
def test_sequential_combined_eval_loaders_as_lightning(entry: str) -> None:
    out = []
    for framework in FRAMEWORKS:
        LM, Trainer = frameworks(framework)
        torch.manual_seed(0)
        model = recorder(LM, lambda m: shuffled(8, 1), val=lambda m: None)()
        combined = combined_class(framework)({"a": DataLoader(random_data(8, 2), batch_size=3),
                                              "b": DataLoader(random_data(4, 3), batch_size=4)}, "sequential")
        trainer = Trainer(**QUIET, limit_val_batches=2, limit_predict_batches=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if entry == "validate":
                result = trainer.validate(model, combined, verbose=False)
            else:
                result = summary(trainer.predict(model, combined))
        out.append((result, model.calls, trainer.num_val_batches if entry == "validate" else None))
    assert out[0] == out[1]


def test_non_sequential_eval_combined_loader() -> None:
    """predict refuses a non-sequential CombinedLoader with Lightning's error (validate/test run it
    in its mode: tests/test_data_features_2.py)."""
    messages = []
    for framework in FRAMEWORKS:
        LM, Trainer = frameworks(framework)
        loaders = [DataLoader(random_data(8, 2), batch_size=3)] * 2
        with pytest.raises(ValueError) as info, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Trainer(**QUIET).predict(recorder(LM, lambda m: None)(), combined_class(framework)(loaders, "min_size"))
        messages.append(str(info.value))
    assert messages[0] == messages[1]
