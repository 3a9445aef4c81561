"""mopt_fast's own Checkpoint, LambdaCallback, GradientAccumulationScheduler, BaseFinetuning /
BackboneFinetuning, BasePredictionWriter, OnExceptionCheckpoint and RichModelSummary, each run
three ways on the same seed and data: Lightning's callback in Lightning's Trainer, ours in
mopt_fast.Trainer, and Lightning's in mopt_fast.Trainer. Same weights (bitwise), files, written
predictions, callback state, errors and messages."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from callback_helpers import files_under, plain
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mopt_fast
import mopt_fast.callbacks

import lightning_cases as cases
from helpers import importorskip_unless_ci

pl = importorskip_unless_ci("lightning.pytorch")

# (Trainer, callbacks) of each way a callback runs
WAYS = {"lightning": ("lightning", pl.callbacks), "mopt_fast": ("mopt_fast", mopt_fast.callbacks),
        "lightning_in_ours": ("mopt_fast", pl.callbacks)}
OURS_AND_LIGHTNINGS = ("lightning", "mopt_fast")
AUTOMATIC = cases.automatic()


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """One intra-op thread while these tiny models train: a batch norm's parallel kernels cost
    seconds per fit on a busy machine with more threads than free cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the modules ---------------------------------------------------------------------------------------
def without_dropout(LM: type) -> type:
    """No dropout: a resumed fit draws no random numbers, so Lightning's resume (which does not
    restore the RNG) and mopt_fast's (which does) train alike."""
    class Plain(AUTOMATIC(LM)):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    return Plain


def with_backbone(LM: type) -> type:
    """A `backbone` with a batch norm (what the finetuning callbacks freeze) and a head; the
    optimizer holds the head only."""
    class Finetuned(without_dropout(LM)):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Tanh())

        def compute_loss(self, batch: Any) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(self.backbone(x)), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.05, momentum=0.9)

    return Finetuned


def failing(LM: type) -> type:
    """Raises in the training step of epoch 1, batch 2."""
    class Failing(without_dropout(LM)):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.current_epoch == 1 and batch_idx == 2:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    return Failing


def epoch_end_metric(LM: type) -> type:
    """Logs a value in its own on_train_epoch_end (a checkpoint callback's runs after it)."""
    class EpochEndMetric(AUTOMATIC(LM)):
        def on_train_epoch_end(self) -> None:
            self.log("epoch_metric", float(self.current_epoch) * 0.5)

    return EpochEndMetric


def own_zero_grad(LM: type) -> type:
    class OwnZeroGrad(AUTOMATIC(LM)):
        def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
            optimizer.zero_grad()

    return OwnZeroGrad


def predicting(LM: type) -> type:
    class Predicting(AUTOMATIC(LM)):
        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
            return self.net(batch[0]) + dataloader_idx

    return Predicting


