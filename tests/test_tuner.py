"""The Tuner (`mopt_fast.tuner.Tuner`: lr_find, scale_batch_size) and its callbacks
(`mopt_fast.callbacks.LearningRateFinder`, `BatchSizeFinder`), side by side with Lightning's on the
same seed and data: the same learning rates and losses, suggestion, batch-size trials and result,
the run put back as it was (weights, Trainer settings, no temporary file), and the fit after the
search bitwise the same, logged values and checkpoints included. Errors and warnings compared too."""
from __future__ import annotations

import contextlib
import gc
import io
import os
import sys
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
from mopt_fast.tuner.lr_finder import _LRFinder  # noqa: E402

FRAMEWORKS = ("lightning", "mopt_fast")
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (a test's stand-in)"


@pytest.fixture(autouse=True)
def _no_full_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both batch-size searches run gc.collect() before each trial (half a second each with
    Lightning's modules loaded); not what is compared."""
    monkeypatch.setattr(gc, "collect", lambda *args, **kwargs: 0)


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4321)
    x = torch.randn(n, 8, generator=g)
    return x, x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)


X, Y = _data(64)


def make_module(LM: type, lr_at: str = "attr", oom_above: int | None = None, n: int = 64,
                optimizers: int = 1) -> type:
    """A regressor whose loaders come from its `batch_size` (and data set size `n`), its learning
    rate held at `lr_at` ("attr": ``self.lr``, "hparams": ``hparams.lr``, "other": ``self.my_lr``);
    `oom_above`: training_step raises a CUDA out-of-memory RuntimeError above that batch size."""
    x, y = X[:n], Y[:n]

    class Regressor(LM):
        def __init__(self, lr: float = 0.01, batch_size: int = 8) -> None:
            super().__init__()
            if lr_at in ("hparams", "both"):
                self.save_hyperparameters()
            if lr_at != "hparams":  # "both": the attributes too (Lightning reads hparams, sets both)
                setattr(self, "my_lr" if lr_at == "other" else "lr", lr)
                self.batch_size = batch_size
            self.hook_calls: list[str] = []  # on_fit_end and teardown: the Tuner's fit ends without the first
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 1))
            self.batch_sizes: list[int] = []  # every training batch's size, trials included
            if optimizers == 2:  # several optimizers: manual optimization (the finder refuses them)
                self.automatic_optimization = False

        def current_lr(self) -> float:
            return {"hparams": lambda: self.hparams.lr, "both": lambda: self.hparams.lr, "attr": lambda: self.lr,
                    "other": lambda: self.my_lr}[lr_at]()

        def on_fit_end(self) -> None:
            self.hook_calls.append("on_fit_end")

        def teardown(self, stage: str) -> None:
            self.hook_calls.append("teardown")

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            xb, yb = batch
            self.batch_sizes.append(len(xb))
            if oom_above is not None and len(xb) > oom_above:
                raise RuntimeError(OOM)
            loss = nn.functional.mse_loss(self.net(xb), yb)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            xb, yb = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(xb), yb))

        def train_dataloader(self) -> DataLoader:
            size = self.hparams.batch_size if lr_at == "hparams" else self.batch_size  # "both": the attribute
            return DataLoader(TensorDataset(x, y), batch_size=size, shuffle=True)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)

        def configure_optimizers(self) -> Any:
            opt = torch.optim.Adam(self.net.parameters(), lr=self.current_lr())
            if optimizers == 2:
                return [opt, torch.optim.SGD(self.net.parameters(), lr=0.1)]
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)]

    return Regressor


def kit(framework: str) -> Any:
    """(Tuner, callbacks module, loggers module) of `framework`."""
    if framework == "lightning":
        return LightningTuner, pl.callbacks, pl.loggers
    return Tuner, mopt_fast.callbacks, mopt_fast.loggers


