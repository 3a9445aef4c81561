"""The batch-size search for validate / test / predict (``Tuner.scale_batch_size(method=...)`` and
`BatchSizeFinder` at on_validation_start / on_test_start / on_predict_start), side by side with
Lightning's on the same seed and data: the same trials (the batch size of every step), the same
size found and set, the run put back (weights, limits, callbacks, loggers, no temporary file), and
the evaluation after the search the same (its metrics, logged values, predictions). Errors too."""
from __future__ import annotations

import contextlib
import gc
import io
import os
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mopt_fast

import lightning_cases as cases
from helpers import importorskip_unless_ci

pl = importorskip_unless_ci("lightning.pytorch")
from lightning.pytorch.tuner import Tuner as LightningTuner  # noqa: E402

from mopt_fast.tuner import Tuner  # noqa: E402

FRAMEWORKS = ("lightning", "mopt_fast")
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (a test's stand-in)"
STEPS = {"validate": "validation_step", "test": "test_step", "predict": "predict_step"}


@pytest.fixture(autouse=True)
def _no_full_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both searches run gc.collect() before each trial; not what is compared."""
    monkeypatch.setattr(gc, "collect", lambda *args, **kwargs: 0)


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(8765)
    x = torch.randn(n, 8, generator=g)
    return x, x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)


def make_module(LM: type, oom_above: int | None = None, n: int = 64, in_hparams: bool = False,
                loaders: int = 1) -> type:
    """A regressor whose val / test / predict loaders come from its `batch_size` (a data set of `n`,
    `loaders` of them); `oom_above`: the evaluation steps raise a CUDA out-of-memory RuntimeError
    above that batch size. Every step records its batch size, the start/end hooks their calls."""
    x, y = _data(n)

    class Regressor(LM):
        def __init__(self, batch_size: int = 8) -> None:
            super().__init__()
            if in_hparams:
                self.save_hyperparameters()
            else:
                self.batch_size = batch_size
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 1))
            self.batch_sizes: list[int] = []
            self.hook_calls: list[str] = []

        def size(self) -> int:
            return self.hparams.batch_size if in_hparams else self.batch_size

        def _step(self, batch: Any, name: str) -> torch.Tensor:
            xb, yb = batch
            self.batch_sizes.append(len(xb))
            if oom_above is not None and len(xb) > oom_above:
                raise RuntimeError(OOM)
            out = self.net(xb)
            if name != "predict":
                self.log(f"{name}_loss", nn.functional.mse_loss(out, yb))
                self.log(f"{name}_mean", out.mean(), on_step=True, on_epoch=True)
            return out

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self._step(batch, "val")

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self._step(batch, "test")

        def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self._step(batch, "predict")

        def on_validation_start(self) -> None:
            self.hook_calls.append(f"on_validation_start:{self.training}")

        def on_test_end(self) -> None:
            self.hook_calls.append("on_test_end")

        def on_predict_start(self) -> None:
            self.hook_calls.append(f"on_predict_start:{self.training}")

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            self.hook_calls.append("on_save_checkpoint")

        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            self.hook_calls.append("on_load_checkpoint")

        def _loaders(self) -> Any:
            self.hook_calls.append(f"dataloader:{self.size()}")  # each request, as Lightning's search makes them
            made = [DataLoader(TensorDataset(x, y), batch_size=self.size()) for _ in range(loaders)]
            return made[0] if loaders == 1 else made

        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(x, y), batch_size=8)

        val_dataloader = test_dataloader = predict_dataloader = _loaders

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Regressor


def snapshot(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def files_under(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _plain(results: Any) -> Any:
    """The results of validate / test (floats) or predict (tensors, as lists) comparable with ==."""
    if isinstance(results, torch.Tensor):
        return results.tolist()
    if isinstance(results, (list, tuple)):
        return [_plain(r) for r in results]
    if isinstance(results, dict):
        return {k: _plain(v) for k, v in results.items()}
    return results


def _evaluate(trainer: Any, method: str, model: Any, **kwargs: Any) -> Any:
    return getattr(trainer, method)(model, **kwargs)


def run(framework: str, method: str, tune: Callable[[Any, Any, Any, Any], Any], case: Callable[[type], type],
        finder: Callable[[Any], Any] | None = None, eval_after: bool = True, **trainer_kwargs: Any) -> dict[str, Any]:
    """A fresh seeded module of `case` under `framework`'s Trainer (a CSVLogger and a ModelCheckpoint,
    so there is state to put back); `finder(callbacks_module)` adds a finder callback. ``tune(Tuner,
    trainer, model, finder_callback)`` runs the search; then (`eval_after`) `method` once more.
    Returns what the tests compare."""
    LM, Trainer = cases.frameworks(framework)
    tuner_cls = LightningTuner if framework == "lightning" else Tuner
    callbacks, loggers = (pl.callbacks, pl.loggers) if framework == "lightning" else (mopt_fast.callbacks,
                                                                                      mopt_fast.loggers)
    torch.manual_seed(0)
    model = case(LM)()
    root = tempfile.mkdtemp(prefix="mopt_fast_tuner_eval_")
    finder_cb = finder(callbacks) if finder is not None else None
    user_callbacks = [callbacks.ModelCheckpoint(monitor="val_loss")]
    kwargs: dict[str, Any] = dict(accelerator="cpu", logger=loggers.CSVLogger(root), enable_progress_bar=False,
                                  enable_model_summary=False, default_root_dir=root, limit_val_batches=3,
                                  callbacks=user_callbacks + ([finder_cb] if finder_cb else []))
    kwargs.update(trainer_kwargs)
    trainer = Trainer(**kwargs)
    settings = ("limit_val_batches", "limit_test_batches", "limit_predict_batches", "global_step", "current_epoch")
    before = {"weights": snapshot(model), "callbacks": list(trainer.callbacks), "loggers": list(trainer.loggers),
              **{k: getattr(trainer, k) for k in settings}}
    out: dict[str, Any] = {}
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(printed):
        warnings.simplefilter("always")
        try:
            out["result"] = _plain(tune(tuner_cls, trainer, model, finder_cb))
            out["trial_batch_sizes"] = list(model.batch_sizes)
            out["training_after_search"] = model.training
            if finder is None:  # the Tuner: the run is as before, the search's temporary checkpoint gone
                out["same_callbacks"] = [id(c) for c in trainer.callbacks] == [id(c) for c in before["callbacks"]]
                out["same_loggers"] = [id(c) for c in trainer.loggers] == [id(c) for c in before["loggers"]]
                out["settings"] = {k: getattr(trainer, k) == before[k] for k in settings}
                out["files_after_search"] = [f for f in files_under(root) if f.startswith(".")]
            if eval_after:
                model.batch_sizes.clear()
                out["eval_after"] = _plain(_evaluate(trainer, method, model))
                out["eval_batch_sizes"] = list(model.batch_sizes)
        except Exception as exc:  # the exception itself is compared
            out["error"] = (type(exc).__name__, str(exc))
    out["printed"] = printed.getvalue()  # the results tables: not the trials'
    out["warnings"] = sorted({str(w.message) for w in caught
                              if not issubclass(w.category, (DeprecationWarning, FutureWarning))})
    out["hook_calls"] = list(model.hook_calls)
    out["weights_kept"] = all(torch.equal(before["weights"][k], v) for k, v in snapshot(model).items())
    out["training"] = model.training
    loop = {"validate": trainer.validate_loop, "test": trainer.test_loop, "predict": trainer.predict_loop}[method]
    out["batches_run"] = (loop.batch_progress.total.ready, loop.batch_progress.current.ready)
    out["ckpt_path_is_the_search's"] = os.path.basename(str(trainer.ckpt_path)).startswith(".scale_batch_size_")
    out["batch_size"] = model.size()
    out["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    out["files"] = [f for f in files_under(root) if not f.endswith("hparams.yaml")]
    log_dir = trainer.logger.log_dir if trainer.logger is not None else None
    metrics_csv = os.path.join(log_dir, "metrics.csv") if log_dir else ""
    out["logged"] = open(metrics_csv).read() if os.path.exists(metrics_csv) else None
    return out


def compare(ignore: tuple[str, ...] = (), **kwargs: Any) -> dict[str, dict[str, Any]]:
    """`run` under both frameworks; everything it returns equal but what `ignore` names."""
    got = {fw: run(fw, **kwargs) for fw in FRAMEWORKS}
    theirs, ours = got["lightning"], got["mopt_fast"]
    assert ours.get("error") == theirs.get("error")
    assert ours.keys() == theirs.keys()
    for key in theirs:
        if key not in ignore:
            assert ours[key] == theirs[key], key
    return got


def _tuner(method: str, **search: Any) -> Callable[[Any, Any, Any, Any], Any]:
    def tune(tuner_cls: Any, trainer: Any, model: Any, _: Any) -> Any:
        return tuner_cls(trainer).scale_batch_size(model, method=method, **search)

    return tune


# -- Tuner.scale_batch_size(method="validate" | "test" | "predict") -------------------------------------
@pytest.mark.parametrize(("method", "mode", "oom_above", "n"), [
    ("validate", "power", None, 32), ("test", "power", 12, 64), ("predict", "power", None, 40),
    ("validate", "binsearch", 12, 64), ("test", "binsearch", None, 40), ("predict", "binsearch", 20, 64),
])
def test_scale_batch_size_for_evaluation_matches_lightning(method: str, mode: str, oom_above: int | None,
                                                           n: int) -> None:
    """The same trials and size found (at the data set's length on the CPU, or where an
    out-of-memory error stops the search); the run as before; then the same evaluation at that size."""
    got = compare(method=method, tune=_tuner(method, mode=mode, steps_per_trial=2, max_trials=6),
                  case=lambda LM: make_module(LM, oom_above=oom_above, n=n))
    ours = got["mopt_fast"]
    assert ours["result"] == ours["batch_size"] and len(set(ours["trial_batch_sizes"])) >= 3
    assert ours["same_callbacks"] and ours["same_loggers"] and all(ours["settings"].values())
    assert ours["files_after_search"] == [] and ours["weights_kept"]
    assert max(ours["eval_batch_sizes"]) == min(ours["result"], n)  # the evaluation after it at that size


def test_scale_batch_size_in_hparams_with_max_val_matches_lightning() -> None:
    """The size in hparams; binsearch caps the doubling at max_val (3, 6, then 10: not tried), less the margin (5%)."""
    got = compare(method="test", tune=_tuner("test", mode="binsearch", init_val=3, max_val=10, steps_per_trial=1),
                  case=lambda LM: make_module(LM, in_hparams=True))
    ours = got["mopt_fast"]
    assert ours["result"] == 9 and ours["trial_batch_sizes"] == [3, 6] and max(ours["eval_batch_sizes"]) == 9


def test_scale_batch_size_with_a_datamodule_matches_lightning() -> None:
    """The loaders from a data module holding the size too: both are set at each trial (Lightning's
    attribute lookup), and the data module's loader follows."""
    x, y = _data(48)

    def tune(tuner_cls: Any, trainer: Any, model: Any, _: Any) -> Any:
        base = pl.LightningDataModule if isinstance(model, pl.LightningModule) else mopt_fast.LightningDataModule

        class Data(base):  # type: ignore[misc,valid-type]
            def __init__(self) -> None:
                super().__init__()
                self.batch_size = 5

            def val_dataloader(self) -> DataLoader:
                return DataLoader(TensorDataset(x, y), batch_size=self.batch_size)

        data = Data()
        found = tuner_cls(trainer).scale_batch_size(model, datamodule=data, method="validate", steps_per_trial=1,
                                                     max_trials=8)
        return found, data.batch_size, _plain(trainer.validate(model, datamodule=data))

    got = compare(method="validate", tune=tune, case=lambda LM: make_module(LM), eval_after=False)
    # Stopped by the data module's data set's length (48), not by max_trials.
    assert got["mopt_fast"]["result"][:2] == [64, 64]
    assert got["mopt_fast"]["trial_batch_sizes"][:6] == [2, 4, 8, 16, 32, 48]