# -- a run ---------------------------------------------------------------------------------------------
def run(way: str, make_callbacks: Callable[[Any], list], case: Callable[[type], type] = AUTOMATIC,
        root: str | None = None, ckpt_path: str | None = None, shuffle: bool = True, stage: str = "fit",
        **trainer_kwargs: Any) -> dict[str, Any]:
    """A fresh seeded module of `case`, with the callbacks ``make_callbacks(callbacks package)`` of
    `way`, through `stage` ("fit" or "predict": two predict loaders) in `way`'s Trainer."""
    framework, package = WAYS[way]
    LM, Trainer = cases.frameworks(framework)
    torch.manual_seed(0)
    model = case(LM)()
    callbacks = make_callbacks(package)
    root = root or tempfile.mkdtemp(prefix="mopt_fast_test_")
    kwargs: dict[str, Any] = dict(accelerator="cpu", max_epochs=4, logger=False, enable_checkpointing=False,
                                  enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    kwargs.update(trainer_kwargs)
    error: BaseException | None = None
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("always")
        trainer = Trainer(callbacks=list(callbacks), **kwargs)
        try:
            if stage == "fit":
                trainer.fit(model, *cases.make_data(shuffle=shuffle), ckpt_path=ckpt_path)
            else:
                trainer.predict(model, predict_loaders(), return_predictions=False)
        except Exception as exc:  # the exception itself is compared
            error = exc
    return {"trainer": trainer, "model": model, "callbacks": callbacks, "root": root, "stdout": out.getvalue(),
            "error": error, "warnings": [str(w.message).replace(root, "<root>") for w in caught]}


def predict_loaders() -> list[DataLoader]:
    """Two loaders, the first shuffled (so the batch indices say which samples a batch holds)."""
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(20, 8, generator=g), torch.randn(20, 1, generator=g)
    shuffled = DataLoader(TensorDataset(x, y), batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(3))
    return [shuffled, DataLoader(TensorDataset(x[:9], y[:9]), batch_size=4)]


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """What every case compares: position, the callbacks and their order, files, states, the error."""
    trainer, root = r["trainer"], r["root"]
    states = {}
    for cb in r["callbacks"]:
        state = json.dumps(plain(cb.state_dict()), default=str).replace(root, "<root>")
        states[type(cb).__name__] = json.loads(state)
    error = r["error"]
    return {
        "callbacks": [type(cb).__name__ for cb in trainer.callbacks],
        "checkpoint_callbacks": [type(cb).__name__ for cb in trainer.checkpoint_callbacks],
        "global_step": trainer.global_step, "epoch": trainer.current_epoch,
        "files": files_under(root), "states": states,
        "error": None if error is None else (type(error).__name__, str(error).replace(root, "<root>")),
    }


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def compare(make_callbacks: Callable[[Any], list], extra: Callable[[dict[str, Any]], Any] = lambda r: None,
            ways: tuple[str, ...] = tuple(WAYS), **kwargs: Any) -> dict[str, dict[str, Any]]:
    """`ways` runs: the weights bitwise, `summary` and `extra(run)` equal to Lightning's."""
    got = {way: run(way, make_callbacks, **kwargs) for way in ways}
    reference = got[ways[0]]
    expected = {**summary(reference), "extra": extra(reference)}
    for way in ways[1:]:
        assert_same_weights(reference["model"], got[way]["model"])
        seen = {**summary(got[way]), "extra": extra(got[way])}
        for key in expected:
            assert seen[key] == expected[key], (way, key)
    return got


def same_error(make: Callable[[Any], Any]) -> tuple[str, str]:
    """`make(callbacks package)` raises the same exception class and message with ours and Lightning's."""
    seen = []
    for package in (pl.callbacks, mopt_fast.callbacks):
        with pytest.raises(Exception) as info:
            make(package)
        seen.append((type(info.value).__name__, str(info.value)))
    assert seen[1] == seen[0]
    return seen[0]


# -- Checkpoint --------------------------------------------------------------------------------------
def test_checkpoint_base_is_recognised_as_lightnings() -> None:
    """A Checkpoint subclass of one's own: listed in checkpoint_callbacks, moved last, no default
    ModelCheckpoint beside it, and its on_train_epoch_end after the module's (it sees the value
    the module logged there)."""
    def make(C: Any) -> list:
        class Seen(C.Checkpoint):
            def __init__(self) -> None:
                self.seen: list[Any] = []

            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                self.seen.append(plain(trainer.callback_metrics.get("epoch_metric")))

        return [Seen(), C.LambdaCallback()]

    got = compare(make, case=epoch_end_metric, max_epochs=3, enable_checkpointing=None,
                  extra=lambda r: r["callbacks"][0].seen)
    assert got["lightning"]["callbacks"][0].seen == [0.0, 0.5, 1.0]
    assert summary(got["lightning"])["callbacks"] == ["LambdaCallback", "Seen"]
    assert issubclass(mopt_fast.callbacks.ModelCheckpoint, mopt_fast.callbacks.Checkpoint)
    assert issubclass(mopt_fast.callbacks.OnExceptionCheckpoint, mopt_fast.callbacks.Checkpoint)


def test_checkpoint_callbacks_refused_without_checkpointing() -> None:
    def make(C: Any) -> Any:
        Trainer = pl.Trainer if C is pl.callbacks else mopt_fast.Trainer
        return Trainer(callbacks=[C.OnExceptionCheckpoint(tempfile.mkdtemp())], enable_checkpointing=False,
                       logger=False)

    assert "enable_checkpointing=False" in same_error(make)[1]


# -- LambdaCallback ----------------------------------------------------------------------------------
LAMBDA_HOOKS = (
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_batch_start", "on_train_batch_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end",
    "on_train_start", "on_train_end", "on_validation_start", "on_validation_end", "on_before_backward",
    "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad", "on_save_checkpoint",
    "on_load_checkpoint", "on_exception",
)


def test_lambda_callback() -> None:
    """Every hook given is called with the hook's arguments, in Lightning's order, the checkpoint
    hooks (set on the instance) included; the others are not set."""
    def make(C: Any) -> list:
        calls: list[Any] = []

        def record(name: str) -> Callable:
            def hook(trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
                calls.append((name, trainer.global_step, len(args), sorted(kwargs)))
            return hook

        cb = C.LambdaCallback(**{name: record(name) for name in LAMBDA_HOOKS})
        cb.calls = calls
        return [cb]

    got = compare(make, max_epochs=2, enable_checkpointing=None, extra=lambda r: r["callbacks"][0].calls)
    calls = got["lightning"]["callbacks"][0].calls
    assert ("on_save_checkpoint", 6, 1, []) in calls and not any(c[0] == "on_exception" for c in calls)
    ours = mopt_fast.callbacks.LambdaCallback(on_fit_end=print)
    assert "on_fit_end" in vars(ours) and "on_fit_start" not in vars(ours)


# -- GradientAccumulationScheduler ------------------------------------------------------------------------
def test_gradient_accumulation_scheduler() -> None:
    got = compare(lambda C: [C.GradientAccumulationScheduler({1: 2, 3: 4})],
                  extra=lambda r: (r["trainer"].accumulate_grad_batches, r["callbacks"][0].scheduling,
                                   r["callbacks"][0].epochs))
    trainer = got["lightning"]["trainer"]
    assert trainer.accumulate_grad_batches == 4 and trainer.global_step == 6 + 3 + 3 + 2


@pytest.mark.parametrize("scheduling", [{}, {-1: 2}, {1: 0}, {"1": 2}, {0: 1.5}], ids=str)
def test_gradient_accumulation_scheduler_arguments(scheduling: dict) -> None:
    same_error(lambda C: C.GradientAccumulationScheduler(dict(scheduling)))


@pytest.mark.parametrize("setting", ["manual_optimization", "accumulate_grad_batches"])
def test_gradient_accumulation_scheduler_refuses(setting: str) -> None:
    kwargs: dict[str, Any] = ({"case": cases.minimal} if setting == "manual_optimization"
                              else {"accumulate_grad_batches": 2})
    got = compare(lambda C: [C.GradientAccumulationScheduler({1: 2})], max_epochs=2, **kwargs)
    assert got["lightning"]["error"] is not None


def test_gradient_accumulation_scheduler_warns_about_overridden_hooks() -> None:
    def warned(r: dict[str, Any]) -> list[str]:
        return [w for w in r["warnings"] if "optimizer_{step,zero_grad}" in w]

    got = compare(lambda C: [C.GradientAccumulationScheduler({1: 2})], case=own_zero_grad, max_epochs=2,
                  extra=warned)
    assert len(warned(got["lightning"])) == 1


# -- BaseFinetuning / BackboneFinetuning -------------------------------------------------------------------
def finetuning_callback(C: Any) -> Any:
    """A BaseFinetuning of the kind its docs show; the head's lr is also split off into a group of
    its own at epoch 3 (a group the user adds, which the callback's state records too)."""
    class Finetuning(C.BaseFinetuning):
        def freeze_before_training(self, pl_module: Any) -> None:
            self.freeze(pl_module.backbone, train_bn=False)

        def finetune_function(self, pl_module: Any, current_epoch: int, optimizer: Any) -> None:
            if current_epoch == 1:
                self.unfreeze_and_add_param_group(pl_module.backbone[:2], optimizer, train_bn=False)
            if current_epoch == 2:  # the rest; the first layer again (Lightning's warning, skipped)
                self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, lr=0.02)

    return Finetuning()


# "lr": the backbone's rate triples, then quadruples, then meets the head's (aligned to it);
# "ratio": half the head's, growing by half each epoch past it (not aligned), logged to 2 digits.
BACKBONE = {"lr": dict(unfreeze_backbone_at_epoch=1, backbone_initial_lr=0.01, lambda_func=lambda epoch: epoch,
                       verbose=True),
            "ratio": dict(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.5, should_align=False,
                          lambda_func=lambda epoch: 1.5, verbose=True, rounding=2)}


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def finetuning_state(r: dict[str, Any]) -> Any:
    opt = r["trainer"].optimizers[0]
    groups = [{k: (len(v) if k == "params" else v) for k, v in g.items()} for g in opt.param_groups]
    return groups, [p.requires_grad for p in r["model"].backbone.parameters()], plain(opt.state_dict()["state"])


@pytest.mark.parametrize("name", ["BaseFinetuning", *BACKBONE])
def test_finetuning(name: str) -> None:
    """Same groups, learning rates, frozen parameters, weights and state; BackboneFinetuning's
    verbose lines (INFO, from the callback's module logger) the same."""
    make = ((lambda C: [finetuning_callback(C)]) if name == "BaseFinetuning"
            else (lambda C: [C.BackboneFinetuning(**BACKBONE[name])]))
    lines = {}

    def extra(r: dict[str, Any]) -> Any:
        return finetuning_state(r), lines[id(r["trainer"])], [w for w in r["warnings"] if "frozen" in w]

    loggers = [logging.getLogger(n) for n in ("lightning.pytorch.callbacks.finetuning", "mopt_fast.trainer.finetuning")]
    got = {}
    for way in WAYS:
        handler = LogLines()
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.addHandler(handler)
            lg.setLevel(logging.INFO)
        try:
            got[way] = run(way, make, case=with_backbone, max_epochs=4, limit_train_batches=3, limit_val_batches=0)
        finally:
            for lg, level in zip(loggers, levels):
                lg.removeHandler(handler)
                lg.setLevel(level)
        lines[id(got[way]["trainer"])] = handler.lines
    for way in ("mopt_fast", "lightning_in_ours"):
        assert_same_weights(got["lightning"]["model"], got[way]["model"])
        assert summary(got[way]) == summary(got["lightning"]), way
        assert extra(got[way]) == extra(got["lightning"]), way
    groups, trainable, _ = finetuning_state(got["lightning"])
    assert len(groups) == (3 if name == "BaseFinetuning" else 2) and all(trainable)
    if name == "BaseFinetuning":  # the warning for parameters already in the optimizer
        assert extra(got["lightning"])[2]
    else:
        expected = {"lr": "Backbone lr: 0.05", "ratio": "Current lr: 0.05, Backbone lr: 0.06"}[name]
        assert lines[id(got["lightning"]["trainer"])][-1].endswith(expected)
    assert bool(lines[id(got["lightning"]["trainer"])]) == (name != "BaseFinetuning")


@pytest.mark.parametrize("name", ["BaseFinetuning", "BackboneFinetuning"])
def test_finetuning_resumes_with_its_param_groups(name: str) -> None:
    """Stopped after epoch 1 and resumed to epoch 2: the optimizer gets back the groups the
    callback added (by parameter name) before its state is loaded; the resumed fit ends where
    Lightning's does, bitwise (no dropout, no shuffling: the RNG plays no part)."""
    make = ((lambda C: [finetuning_callback(C)]) if name == "BaseFinetuning"
            else (lambda C: [C.BackboneFinetuning(**BACKBONE["lr"])]))
    got = {}
    for way in WAYS:
        root = tempfile.mkdtemp(prefix="mopt_fast_test_")
        first = run(way, make, case=with_backbone, root=root, shuffle=False, max_epochs=2, enable_checkpointing=None,
                    limit_val_batches=0)
        assert first["error"] is None, first["error"]
        path = first["trainer"].checkpoint_callback.best_model_path
        got[way] = run(way, make, case=with_backbone, root=root, shuffle=False, enable_checkpointing=None,
                       ckpt_path=path, max_epochs=3, limit_val_batches=0)
    for way in ("mopt_fast", "lightning_in_ours"):
        assert_same_weights(got["lightning"]["model"], got[way]["model"])
        assert summary(got[way]) == summary(got["lightning"]), way
        assert finetuning_state(got[way]) == finetuning_state(got["lightning"]), way
    assert got["lightning"]["error"] is None and len(got["lightning"]["trainer"].optimizers[0].param_groups) >= 2


def listed_backbone(LM: type) -> type:
    """A `backbone` that is a list of modules, not a module."""
    class Listed(AUTOMATIC(LM)):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = [nn.Linear(8, 8)]

    return Listed


def test_backbone_finetuning_needs_a_backbone() -> None:
    got = compare(lambda C: [C.BackboneFinetuning()], case=listed_backbone, max_epochs=1)
    assert type(got["lightning"]["error"]).__name__ == "MisconfigurationException"


# -- BasePredictionWriter ---------------------------------------------------------------------------------
def writer(C: Any, interval: str) -> Any:
    """Writes each batch's and the run's predictions with their indices to files, and keeps them."""
    class Writer(C.BasePredictionWriter):
        def __init__(self) -> None:
            super().__init__(interval)
            self.folder = tempfile.mkdtemp(prefix="mopt_fast_test_")
            self.seen: list[Any] = []

        def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: Any, batch_indices: Any, batch: Any,
                               batch_idx: int, dataloader_idx: int) -> None:
            torch.save((prediction, batch_indices), os.path.join(self.folder, f"{dataloader_idx}-{batch_idx}.pt"))
            self.seen.append(("batch", plain(prediction), list(batch_indices), batch_idx, dataloader_idx,
                              plain(batch[0])))

        def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
            torch.save((predictions, batch_indices), os.path.join(self.folder, "predictions.pt"))
            self.seen.append(("epoch", plain(predictions), plain(batch_indices)))

    return Writer()


