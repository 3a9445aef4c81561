"""`Trainer(precision="16-true" | "bf16-true" | "64-true")` and `Trainer(barebones=True)`, each run
side by side with Lightning 2.6 on the same seed: the same weights (bitwise, in the same dtype), the
same batches and default dtype inside the steps, the same errors, INFO lines and warnings."""
from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import pytest
import torch
from test_lightning_differences import INFO_LOGGER, captured_info, relevant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_cases as cases
from helpers import importorskip_unless_ci

pl = importorskip_unless_ci("lightning.pytorch")

FRAMEWORKS = ("lightning", "mopt_fast")
TRUE_PRECISIONS = {"16-true": torch.float16, "bf16-true": torch.bfloat16, "64-true": torch.float64}


def data(n: int = 48) -> tuple[DataLoader, DataLoader]:
    """Float features, integer class labels (which the precisions must leave as they are)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return (DataLoader(TensorDataset(x, y), batch_size=12, shuffle=True),
            DataLoader(TensorDataset(x[:24], y[:24]), batch_size=12))


def classifier(LM: type, **extra: Any) -> type:
    """A small classifier that records, in each step, the dtypes of its batch and the default dtype."""

    class Classifier(LM):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
            self.seen: list[tuple[str, torch.dtype, torch.dtype, torch.dtype]] = []

        def step(self, stage: str, batch: Any) -> torch.Tensor:
            x, y = batch
            made = torch.zeros(1)  # a tensor made in the forward: the default dtype
            self.seen.append((stage, x.dtype, y.dtype, made.dtype))
            loss = nn.functional.cross_entropy(self.net(x).float(), y)
            self.log(f"{stage}_loss", loss)
            return loss

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.step("train", batch)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.step("val", batch)

        def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.seen.append(("predict", batch[0].dtype, batch[1].dtype, torch.zeros(1).dtype))
            return self.net(batch[0])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    for name, value in extra.items():
        setattr(Classifier, name, value)
    return Classifier


def trainer_kwargs(**kwargs: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=tempfile.mkdtemp(prefix="mopt_fast_test_"))
    base.update(kwargs)
    return base


def fit_and_predict(framework: str, precision: str, **kwargs: Any) -> dict[str, Any]:
    LM, Trainer = cases.frameworks(framework)
    torch.manual_seed(0)
    model = classifier(LM)()
    train, val = data()
    trainer = Trainer(**trainer_kwargs(precision=precision, **kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train, val)
        predictions = trainer.predict(model, val)
    return {"state": model.state_dict(), "seen": model.seen, "predictions": predictions,
            "metrics": dict(trainer.callback_metrics), "default_dtype": torch.get_default_dtype()}


def close(got: torch.Tensor, expected: torch.Tensor, name: str) -> bool:
    """Equal to within a unit in the last place of `expected`'s dtype (for floats of any dtype)."""
    eps = torch.finfo(expected.dtype).eps if expected.is_floating_point() else 0.0
    torch.testing.assert_close(got, expected, rtol=2 * eps, atol=eps, msg=name)
    return True


@pytest.mark.parametrize("precision", sorted(TRUE_PRECISIONS))
@pytest.mark.parametrize("clip", [None, "norm"])
def test_true_precision_trains_as_lightning(precision: str, clip: str | None) -> None:
    dtype = TRUE_PRECISIONS[precision]
    extra = dict(gradient_clip_val=0.5, gradient_clip_algorithm=clip) if clip else {}
    theirs, ours = (fit_and_predict(fw, precision, **extra) for fw in FRAMEWORKS)
    assert {p.dtype for p in ours["state"].values()} == {dtype}
    for name, value in theirs["state"].items():
        assert ours["state"][name].dtype == value.dtype, name
        if clip is None:
            assert torch.equal(ours["state"][name], value), name
        else:  # the norm's last bits differ (see test_trainer_vs_lightning.py): a unit in the last place
            close(ours["state"][name], value, name)
    # Floating inputs cast, integer labels kept, tensors made in the step in the precision's dtype.
    assert ours["seen"] == theirs["seen"]
    assert {s[1:] for s in ours["seen"]} == {(dtype, torch.int64, dtype)}
    for a, b in zip(ours["predictions"], theirs["predictions"], strict=True):
        assert a.dtype == b.dtype == dtype
        assert torch.equal(a, b) if clip is None else close(a, b, "predictions")
    assert ours["metrics"].keys() == theirs["metrics"].keys()
    for key, value in theirs["metrics"].items():
        assert torch.equal(ours["metrics"][key], value) if clip is None else close(ours["metrics"][key], value, key)
    assert ours["default_dtype"] == torch.float32  # restored after the forward


@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
def test_true_precision_init_module_and_configure_model_as_lightning(precision: str) -> None:
    dtype = TRUE_PRECISIONS[precision]

    def configure_model(self: Any) -> None:
        if not hasattr(self, "late"):
            self.late = nn.Linear(3, 3)

    for framework in FRAMEWORKS:
        LM, Trainer = cases.frameworks(framework)
        trainer = Trainer(**trainer_kwargs(precision=precision, max_epochs=1))
        with trainer.init_module():
            torch.manual_seed(0)
            model = classifier(LM, configure_model=configure_model)()
        assert {p.dtype for p in model.parameters()} == {dtype}, framework
        assert torch.get_default_dtype() == torch.float32
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, data()[0])
        assert model.late.weight.dtype == dtype, framework