# -- BatchSizeFinder at on_validation_start / on_test_start / on_predict_start ---------------------------
@pytest.mark.parametrize(("method", "mode"), [("validate", "binsearch"), ("test", "power"), ("predict", "binsearch")])
def test_batch_size_finder_callback_in_evaluation_matches_lightning(method: str, mode: str) -> None:
    """The search at the evaluation's start, then that evaluation at the size found: the same
    results (metrics, logged values, predictions), and the same again once more."""

    def tune(tuner_cls: Any, trainer: Any, model: Any, finder_cb: Any) -> Any:
        return _evaluate(trainer, method, model), finder_cb.optimal_batch_size

    got = compare(method=method, tune=tune, case=lambda LM: make_module(LM, oom_above=12),
                  finder=lambda cbs: cbs.BatchSizeFinder(mode=mode, steps_per_trial=2, init_val=3))
    assert got["mopt_fast"]["result"][1] == got["mopt_fast"]["batch_size"]


def test_batch_size_finder_before_a_prediction_writer_matches_lightning() -> None:
    """A prediction writer sees only the prediction at the size found (not the trials'), with its
    batch indices, as Lightning's."""

    def tune(tuner_cls: Any, trainer: Any, model: Any, finder_cb: Any) -> Any:
        base = pl.callbacks.BasePredictionWriter if isinstance(model, pl.LightningModule) else \
            mopt_fast.callbacks.BasePredictionWriter

        class Writer(base):  # type: ignore[misc,valid-type]
            def __init__(self) -> None:
                super().__init__("batch_and_epoch")
                self.written: list[Any] = []

            def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: Any, batch_indices: Any,
                                   batch: Any, batch_idx: int, dataloader_idx: int) -> None:
                self.written.append(("batch", batch_idx, list(batch_indices), prediction.tolist()))

            def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
                self.written.append(("epoch", len(predictions[0]), batch_indices))

        writer = Writer()
        trainer.callbacks.append(writer)
        return _plain(trainer.predict(model)), writer.written

    got = compare(method="predict", tune=tune, case=lambda LM: make_module(LM, oom_above=20, n=48), eval_after=False,
                  finder=lambda cbs: cbs.BatchSizeFinder(steps_per_trial=1))
    written = got["mopt_fast"]["result"][1]
    assert [w[0] for w in written] == ["batch", "batch", "batch", "epoch"]  # 16, 16, 16: the size found