def written(r: dict[str, Any]) -> Any:
    cb = r["callbacks"][0]
    files = {name: plain(torch.load(os.path.join(cb.folder, name), weights_only=True))
             for name in sorted(os.listdir(cb.folder))}
    return cb.seen, files


@pytest.mark.parametrize("interval", ["batch", "epoch", "batch_and_epoch"])
def test_prediction_writer(interval: str) -> None:
    got = compare(lambda C: [writer(C, interval)], case=predicting, stage="predict", extra=written)
    seen, files = written(got["lightning"])
    assert len(files) == {"batch": 7, "epoch": 1, "batch_and_epoch": 8}[interval]
    first_batch = next((s for s in seen if s[0] == "batch"), None)
    assert first_batch is None or sorted(first_batch[2]) != first_batch[2]  # shuffled indices


def test_prediction_writer_arguments() -> None:
    same_error(lambda C: C.BasePredictionWriter("step"))

    class IterStep(mopt_fast.LightningModule):
        def predict_step(self, dataloader_iter: Any) -> Any:
            return None

    # (mopt_fast.Trainer itself refuses a `dataloader_iter` step first: not built, see the README)
    same_error(lambda C: C.BasePredictionWriter().setup(None, IterStep(), "predict"))
    assert mopt_fast.callbacks.BasePredictionWriter("epoch").interval == "EPOCH"  # a string enum, as Lightning's