def snapshot(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def files_under(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def run(framework: str, tune: Callable[[Any, Any, Any, Any], Any], case: Callable[[type], type],
        finder: Callable[[Any], Any] | None = None, fit_after: bool = True, **trainer_kwargs: Any) -> dict[str, Any]:
    """A fresh seeded module of `case` under `framework`'s Trainer (a ModelCheckpoint, EarlyStopping
    and a CSVLogger, so there is state to put back); `finder(callbacks_module)` adds a finder callback
    to it. ``tune(Tuner, trainer, model, finder_callback)`` runs the search; then (`fit_after`) a
    fit. Returns what the tests compare."""
    LM, Trainer = cases.frameworks(framework)
    tuner_cls, callbacks, loggers = kit(framework)
    torch.manual_seed(0)
    model = case(LM)()
    root = tempfile.mkdtemp(prefix="mopt_fast_tuner_")
    finder_cb = finder(callbacks) if finder is not None else None
    user_callbacks = [callbacks.ModelCheckpoint(monitor="val_loss"), callbacks.EarlyStopping("val_loss", patience=5)]
    kwargs: dict[str, Any] = dict(accelerator="cpu", max_epochs=2, logger=loggers.CSVLogger(root),
                                  enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                                  log_every_n_steps=2, callbacks=user_callbacks + ([finder_cb] if finder_cb else []))
    kwargs.update(trainer_kwargs)
    trainer = Trainer(**kwargs)
    settings = ("max_steps", "max_epochs", "limit_train_batches", "limit_val_batches", "global_step", "current_epoch")
    before = {"weights": snapshot(model), "callbacks": list(trainer.callbacks), "loggers": list(trainer.loggers),
              **{k: getattr(trainer, k) for k in settings}}
    out: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("always")
        try:
            out["result"] = tune(tuner_cls, trainer, model, finder_cb)
            out["trial_batch_sizes"] = list(model.batch_sizes)
            if finder is None:  # the Tuner: the run is as before, the search's temporary checkpoint gone
                out["weights_restored"] = all(torch.equal(before["weights"][k], v) for k, v in snapshot(model).items())
                out["same_callbacks"] = [id(c) for c in trainer.callbacks] == [id(c) for c in before["callbacks"]]
                out["same_loggers"] = [id(c) for c in trainer.loggers] == [id(c) for c in before["loggers"]]
                out["settings"] = {k: getattr(trainer, k) == before[k] for k in settings}
                out["files_after_search"] = [f for f in files_under(root) if f.startswith(".")]
            if fit_after:
                model.batch_sizes.clear()
                trainer.fit(model)
                out["fit_batch_sizes"] = list(model.batch_sizes)
        except Exception as exc:  # the exception itself is compared
            out["error"] = (type(exc).__name__, str(exc))
    # The user-facing warnings (not torch's deprecations that Lightning's internals trigger).
    out["warnings"] = sorted({str(w.message) for w in caught
                              if not issubclass(w.category, (DeprecationWarning, FutureWarning))})
    out["hook_calls"] = list(model.hook_calls)
    out["weights"] = snapshot(model)
    out["lr"] = model.current_lr()
    out["batch_size"] = model.hparams.batch_size if "batch_size" in model.hparams else getattr(model, "batch_size", None)
    out["global_step"], out["epoch"] = trainer.global_step, trainer.current_epoch
    out["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    out["files"] = files_under(root)
    log_dir = trainer.logger.log_dir if trainer.logger is not None else None
    metrics_csv = os.path.join(log_dir, "metrics.csv") if log_dir else ""
    out["logged"] = open(metrics_csv).read() if os.path.exists(metrics_csv) else None
    out["finder_cb"] = finder_cb
    return out


def compare(ignore: tuple[str, ...] = (), **kwargs: Any) -> dict[str, dict[str, Any]]:
    """`run` under both frameworks; everything it returns equal but the results (the tests compare
    those) and what `ignore` names."""
    got = {fw: run(fw, **kwargs) for fw in FRAMEWORKS}
    theirs, ours = got["lightning"], got["mopt_fast"]
    for key in theirs:
        if key in ("weights", "result", "finder_cb", *ignore):
            continue
        assert ours[key] == theirs[key], key
    assert theirs["weights"].keys() == ours["weights"].keys()
    for name in theirs["weights"]:
        assert torch.equal(theirs["weights"][name], ours["weights"][name]), name
    return got


def lr_results(finder: Any) -> dict[str, Any]:
    return {"lr": finder.results["lr"], "loss": finder.results["loss"], "suggestion": finder.suggestion(),
            "suggestion_5_2": finder.suggestion(skip_begin=5, skip_end=2), "mode": finder.mode}


# -- Tuner.lr_find --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("lr_at", "mode", "accumulate"), [
    ("attr", "exponential", 1), ("hparams", "linear", 1), ("other", "exponential", 2),
])
def test_lr_find_matches_lightning(lr_at: str, mode: str, accumulate: int) -> None:
    """Same rates, losses and suggestion; the suggestion set where the module holds its rate; the
    run as before; then the same fit."""
    attr = "my_lr" if lr_at == "other" else ""

    def tune(tuner_cls: Any, trainer: Any, model: Any, _: Any) -> Any:
        return tuner_cls(trainer).lr_find(model, min_lr=1e-5, num_training=24, mode=mode, attr_name=attr)

    got = compare(tune=tune, case=lambda LM: make_module(LM, lr_at), accumulate_grad_batches=accumulate)
    theirs, ours = (lr_results(got[fw]["result"]) for fw in FRAMEWORKS)
    assert ours == theirs
    assert len(theirs["lr"]) >= 8 and (theirs["suggestion"] is not None or accumulate > 1)
    mine = got["mopt_fast"]
    assert mine["weights_restored"] and mine["same_callbacks"] and mine["same_loggers"]
    assert all(mine["settings"].values()) and mine["files_after_search"] == []
    if theirs["suggestion"] is not None:
        assert mine["lr"] == theirs["suggestion"]


def test_lr_find_early_stop_and_no_update() -> None:
    """A diverging loss stops the search early (same steps); update_attr=False leaves the rate."""

    def tune(tuner_cls: Any, trainer: Any, model: Any, _: Any) -> Any:
        return tuner_cls(trainer).lr_find(model, min_lr=1e-4, max_lr=50.0, num_training=40, early_stop_threshold=1.5,
                                          update_attr=False)

    got = compare(tune=tune, case=lambda LM: make_module(LM), fit_after=False, max_epochs=6)
    assert lr_results(got["mopt_fast"]["result"]) == lr_results(got["lightning"]["result"])
    assert len(got["lightning"]["result"].results["lr"]) < 40
    assert got["mopt_fast"]["lr"] == 0.01


def test_learning_rate_finder_callback_matches_lightning() -> None:
    """In the Trainer's callbacks: the search at the fit's start, then the fit with the suggestion."""

    def tune(tuner_cls: Any, trainer: Any, model: Any, finder_cb: Any) -> Any:
        trainer.fit(model)
        return finder_cb.optimal_lr

    got = compare(tune=tune, case=lambda LM: make_module(LM), fit_after=False,
                  finder=lambda cbs: cbs.LearningRateFinder(min_lr=1e-5, num_training_steps=20))
    assert lr_results(got["mopt_fast"]["result"]) == lr_results(got["lightning"]["result"])
    assert got["mopt_fast"]["lr"] == got["lightning"]["result"].suggestion()


# -- Tuner.scale_batch_size ---------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "oom_above", "n"), [
    ("power", None, 32), ("power", 12, 64), ("binsearch", None, 40), ("binsearch", 12, 64),
])
def test_scale_batch_size_matches_lightning(mode: str, oom_above: int | None, n: int) -> None:
    """The same trials (the batch size of every training step), the same size found and set; on
    the CPU the search ends at the data set's length, or, with an out-of-memory error raised above
    a size, where Lightning's ends; the run as before; then the same fit."""

    def tune(tuner_cls: Any, trainer: Any, model: Any, _: Any) -> Any:
        return tuner_cls(trainer).scale_batch_size(model, mode=mode, steps_per_trial=2, max_trials=6)

    got = compare(tune=tune, case=lambda LM: make_module(LM, oom_above=oom_above, n=n))
    theirs, ours = got["lightning"], got["mopt_fast"]
    assert ours["result"] == theirs["result"] and ours["batch_size"] == theirs["result"]
    assert len(set(theirs["trial_batch_sizes"])) >= 3  # several sizes tried
    assert ours["weights_restored"] and ours["same_callbacks"] and ours["same_loggers"]
    assert all(ours["settings"].values()) and ours["files_after_search"] == []
    assert ours["hook_calls"] == ["teardown", "on_fit_end", "teardown"]  # the search's fit, then the fit