def test_true_precision_casts_before_the_batch_transfer_hooks_as_lightning() -> None:
    """Lightning casts the batch before `on_before_batch_transfer`: the hook sees the cast batch."""
    def on_before_batch_transfer(self: Any, batch: Any, dataloader_idx: int) -> Any:
        self.seen.append(("hook", batch[0].dtype, batch[1].dtype, torch.get_default_dtype()))
        return batch

    seen = {}
    for framework in FRAMEWORKS:
        LM, Trainer = cases.frameworks(framework)
        torch.manual_seed(0)
        model = classifier(LM, on_before_batch_transfer=on_before_batch_transfer)()
        trainer = Trainer(**trainer_kwargs(precision="bf16-true", max_epochs=1, limit_train_batches=2,
                                           limit_val_batches=1, num_sanity_val_steps=0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, *data())
        seen[framework] = model.seen
    assert seen["mopt_fast"] == seen["lightning"]
    assert seen["mopt_fast"][0] == ("hook", torch.bfloat16, torch.int64, torch.float32)


def test_true_precision_names_as_lightning() -> None:
    for spelling, name in (("64", "64-true"), (64, "64-true"), ("16-true", "16-true"), ("bf16-true", "bf16-true")):
        ours = cases.frameworks("mopt_fast")[1](**trainer_kwargs(precision=spelling))
        theirs = cases.frameworks("lightning")[1](**trainer_kwargs(precision=spelling))
        assert ours.precision == theirs.precision == name
        # Lightning's callbacks read the plugin's class.
        assert type(theirs.precision_plugin).__name__ in {c.__name__ for c in type(ours.precision_plugin).__mro__}


# -- barebones --------------------------------------------------------------------------------------
BAREBONES_REFUSED = [
    dict(enable_checkpointing=True), dict(logger=True), dict(logger=0), dict(enable_progress_bar=True), dict(log_every_n_steps=1),
    dict(enable_model_summary=True), dict(num_sanity_val_steps=2), dict(fast_dev_run=True), dict(fast_dev_run=1),
    dict(detect_anomaly=True), dict(profiler="simple"),
]


@pytest.mark.parametrize("given", BAREBONES_REFUSED, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_barebones_refuses_what_it_turns_off_as_lightning(given: dict[str, Any]) -> None:
    messages = {}
    for framework in FRAMEWORKS:
        with pytest.raises(ValueError) as caught:
            cases.frameworks(framework)[1](accelerator="cpu", barebones=True, **given)
        messages[framework] = str(caught.value)
    assert messages["mopt_fast"] == messages["lightning"]


@pytest.mark.parametrize("given", [dict(fast_dev_run=0), dict(fast_dev_run=False), dict(logger=None),
                                   dict(logger=False), dict(log_every_n_steps=0), dict(enable_checkpointing=False),
                                   dict(num_sanity_val_steps=None), dict(detect_anomaly=False)],
                         ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_barebones_accepts_the_off_values_as_lightning(given: dict[str, Any]) -> None:
    for framework in FRAMEWORKS:
        trainer = cases.frameworks(framework)[1](accelerator="cpu", barebones=True, **given)
        assert trainer.barebones and trainer.loggers == [] and trainer.checkpoint_callback is None, framework


def barebones_run(framework: str, root: str) -> dict[str, Any]:
    LM, Trainer = cases.frameworks(framework)
    torch.manual_seed(0)
    model = classifier(LM)()
    with captured_info(INFO_LOGGER[framework]) as lines, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The opt-outs may also be given at their off values.
        trainer = Trainer(accelerator="cpu", max_epochs=2, barebones=True, default_root_dir=root, logger=False,
                          num_sanity_val_steps=0, log_every_n_steps=0)
        trainer.fit(model, *data())
    return {"state": model.state_dict(), "lines": list(lines), "warnings": relevant(caught),
            "files": sorted(os.listdir(root)) if os.path.exists(root) else [], "logged": dict(trainer.callback_metrics), "trainer": trainer}


def test_barebones_fit_as_lightning(tmp_path) -> None:
    theirs, ours = (barebones_run(fw, str(tmp_path / fw)) for fw in FRAMEWORKS)
    for name, value in theirs["state"].items():
        assert torch.equal(ours["state"][name], value), name
    assert ours["lines"] == theirs["lines"]
    assert any("barebones=True)` mode" in line for line in ours["lines"])
    assert any("barebones=True)` started running" in line for line in ours["lines"])
    log_warnings = [w for w in theirs["warnings"] if "barebones" in w[1]]
    assert log_warnings and [w for w in ours["warnings"] if "barebones" in w[1]] == log_warnings
    assert ours["files"] == theirs["files"] == []  # no checkpoint, no log folder
    assert ours["logged"] == theirs["logged"] == {}  # self.log dropped
    for attribute in ("barebones", "log_every_n_steps", "num_sanity_val_steps", "checkpoint_callback", "loggers",
                      "progress_bar_callback"):
        assert getattr(ours["trainer"], attribute) == getattr(theirs["trainer"], attribute), attribute