def test_batch_size_finder_skips_fit_validation_as_lightning() -> None:
    """Inside fit, the callback searches the train batch size only (not at the validation's start)."""

    def tune(tuner_cls: Any, trainer: Any, model: Any, finder_cb: Any) -> Any:
        trainer.fit(model)
        return finder_cb.optimal_batch_size

    # The fit's search asks for the validation loader again after on_load_checkpoint, Lightning's before
    # it (the fit search's order, not this file's subject): the other hooks compared.
    got = compare(method="validate", tune=tune, case=lambda LM: make_module(LM), ignore=("hook_calls",),
                  finder=lambda cbs: cbs.BatchSizeFinder(steps_per_trial=1, max_trials=3), max_epochs=1,
                  eval_after=False)
    hooks = {fw: [h for h in got[fw]["hook_calls"] if not h.startswith("dataloader")] for fw in FRAMEWORKS}
    assert hooks["mopt_fast"] == hooks["lightning"]
    assert hooks["mopt_fast"].count("on_validation_start:False") == 2  # the fit's sanity check and validation


# -- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["several_loaders", "several_val_loaders", "loaders_given", "fit_loaders_given", "no_attr", "method",
                                  "non_oom"])
def test_errors_match_lightning(what: str) -> None:
    def tune(tuner_cls: Any, trainer: Any, model: Any, _: Any) -> Any:
        tuner = tuner_cls(trainer)
        if what == "loaders_given":  # Lightning searches, but its loader never changes
            return tuner.scale_batch_size(model, method="validate", dataloaders=model.val_dataloader(),
                                          steps_per_trial=1)
        if what == "fit_loaders_given":
            return tuner.scale_batch_size(model, method="test", train_dataloaders=model.train_dataloader())
        if what == "no_attr":
            return tuner.scale_batch_size(model, method="predict", batch_arg_name="bs")
        if what == "several_val_loaders":
            return tuner.scale_batch_size(model, method="validate", steps_per_trial=1)
        if what == "method":
            return tuner.scale_batch_size(model, method="tune")
        return tuner.scale_batch_size(model, method="test", steps_per_trial=1)

    def case(LM: type) -> type:
        base = make_module(LM, loaders=2 if what.startswith("several") else 1)
        if what != "non_oom":
            return base

        class Failing(base):  # type: ignore[misc,valid-type]
            def test_step(self, batch: Any, batch_idx: int) -> None:
                if len(batch[0]) > 4:
                    raise RuntimeError("not a memory error")
                super().test_step(batch, batch_idx)

        return Failing

    method = {"loaders_given": "validate", "several_val_loaders": "validate", "no_attr": "predict"}.get(what, "test")
    got = compare(method=method, tune=tune, case=case, eval_after=what == "loaders_given")
    assert ("error" in got["mopt_fast"]) == (what != "loaders_given")