def test_batch_size_finder_callback_matches_lightning() -> None:
    """In the Trainer's callbacks (binsearch, an out-of-memory size, the size both an attribute and
    in hparams, with Lightning's warning): the search at the fit's start, then the fit at the size
    found."""

    def tune(tuner_cls: Any, trainer: Any, model: Any, finder_cb: Any) -> Any:
        trainer.fit(model)
        return finder_cb.optimal_batch_size

    got = compare(tune=tune, case=lambda LM: make_module(LM, lr_at="both", oom_above=12), fit_after=False,
                  finder=lambda cbs: cbs.BatchSizeFinder(mode="binsearch", steps_per_trial=2, init_val=4))
    assert got["mopt_fast"]["result"] == got["lightning"]["result"] == got["mopt_fast"]["batch_size"]
    assert any("mutually exclusive" in w for w in got["mopt_fast"]["warnings"])


def test_scale_batch_size_with_loaders_given_to_fit_is_refused_as_lightning() -> None:
    def tune(tuner_cls: Any, trainer: Any, model: Any, _: Any) -> Any:
        return tuner_cls(trainer).scale_batch_size(model, train_dataloaders=model.train_dataloader())

    got = compare(tune=tune, case=lambda LM: make_module(LM), fit_after=False)
    assert "dataloaders passed directly" in got["mopt_fast"]["error"][1]