# -- OnExceptionCheckpoint --------------------------------------------------------------------------------
def test_on_exception_checkpoint() -> None:
    """The file, at `<dirpath>/<filename>.ckpt`, holds the weights of the moment of the exception."""
    def make(C: Any) -> list:
        return [C.OnExceptionCheckpoint(os.path.join(tempfile.mkdtemp(prefix="mopt_fast_test_"), "oec"), "fail")]

    def saved(r: dict[str, Any]) -> Any:
        path = r["callbacks"][0].ckpt_path
        ckpt = torch.load(path, weights_only=True)
        return os.path.basename(path), plain(ckpt["state_dict"]), ckpt["global_step"], ckpt["epoch"]

    got = compare(make, case=failing, extra=saved, enable_checkpointing=None)
    assert got["lightning"]["error"] is not None and saved(got["lightning"])[0] == "fail.ckpt"
    same_error(lambda C: C.OnExceptionCheckpoint(".", filename=""))


def test_on_exception_checkpoint_resume() -> None:
    """The next fit resumes from the file (ckpt_path "last", with Lightning's warning) and removes
    it at teardown. Lightning's Trainer re-runs the failed batch, mopt_fast's goes on after it
    (docs/differences.md), so the weights are compared between mopt_fast's two ways only."""
    def make(folder: str) -> Callable[[Any], list]:
        return lambda C: [C.OnExceptionCheckpoint(folder)]

    got = {}
    for way in WAYS:
        folder = tempfile.mkdtemp(prefix="mopt_fast_test_")
        path = os.path.join(folder, "on_exception.ckpt")
        first = run(way, make(folder), case=failing, enable_checkpointing=None)
        assert first["error"] is not None and os.path.exists(path)
        got[way] = second = run(way, make(folder), case=without_dropout, enable_checkpointing=None)
        warned = [w for w in second["warnings"] if "last model of the previous" in w]
        got[way]["seen"] = (second["trainer"].ckpt_path == path, second["trainer"].current_epoch, second["error"],
                            os.path.exists(path), warned)
    assert got["mopt_fast"]["seen"] == got["lightning_in_ours"]["seen"] == got["lightning"]["seen"]
    assert got["lightning"]["seen"][:4] == (True, 4, None, False) and got["lightning"]["seen"][4]
    assert_same_weights(got["mopt_fast"]["model"], got["lightning_in_ours"]["model"])


