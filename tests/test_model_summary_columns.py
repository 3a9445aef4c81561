"""The ModelSummary table, side by side with Lightning 2.6's: the same columns (Mode, FLOPs, In /
Out sizes), rows ("other params"), totals and size estimate at each precision, the same warnings,
and `summarize` overrides called with Lightning's arguments. Also Lightning's own ModelSummary
utility run on a mopt_fast module (it moves ``example_input_array`` with the batch-transfer hooks)."""
from __future__ import annotations

import logging
import warnings
from typing import Any

import pytest
import torch

import mopt_fast

import lightning_cases as cases
from helpers import importorskip_unless_ci

pl = importorskip_unless_ci("lightning.pytorch")

FRAMEWORKS = ("lightning", "mopt_fast")
LOGGERS = {"lightning": "lightning.pytorch", "mopt_fast": "mopt_fast.trainer"}


def summarized(LM: type, example: str = "tensor") -> type:
    """A module with what the table shows: nested layers, a layer in eval mode, a frozen one that
    the forward skips (sizes "?"), a parameter outside any layer ("other params"), and an example
    input (a tensor, a tuple of two, or a dict), or none."""

    class Summarized(LM):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(),
                                           torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Tanh()))
            self.head = torch.nn.Linear(16, 1)
            self.norm = torch.nn.BatchNorm1d(8)
            self.norm.eval()
            self.frozen = torch.nn.Linear(3, 3).requires_grad_(False)
            self.scale = torch.nn.Parameter(torch.randn(5))
            g = torch.Generator().manual_seed(7)
            if example == "tensor":
                self.example_input_array = torch.randn(4, 8, generator=g)
            elif example == "tuple":
                self.example_input_array = (torch.randn(4, 8, generator=g), torch.randn(4, 1, generator=g))
            elif example == "dict":
                self.example_input_array = {"x": torch.randn(4, 8, generator=g)}

        def forward(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
            out = self.head(self.net(self.norm(x)))
            return out if shift is None else out + shift

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return torch.nn.functional.mse_loss(self(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Summarized


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def fit_with_summary(framework: str, callback: Any, example: str = "tensor", **trainer_kwargs: Any) -> tuple:
    """One step of fit with `callback`; (the logged summary tables, the summary warnings)."""
    LM, Trainer = cases.frameworks(framework)
    torch.manual_seed(0)
    model = summarized(LM, example)()
    capture = Capture()
    logger = logging.getLogger(LOGGERS[framework])
    logger.addHandler(capture)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                          enable_checkpointing=False, callbacks=[callback], **trainer_kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(model, cases.make_data()[0])
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
    tables = [m for m in capture.messages if "Trainable params" in m]
    return tables, sorted({str(w.message) for w in caught if "summary" in str(w.message)})


def callbacks_module(framework: str) -> Any:
    return pl.callbacks if framework == "lightning" else mopt_fast.callbacks


@pytest.mark.parametrize("max_depth", [0, 1, 2, -1])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_table_matches_lightning(max_depth: int, precision: str) -> None:
    got = {fw: fit_with_summary(fw, callbacks_module(fw).ModelSummary(max_depth=max_depth), precision=precision)
           for fw in FRAMEWORKS}
    assert got["mopt_fast"] == got["lightning"]
    tables, warned = got["mopt_fast"]
    if max_depth == 0:
        assert tables == []
        return
    assert len(tables) == 1
    assert "FLOPs" in tables[0] and "In sizes" in tables[0]
    # the parameter outside the layers shows as its own row only when the layers shown hold fewer
    # parameters than the module (nested layers shown count theirs twice)
    assert ("other params" in tables[0]) == (max_depth == 1)
    assert "Total Flops" in tables[0] and "Modules in eval mode" in tables[0]
    assert bool(warned) == (precision == "bf16-mixed")  # the size estimate falls back to 32 bits there


@pytest.mark.parametrize("example", ["none", "tuple", "dict"])
def test_table_matches_lightning_for_each_example_input(example: str) -> None:
    got = {fw: fit_with_summary(fw, callbacks_module(fw).ModelSummary(max_depth=-1), example=example)
           for fw in FRAMEWORKS}
    assert got["mopt_fast"] == got["lightning"]
    assert ("In sizes" in got["mopt_fast"][0][0]) == (example != "none")


def summarize_calls(fw: str) -> list:
    """The arguments a ModelSummary subclass's `summarize` override gets."""
    calls: list = []

    class Recording(callbacks_module(fw).ModelSummary):  # type: ignore[misc, name-defined]
        @staticmethod
        def summarize(summary_data: Any, total_parameters: int, trainable_parameters: int, model_size: float,
                      total_training_modes: dict, total_flops: int = -1, **summarize_kwargs: Any) -> None:
            calls.append((summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                          total_flops, summarize_kwargs))

    fit_with_summary(fw, Recording(max_depth=2, extra="kept"))
    return calls


def test_summarize_override_gets_lightnings_arguments() -> None:
    calls = {fw: summarize_calls(fw) for fw in FRAMEWORKS}
    assert len(calls["mopt_fast"]) == 1
    assert calls["mopt_fast"] == calls["lightning"]
    data, *_, flops, kwargs = calls["mopt_fast"][0]
    assert [header for header, _ in data] == [" ", "Name", "Type", "Params", "Mode", "FLOPs", "In sizes", "Out sizes"]
    assert flops > 0 and kwargs == {"extra": "kept"}


@pytest.mark.parametrize("max_depth", [1, -1])
def test_lightnings_summary_utility_on_our_module(max_depth: int) -> None:
    """Lightning's ``utilities.model_summary.ModelSummary`` on a mopt_fast module with an example
    input (it calls ``_on_before_batch_transfer`` / ``_apply_batch_transfer_handler``), with and
    without a Trainer attached; and ours (`Summary`) on Lightning's module: the same table."""
    from lightning.pytorch.utilities.model_summary import ModelSummary as LightningSummary

    from mopt_fast.callbacks.model_summary import Summary

    tables = {}
    for fw in FRAMEWORKS:
        LM, _ = cases.frameworks(fw)
        torch.manual_seed(0)
        tables[fw] = str(LightningSummary(summarized(LM)(), max_depth=max_depth))
    assert tables["mopt_fast"] == tables["lightning"]
    torch.manual_seed(0)
    assert str(Summary(summarized(pl.LightningModule)(), max_depth=max_depth)) == tables["lightning"]
    # attached to a Trainer after fit: the hooks run through it
    torch.manual_seed(0)
    model = summarized(mopt_fast.LightningModule)()
    trainer = mopt_fast.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                                enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, cases.make_data()[0])
    assert "[4, 8]" in str(LightningSummary(model, max_depth=max_depth))


def hooked_summary(fw: str) -> tuple[str, list[str]]:
    """Lightning's summary of a module whose batch-transfer hooks turn the example into a dict."""
    from lightning.pytorch.utilities.model_summary import ModelSummary as LightningSummary

    LM, _ = cases.frameworks(fw)
    seen: list[str] = []

    class Hooked(summarized(LM)):  # type: ignore[misc]
        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            seen.append(f"before:{dataloader_idx}")
            return {"x": batch}

        def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
            seen.append(f"transfer:{device}")
            return {k: v.to(device) for k, v in batch.items()}

        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            seen.append("after")
            return batch

    torch.manual_seed(0)
    return str(LightningSummary(Hooked(), max_depth=1)), seen


def test_summary_moves_the_example_through_the_transfer_hooks() -> None:
    """A module whose forward takes its own batch type: the example input reaches it through
    on_before_batch_transfer / transfer_batch_to_device / on_after_batch_transfer, in both."""
    got = {fw: hooked_summary(fw) for fw in FRAMEWORKS}
    assert got["mopt_fast"] == got["lightning"]
    assert got["mopt_fast"][1] == ["before:0", "transfer:cpu", "after"]