def test_non_oom_error_in_a_trial_propagates_as_lightning() -> None:
    def case(LM: type) -> type:
        class Failing(make_module(LM)):
            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                if len(batch[0]) > 4:
                    raise RuntimeError("not a memory error")
                return super().training_step(batch, batch_idx)

        return Failing

    def tune(tuner_cls: Any, trainer: Any, model: Any, _: Any) -> Any:
        return tuner_cls(trainer).scale_batch_size(model, steps_per_trial=1)

    got = compare(tune=tune, case=case, fit_after=False)
    assert got["mopt_fast"]["error"] == ("RuntimeError", "not a memory error")


# -- errors and warnings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["method", "no_lr_attr", "bad_attr_name", "two_optimizers", "finder_twice",
                                  "dataloaders_with_fit"])
def test_lr_find_errors_match_lightning(what: str) -> None:
    def tune(tuner_cls: Any, trainer: Any, model: Any, finder_cb: Any) -> Any:
        tuner = tuner_cls(trainer)
        return {
            "method": lambda: tuner.lr_find(model, method="validate"),
            "no_lr_attr": lambda: tuner.lr_find(model, num_training=5),
            "bad_attr_name": lambda: tuner.lr_find(model, num_training=5, attr_name="nope"),
            "two_optimizers": lambda: tuner.lr_find(model, num_training=5),
            "finder_twice": lambda: tuner.lr_find(model, num_training=5),
            "dataloaders_with_fit": lambda: tuner.lr_find(model, dataloaders=model.val_dataloader()),
        }[what]()

    lr_at = "other" if what == "no_lr_attr" else "attr"
    finder = (lambda cbs: cbs.LearningRateFinder()) if what == "finder_twice" else None
    # A search that fails: Lightning leaves its Trainer with the search's callbacks and loggers, and
    # warns that the checkpoint it restores names callbacks the Trainer no longer has; mopt_fast puts
    # the Trainer's own back first. The error is the same.
    ignore = ("warnings",) if what == "two_optimizers" else ()
    got = compare(tune=tune, case=lambda LM: make_module(LM, lr_at, optimizers=2 if what == "two_optimizers" else 1),
                  fit_after=False, finder=finder, ignore=ignore)
    assert "error" in got["mopt_fast"]