def test_on_exception_checkpoint_tip_when_not_fitting() -> None:
    """validate() without a model and without ckpt_path: Lightning's warning names the on-exception
    checkpoint (used by default only when fitting). Then Lightning fails on the callback's missing
    ``best_model_path`` (AttributeError); mopt_fast says that no best checkpoint is there (ValueError)."""
    seen = {}
    for way in OURS_AND_LIGHTNINGS:
        r = run(way, lambda C: [C.OnExceptionCheckpoint(tempfile.mkdtemp(prefix="mopt_fast_test_"))], max_epochs=1,
                enable_checkpointing=None)
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("always")
            with pytest.raises((ValueError, AttributeError)):  # the checkpoint callback has no best model
                r["trainer"].validate(dataloaders=cases.make_data()[1])
        seen[way] = [str(w.message) for w in caught if "ckpt_path=None" in str(w.message)]
    assert seen["mopt_fast"] == seen["lightning"]
    assert "on-exception checkpoint" in seen["lightning"][0]


# -- RichModelSummary -------------------------------------------------------------------------------------
def with_example_input(LM: type) -> type:
    class Example(AUTOMATIC(LM)):
        def __init__(self) -> None:
            super().__init__()
            self.example_input_array = torch.randn(3, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    return Example


@pytest.mark.parametrize("kwargs", [dict(max_depth=2), dict(max_depth=-1, header_style="bold green")], ids=str)
def test_rich_model_summary(kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same table and totals, styles included (a console that writes them to stdout)."""
    import rich
    from rich.console import Console

    console = Console(force_terminal=True, color_system="standard", width=120)  # stdout when it prints
    monkeypatch.setattr(rich, "get_console", lambda: console)
    got = compare(lambda C: [C.RichModelSummary(**kwargs)], case=with_example_input, max_epochs=1,
                  extra=lambda r: r["stdout"])
    out = got["lightning"]["stdout"]
    assert "Total FLOPs" in out and "In sizes" in out and "\x1b[" in out


def test_rich_model_summary_needs_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning.pytorch.callbacks.rich_model_summary as lightnings

    monkeypatch.setattr(lightnings, "_RICH_AVAILABLE", False)
    monkeypatch.setitem(sys.modules, "rich", None)  # `import rich` fails
    assert same_error(lambda C: C.RichModelSummary())[0] == "ModuleNotFoundError"