def test_fast_dev_run_skips_the_search_as_lightning() -> None:
    def tune(tuner_cls: Any, trainer: Any, model: Any, _: Any) -> Any:
        tuner = tuner_cls(trainer)
        return tuner.lr_find(model), tuner.scale_batch_size(model)

    got = compare(tune=tune, case=lambda LM: make_module(LM), fit_after=False, fast_dev_run=True, logger=False)
    assert got["mopt_fast"]["result"] == (None, None)
    assert any("Skipping learning rate finder" in w for w in got["mopt_fast"]["warnings"])


# The search for validate / test / predict: tests/test_tuner_eval_stages.py.


# -- plot -------------------------------------------------------------------------------------------------
def _lr_finder() -> Any:
    finder = _LRFinder("exponential", 1e-5, 1.0, 30)
    g = torch.Generator().manual_seed(5)
    finder.results = {"lr": torch.logspace(-5, 0, 30).tolist(),
                      "loss": (torch.linspace(3, 0.5, 30) + 0.05 * torch.rand(30, generator=g)).tolist()}
    return finder


def test_plot_draws_the_results() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finder = _lr_finder()
    fig = finder.plot(suggest=True)
    try:
        assert isinstance(fig, matplotlib.figure.Figure)
        ax = fig.axes[0]
        curve, dot = ax.lines
        assert list(curve.get_xdata()) == finder.results["lr"] and list(curve.get_ydata()) == finder.results["loss"]
        assert ax.get_xscale() == "log"
        assert list(dot.get_xdata()) == [finder.suggestion()]
    finally:
        plt.close(fig)
    fig2, ax2 = plt.subplots()
    try:
        assert finder.plot(ax=ax2) is fig2 and len(ax2.lines) == 1
    finally:
        plt.close(fig2)


def test_plot_without_matplotlib_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ModuleNotFoundError, match="matplotlib") as info:
        _lr_finder().plot()
    assert info.value.name == "matplotlib"




def test_a_fit_after_the_search_resumes_exactly(tmp_path: Any) -> None:
    """A checkpoint taken inside the first epoch of the fit that follows a BatchSizeFinder resumes
    to the same weights as the uninterrupted fit (mopt_fast's exact resume: the epoch's data order is
    rebuilt from the RNG its iterator was made with, here by the search)."""

    def fit(callbacks: list[Any], batch_size: int = 8, ckpt_path: str | None = None) -> tuple[Any, Any]:
        torch.manual_seed(0)
        model = make_module(mopt_fast.LightningModule)()
        model.batch_size = batch_size
        trainer = mopt_fast.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                                    callbacks=callbacks, default_root_dir=str(tmp_path))
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            trainer.fit(model, ckpt_path=ckpt_path)
        return model, trainer

    saving = mopt_fast.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=3, save_top_k=-1)
    searched, _ = fit([mopt_fast.callbacks.BatchSizeFinder(steps_per_trial=1, max_trials=3), saving])
    assert searched.batch_size == 8
    torch.manual_seed(123)  # the resume takes the RNG from the checkpoint
    resumed, trainer = fit([], batch_size=searched.batch_size, ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=3.ckpt"))
    assert trainer.global_step == 16
    for name, value in snapshot(searched).items():
        assert torch.equal(value, snapshot(resumed)[name]), name
