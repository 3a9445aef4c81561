"""Checkpoints both ways between mopt_fast.Trainer and Lightning 2.6's (issue 17 §2 and the
checkpoint items of §3), each behaviour side by side with Lightning's own on the same seed.

What is exact: the data here is unshuffled and the model has no dropout, so a fit's order does not
depend on the random state; a resume on either side then gives the global step and the weights
(bitwise) of the uninterrupted fit, for checkpoints saved between epochs or at an epoch's end.
Inside an epoch Lightning's own resume is not exact (it restarts the train dataloader from its
first batch), so a Lightning resume of our mid-epoch file is compared with Lightning's resume of
its own file from the same point; ours of Lightning's skips the batches already done and matches
the uninterrupted fit.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import os
import pickle
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import importorskip_unless_ci

importorskip_unless_ci("lightning")

import lightning.pytorch as pl  # noqa: E402

import mopt_fast  # noqa: E402
import mopt_fast.amp  # noqa: E402
import mopt_fast.precision  # noqa: E402
from mopt_fast.core.saving import PickledCheckpointError  # noqa: E402

FRAMEWORKS = ("lightning", "mopt_fast")
OTHER = {"lightning": "mopt_fast", "mopt_fast": "lightning"}
# Lightning's INFO lines (rank_zero_info) and ours
LOGGERS = {"lightning": "lightning.pytorch.utilities.rank_zero", "mopt_fast": "mopt_fast.trainer"}


def net_class(LM: type) -> type:
    class Net(LM):
        def __init__(self, lr: float = 0.05, encoder: nn.Module | None = None) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self) -> Any:
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)]

    return Net


NETS = {"lightning": net_class(pl.LightningModule), "mopt_fast": net_class(mopt_fast.LightningModule)}


def manual_class(base: type) -> type:
    class Manual(base):
        def __init__(self, lr: float = 0.05, encoder: nn.Module | None = None) -> None:
            super().__init__(lr, encoder)
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            opt.zero_grad()
            x, y = batch
            self.manual_backward(nn.functional.mse_loss(self.net(x), y))
            opt.step()

        def on_train_epoch_end(self) -> None:
            self.lr_schedulers().step()

    return Manual


MANUAL = {fw: manual_class(net) for fw, net in NETS.items()}
TRAINERS = {"lightning": pl.Trainer, "mopt_fast": mopt_fast.Trainer}
CALLBACKS = {"lightning": pl.callbacks, "mopt_fast": mopt_fast}
AT_EPOCH_END = ("e0-6.ckpt",)  # saved after the validation in an epoch's last batch, or after the epoch


def loaders() -> tuple[DataLoader, DataLoader]:
    """96 fresh random samples, unshuffled: 6 training batches an epoch, 2 validation batches."""
    g = torch.Generator().manual_seed(1234)
    x, y = torch.randn(96, 8, generator=g), torch.randn(96, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16)


def make_trainer(fw: str, root: str, max_epochs: int, callbacks: list | None = None, **kwargs: Any) -> Any:
    return TRAINERS[fw](accelerator="cpu", max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(callbacks), callbacks=callbacks or [],
                        default_root_dir=root, **kwargs)


def fit(fw: str, max_epochs: int, ckpt_path: str | None = None, callbacks: list | None = None, seed: int = 0,
        manual: bool = False, **kwargs: Any) -> tuple[Any, Any]:
    """(model, trainer): a fresh module seeded with `seed` (`manual`: optimizing by hand), fitted
    by `fw`'s Trainer."""
    torch.manual_seed(seed)
    model = (MANUAL if manual else NETS)[fw]()
    trainer = make_trainer(fw, tempfile.mkdtemp(prefix="mopt_fast_interop_"), max_epochs, callbacks, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
    return model, trainer


def assert_same_fit(a: tuple[Any, Any], b: tuple[Any, Any]) -> None:
    """Same weights (bitwise), global step, epoch, optimizer and scheduler state."""
    (model_a, trainer_a), (model_b, trainer_b) = a, b
    assert (trainer_a.global_step, trainer_a.current_epoch) == (trainer_b.global_step, trainer_b.current_epoch)
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    oa, ob = trainer_a.optimizers[0].state_dict(), trainer_b.optimizers[0].state_dict()
    for i, state in oa["state"].items():
        for k, v in state.items():
            assert torch.equal(v, ob["state"][i][k]), (i, k)
    assert trainer_a.lr_scheduler_configs[0].scheduler.state_dict() == trainer_b.lr_scheduler_configs[0].scheduler.state_dict()


@pytest.fixture(scope="module")
def saved() -> Iterator[dict[tuple, str]]:
    """Checkpoints of the same 2-epoch fit by each Trainer, by (framework, trainer arguments' key,
    file name): ModelCheckpoint every 4 steps (inside epochs), at every epoch's end, and the end of
    the fit (Trainer.save_checkpoint)."""
    root = tempfile.mkdtemp(prefix="mopt_fast_interop_saved_")
    files = {}
    for key, kwargs in (("default", {}), ("val_twice", {"val_check_interval": 0.5}), ("no_val", {"limit_val_batches": 0})):
        for fw in FRAMEWORKS:
            folder = os.path.join(root, fw, key)
            cb = CALLBACKS[fw]
            callbacks = [cb.ModelCheckpoint(dirpath=folder, filename="s{step}", every_n_train_steps=4, save_top_k=-1,
                                            auto_insert_metric_name=False),
                         cb.ModelCheckpoint(dirpath=folder, filename="e{epoch}-{step}", save_top_k=-1,
                                            auto_insert_metric_name=False, monitor=None if key == "no_val" else "val_loss")]
            if key != "no_val":
                callbacks.append(cb.EarlyStopping(monitor="val_loss", patience=5))
            _, trainer = fit(fw, 2, callbacks=callbacks, **kwargs)
            trainer.save_checkpoint(os.path.join(folder, "end.ckpt"))
            for name in os.listdir(folder):
                files[fw, key, name] = os.path.join(folder, name)
    yield files
    shutil.rmtree(root)


def counters(ckpt: dict) -> dict[str, Any]:
    """What Lightning's loops restore a fit's position from."""
    fit_loop = ckpt["loops"]["fit_loop"]
    return {
        "epoch": ckpt["epoch"], "global_step": ckpt["global_step"], "epochs": fit_loop["epoch_progress"],
        "batches": fit_loop["epoch_loop.batch_progress"], "batches_that_stepped": fit_loop["epoch_loop.state_dict"],
        "steps": fit_loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"]["total"],
        "manual_steps": fit_loop["epoch_loop.manual_optimization.optim_step_progress"]["total"],
    }


def test_our_checkpoints_have_lightnings_entries_and_counters(saved: dict) -> None:
    """At every point ModelCheckpoint and save_checkpoint save, our file holds Lightning's entries
    with the same values as Lightning's file from the same fit: its loop counters, callback states
    under the same state keys, optimizer and scheduler states, hyperparameters."""
    names = sorted(k for k in saved if k[0] == "lightning")
    assert sorted(k[1:] for k in saved if k[0] == "mopt_fast") == [k[1:] for k in names]
    assert len(names) == 6 + 8 + 6  # s4, s8, s12, end and each validation's or epoch's end (twice an epoch: 4)
    for _, key, name in names:
        ours = torch.load(saved["mopt_fast", key, name], weights_only=True)
        theirs = torch.load(saved["lightning", key, name], weights_only=True)
        where = (key, name)
        assert set(theirs) <= set(ours), where  # Lightning's entries are all there
        assert set(ours) - set(theirs) == {"format", "checksum", "mopt_fast"}, where  # and ours, which it ignores
        assert ours["hparams_name"] == theirs["hparams_name"] == "kwargs"
        assert ours["pytorch-lightning_version"].startswith("2.")
        assert counters(ours) == counters(theirs), where
        assert ours["loops"].keys() == theirs["loops"].keys()
        assert ours["loops"]["fit_loop"].keys() == theirs["loops"]["fit_loop"].keys(), where
        assert ours["hyper_parameters"] == theirs["hyper_parameters"] == {"lr": 0.05, "encoder": None}
        assert ours["lr_schedulers"] == theirs["lr_schedulers"], where
        assert torch.equal(ours["optimizer_states"][0]["state"][0]["exp_avg"],
                           theirs["optimizer_states"][0]["state"][0]["exp_avg"]), where
        assert ours["callbacks"].keys() == theirs["callbacks"].keys(), where
        for state_key, state in theirs["callbacks"].items():
            # ModelCheckpoint's one extra, which Lightning's load_state_dict ignores: the step it last saved at
            assert ours["callbacks"][state_key].keys() - {"last_global_step_saved"} == state.keys(), (where, state_key)
            for k in ("best_model_score", "current_score", "kth_value", "wait_count", "stopped_epoch", "best_score"):
                if state.get(k) is not None:
                    assert torch.equal(torch.as_tensor(ours["callbacks"][state_key][k]), torch.as_tensor(state[k]))
                elif k in state:
                    assert ours["callbacks"][state_key][k] is None, (where, state_key, k)


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
@pytest.mark.parametrize("first", FRAMEWORKS)
def test_a_fit_resumed_by_the_other_trainer_is_the_uninterrupted_fit(first: str, manual: bool) -> None:
    """2 epochs in one Trainer, saved; resumed to 4 epochs in the other: the weights (bitwise),
    global step, optimizer and scheduler state of the other's uninterrupted 4-epoch fit."""
    folder = tempfile.mkdtemp(prefix="mopt_fast_interop_")
    path = os.path.join(folder, "first.ckpt")
    fit(first, 2, manual=manual)[1].save_checkpoint(path)
    second = OTHER[first]
    resumed = fit(second, 4, ckpt_path=path, seed=7, manual=manual)
    assert resumed[1].global_step == 24
    assert_same_fit(resumed, fit(second, 4, manual=manual))
    shutil.rmtree(folder)


@pytest.mark.parametrize(("key", "name"), [("default", "s4.ckpt"), ("default", "s8.ckpt"), ("default", "e0-6.ckpt"),
                                           ("val_twice", "s8.ckpt"), ("val_twice", "e0-3.ckpt"),
                                           ("no_val", "e0-6.ckpt")])
def test_lightning_resumes_our_checkpoints_as_it_resumes_its_own(saved: dict, key: str, name: str) -> None:
    """Lightning's fit(ckpt_path=ours), at a batch's end, after a validation inside an epoch or at
    an epoch's end, continues as from its own file of the same point: same global step, epoch
    and weights (inside an epoch neither is the uninterrupted fit: Lightning restarts the loader)."""
    kwargs = {"val_check_interval": 0.5} if key == "val_twice" else {"limit_val_batches": 0} if key == "no_val" else {}
    from_ours = fit("lightning", 3, ckpt_path=saved["mopt_fast", key, name], **kwargs)
    from_theirs = fit("lightning", 3, ckpt_path=saved["lightning", key, name], **kwargs)
    assert_same_fit(from_ours, from_theirs)
    # the loggers' step and the batch count, which Lightning's restart stage also sets
    loops = [t.fit_loop.epoch_loop for _, t in (from_ours, from_theirs)]
    assert loops[0]._batches_that_stepped == loops[1]._batches_that_stepped
    assert loops[0].batch_progress.state_dict() == loops[1].batch_progress.state_dict()
    if name in AT_EPOCH_END:  # there Lightning's resume is exact
        assert_same_fit(from_ours, fit("lightning", 3, **kwargs))


@pytest.mark.parametrize(("key", "name"), [("default", "s4.ckpt"), ("default", "s8.ckpt"), ("default", "e0-6.ckpt"),
                                           ("val_twice", "s8.ckpt"), ("val_twice", "e0-3.ckpt"),
                                           ("no_val", "e0-6.ckpt"), ("default", "end.ckpt")])
def test_we_resume_lightnings_checkpoints_as_the_uninterrupted_fit(saved: dict, key: str, name: str) -> None:
    """Our fit(ckpt_path=Lightning's file) gives the uninterrupted fit, as from our own file of
    the same point; inside an epoch with a warning that Lightning's file holds no RNG state."""
    kwargs = {"val_check_interval": 0.5} if key == "val_twice" else {"limit_val_batches": 0} if key == "no_val" else {}
    reference = fit("mopt_fast", 3, **kwargs)
    assert_same_fit(fit("mopt_fast", 3, ckpt_path=saved["lightning", key, name], seed=7, **kwargs), reference)
    assert_same_fit(fit("mopt_fast", 3, ckpt_path=saved["mopt_fast", key, name], seed=7, **kwargs), reference)
    torch.manual_seed(0)
    trainer = make_trainer("mopt_fast", tempfile.mkdtemp(prefix="mopt_fast_interop_"), 3, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(NETS["mopt_fast"](), *loaders(), ckpt_path=saved["lightning", key, name])
    no_rng = [w for w in caught if "holds no RNG state" in str(w.message)]
    assert len(no_rng) == (0 if name in AT_EPOCH_END or name == "end.ckpt" else 1), [str(w.message) for w in caught]


def test_callback_states_come_back_from_the_other_trainers_file(saved: dict) -> None:
    """ModelCheckpoint and EarlyStopping state, keyed as Lightning keys it, restored from either
    Trainer's file into the other's callbacks: the same as restoring the same Trainer's file."""
    restored = {}
    for fw in FRAMEWORKS:
        for source in FRAMEWORKS:
            cb = CALLBACKS[fw]
            folder = os.path.dirname(saved[source, "default", "end.ckpt"])
            checkpoint = cb.ModelCheckpoint(dirpath=folder, filename="e{epoch}-{step}", save_top_k=-1,
                                            auto_insert_metric_name=False, monitor="val_loss")
            stopping = cb.EarlyStopping(monitor="val_loss", patience=5)
            torch.manual_seed(0)
            trainer = make_trainer(fw, folder, 2, [checkpoint, stopping])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer.fit(NETS[fw](), *loaders(), ckpt_path=saved[source, "default", "end.ckpt"])
            assert trainer.global_step == 12  # already at max_epochs: nothing more trained
            restored[fw, source] = (os.path.basename(checkpoint.best_model_path), float(checkpoint.best_model_score),
                                    tuple(sorted(map(os.path.basename, checkpoint.best_k_models))), stopping.wait_count,
                                    float(stopping.best_score))
    assert len(set(restored.values())) == 1, restored  # whichever Trainer wrote the file, whichever reads it
    assert restored["mopt_fast", "mopt_fast"][2] == ("e0-6.ckpt", "e1-12.ckpt")
    assert restored["mopt_fast", "mopt_fast"][3] == 1  # EarlyStopping's wait_count


def test_validate_loads_the_weights_of_either_trainers_file(saved: dict) -> None:
    """validate(ckpt_path=...) with a file of either Trainer (test/predict load it the same way,
    resume.restore_weights): the same metrics in both."""
    results = {}
    for fw in FRAMEWORKS:
        for source in FRAMEWORKS:
            torch.manual_seed(0)
            trainer = make_trainer(fw, tempfile.mkdtemp(prefix="mopt_fast_interop_"), 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = trainer.validate(NETS[fw](), loaders()[1], ckpt_path=saved[source, "default", "e0-6.ckpt"],
                                       verbose=False)
            results[fw, source] = out[0]["val_loss"]
    assert len(set(results.values())) == 1, results
    torch.manual_seed(0)
    assert results["mopt_fast", "lightning"] != make_trainer("mopt_fast", tempfile.mkdtemp(), 1).validate(
        NETS["mopt_fast"](), loaders()[1], verbose=False)[0]["val_loss"]  # the weights did come from the file


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def info_lines(fw: str) -> Iterator[list[str]]:
    """The INFO lines `fw`'s Trainer logs inside the block (straight from its logger: both may
    stop propagation to the root logger)."""
    logger, records = logging.getLogger(LOGGERS[fw]), _Records()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(records)
    try:
        yield records.messages
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)


@pytest.mark.parametrize("source", FRAMEWORKS)
def test_resuming_a_finished_fit_says_so_as_lightning(saved: dict, source: str) -> None:
    """A checkpoint already at max_epochs (or max_steps): Lightning's INFO line and nothing
    trained; past max_epochs: Lightning's MisconfigurationException, before anything is restored."""
    path = saved[source, "default", "end.ckpt"]
    lines, weights = {}, {}
    for fw in FRAMEWORKS:
        for limits in ({"max_epochs": 2}, {"max_epochs": 5, "max_steps": 12}):
            with info_lines(fw) as logged:
                torch.manual_seed(0)
                model = NETS[fw]()
                trainer = make_trainer(fw, tempfile.mkdtemp(prefix="mopt_fast_interop_"), limits["max_epochs"],
                                       max_steps=limits.get("max_steps", -1))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    trainer.fit(model, *loaders(), ckpt_path=path)
            lines[fw, limits.get("max_steps")] = [m for m in logged if "stopped" in m or "Restor" in m]
            weights[fw, limits.get("max_steps")] = model.net[0].weight.detach().clone()
            assert trainer.global_step == 12
    for max_steps in (None, 12):
        assert lines["mopt_fast", max_steps] == lines["lightning", max_steps]
        assert torch.equal(weights["mopt_fast", max_steps], weights["lightning", max_steps])
    assert lines["mopt_fast", None] == [f"Restoring states from the checkpoint path at {path}",
                                        f"Restored all states from the checkpoint at {path}",
                                        "`Trainer.fit` stopped: `max_epochs=2` reached."]
    assert lines["mopt_fast", 12][-1] == "`Trainer.fit` stopped: `max_steps=12` reached."
    errors = {}
    for fw in FRAMEWORKS:
        torch.manual_seed(0)
        model = NETS[fw]()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(Exception) as info:
            make_trainer(fw, tempfile.mkdtemp(prefix="mopt_fast_interop_"), 1).fit(model, *loaders(), ckpt_path=path)
        errors[fw] = (type(info.value).__name__, str(info.value))
        if fw == "mopt_fast":  # ours checks before restoring anything (Lightning has loaded the weights by then)
            assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert errors["mopt_fast"] == errors["lightning"] == (
        "MisconfigurationException", "You restored a checkpoint with current_epoch=2, but you have set Trainer(max_epochs=1).")


def fp16_trainer(fw: str, max_epochs: int) -> Any:
    """A Trainer under 16-mixed on the CPU with a loss scaler that grows every 4 steps (Lightning
    takes the plugin; ours is set as the Trainer's precision plugin, which on the CPU Trainer(
    precision="16-mixed") would make bf16-mixed, without a scaler)."""
    scaler_class = torch.amp.GradScaler if fw == "lightning" else mopt_fast.amp.GradScaler
    scaler = scaler_class("cpu", init_scale=2.0**10, growth_interval=4)
    if fw == "lightning":
        plugin = pl.plugins.precision.MixedPrecision("16-mixed", "cpu", scaler=scaler)
        return make_trainer(fw, tempfile.mkdtemp(prefix="mopt_fast_interop_"), max_epochs, plugins=[plugin])
    trainer = make_trainer(fw, tempfile.mkdtemp(prefix="mopt_fast_interop_"), max_epochs)
    trainer.precision_plugin = mopt_fast.precision.MixedPrecision("16-mixed", "cpu", scaler=scaler)
    return trainer


def test_the_loss_scaler_state_goes_both_ways() -> None:
    """Under 16-mixed our checkpoint holds the GradScaler's state where Lightning's does (under
    the precision plugin's class name), and either Trainer restores it from either file."""
    folder = tempfile.mkdtemp(prefix="mopt_fast_interop_")
    paths = {}
    for fw in FRAMEWORKS:
        trainer = fp16_trainer(fw, 1)
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(NETS[fw](), *loaders())
        paths[fw] = os.path.join(folder, f"{fw}.ckpt")
        trainer.save_checkpoint(paths[fw])
    saved_states = {fw: torch.load(paths[fw], weights_only=True)["MixedPrecision"] for fw in FRAMEWORKS}
    assert saved_states["mopt_fast"] == saved_states["lightning"]
    assert saved_states["mopt_fast"]["scale"] == 2.0**11 and saved_states["mopt_fast"]["_growth_tracker"] == 2
    resumed = {}
    for fw in FRAMEWORKS:
        for source in FRAMEWORKS:
            trainer = fp16_trainer(fw, 2)
            torch.manual_seed(5)
            model = NETS[fw]()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer.fit(model, *loaders(), ckpt_path=paths[source])
            resumed[fw, source] = (trainer.precision_plugin.scaler.state_dict(), model.net[0].weight.detach().clone())
    for key, (state, weight) in resumed.items():
        assert state == resumed["lightning", "lightning"][0], key
        assert torch.equal(weight, resumed["lightning", "lightning"][1]), key
    assert resumed["mopt_fast", "lightning"][0]["scale"] == 2.0**13  # 12 steps, grown every 4
    shutil.rmtree(folder)


@pytest.mark.parametrize("kind", ["state_dict", "no_marker", "list", "bytes", "damaged_marker"])
def test_a_file_of_neither_trainer_is_refused_naming_what_was_expected(saved: dict, kind: str) -> None:
    """A plain state_dict, a dict without either format marker, another object, a file torch
    cannot read, one of ours with its format marker damaged: a ValueError naming the file and
    what was expected, before any weight or optimizer state is touched."""
    folder = tempfile.mkdtemp(prefix="mopt_fast_interop_")
    path = os.path.join(folder, "foreign.ckpt")
    torch.manual_seed(3)
    if kind == "state_dict":
        torch.save(NETS["mopt_fast"]().state_dict(), path)
    elif kind == "no_marker":
        ckpt = torch.load(saved["lightning", "default", "end.ckpt"], weights_only=True)
        del ckpt["pytorch-lightning_version"]
        torch.save(ckpt, path)
    elif kind == "list":
        torch.save([torch.randn(3)], path)
    elif kind == "bytes":
        with open(path, "wb") as f:
            f.write(os.urandom(256))
    else:
        ckpt = torch.load(saved["mopt_fast", "default", "end.ckpt"], weights_only=True)
        ckpt["format"] = "mopt_gast.checkpoint/3"
        torch.save(ckpt, path)
    torch.manual_seed(0)
    model = NETS["mopt_fast"]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer("mopt_fast", folder, 3)
    with pytest.raises(ValueError) as info:
        trainer.fit(model, *loaders(), ckpt_path=path)
    message = str(info.value)
    assert repr(path) in message
    expected = {"state_dict": "found a plain state_dict (only tensors)", "no_marker": "found a dict with the keys",
                "list": "found a list", "bytes": "not a loadable checkpoint", "damaged_marker": "is corrupt"}[kind]
    assert expected in message
    if kind in ("state_dict", "no_marker", "list"):
        assert "expected a checkpoint of mopt_fast (a dict with the format marker 'format': 'mopt_fast.checkpoint/3') " \
               "or of Lightning (a dict with a 'pytorch-lightning_version' entry)" in message
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert trainer.optimizers[0].state_dict()["state"] == {} and trainer.global_step == 0
    shutil.rmtree(folder)


def test_a_module_hyperparameter_is_pickled_and_read_both_ways() -> None:
    """An nn.Module passed to __init__ and saved by save_hyperparameters is pickled into the
    checkpoint by both Trainers: the default load (weights_only=True) refuses either file with
    torch's UnpicklingError, and weights_only=False rebuilds the model with it, from either
    Trainer's file in either Trainer's load_from_checkpoint and fit(ckpt_path=...)."""
    folder = tempfile.mkdtemp(prefix="mopt_fast_interop_")
    paths = {}
    for fw in FRAMEWORKS:
        torch.manual_seed(0)
        model = NETS[fw](encoder=nn.Linear(3, 5))
        trainer = make_trainer(fw, folder, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, *loaders())
            paths[fw] = os.path.join(folder, f"{fw}.ckpt")
            trainer.save_checkpoint(paths[fw])
    encoders = {}
    for fw in FRAMEWORKS:
        for source in FRAMEWORKS:
            with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
                NETS[fw].load_from_checkpoint(paths[source])
            loaded = NETS[fw].load_from_checkpoint(paths[source], weights_only=False)
            encoders[fw, source] = loaded.hparams.encoder.weight.detach().clone()
            with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                make_trainer(fw, folder, 2).fit(NETS[fw](), *loaders(), ckpt_path=paths[source])
            trainer = make_trainer(fw, folder, 2)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer.fit(NETS[fw](), *loaders(), ckpt_path=paths[source], weights_only=False)
            assert trainer.global_step == 12
    torch.manual_seed(0)
    reference = NETS["mopt_fast"](encoder=nn.Linear(3, 5)).hparams.encoder.weight
    assert all(torch.equal(w, reference) for w in encoders.values())
    with pytest.raises(PickledCheckpointError, match=r"not a loadable checkpoint with weights_only=True.*trusted source"):
        make_trainer("mopt_fast", folder, 2).fit(NETS["mopt_fast"](), *loaders(), ckpt_path=paths["mopt_fast"])
    shutil.rmtree(folder)


def test_an_unpicklable_hyperparameter_is_dropped_at_the_start_of_a_run_as_lightning() -> None:
    """A hyperparameter that cannot be pickled (an instance of a class defined in a function, as in
    a test or a notebook) is dropped from hparams when a run starts, with Lightning's warning, so
    that the checkpoints of the fit save (Lightning's Trainer cleans the namespace in `_run`)."""

    class LocalEncoder(nn.Linear):  # defined here: pickle cannot find it by name
        pass

    folder = tempfile.mkdtemp(prefix="mopt_fast_interop_")
    seen = {}
    for fw in FRAMEWORKS:
        torch.manual_seed(0)
        model = NETS[fw](encoder=LocalEncoder(3, 5))
        assert "encoder" in model.hparams
        trainer = make_trainer(fw, folder, 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(model, *loaders())
            trainer.save_checkpoint(os.path.join(folder, f"{fw}.ckpt"))
        seen[fw] = (sorted(model.hparams), [str(w.message) for w in caught if "cannot be pickled" in str(w.message)])
    assert seen["mopt_fast"] == seen["lightning"]
    assert seen["lightning"][1] == ["Attribute 'encoder' removed from hparams because it cannot be pickled. You can "
                                    "suppress this warning by setting `self.save_hyperparameters(ignore=['encoder'])`."]
    shutil.rmtree(folder)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def test_checkpoint_paths_with_a_protocol(saved: dict, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsspec paths ("memory://", "file://") and an http URL (a local server), as Lightning takes
    them: fit(ckpt_path=...) resumes as from the local file, load_from_checkpoint gives the same
    weights, in both Trainers."""
    fsspec = pytest.importorskip("fsspec")
    local = saved["mopt_fast", "default", "e0-6.ckpt"]
    memory = f"memory://interop-{uuid.uuid4().hex}/e0.ckpt"
    with fsspec.open(memory, "wb") as f, open(local, "rb") as src:
        f.write(src.read())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # where Lightning (torch.hub) caches URLs
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=os.path.dirname(local)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/e0-6.ckpt"
        reference = fit("mopt_fast", 2, ckpt_path=local)
        for path in (memory, "file://" + local, url):
            assert_same_fit(fit("mopt_fast", 2, ckpt_path=path), reference)
            for fw in FRAMEWORKS:
                loaded = NETS[fw].load_from_checkpoint(path, weights_only=True)
                assert torch.equal(loaded.net[0].weight, NETS[fw].load_from_checkpoint(local).net[0].weight)
        assert_same_fit(fit("lightning", 2, ckpt_path=memory), fit("lightning", 2, ckpt_path=local))
        # another file under the same name is that file, not the one loaded before (no cache by name)
        other, other_trainer = fit("mopt_fast", 1, seed=3)
        other_trainer.save_checkpoint(str(tmp_path / "e0-6.ckpt"))
        server.RequestHandlerClass = functools.partial(_Quiet, directory=str(tmp_path))
        assert torch.equal(NETS["mopt_fast"].load_from_checkpoint(url).net[0].weight, other.net[0].weight)
        with pytest.raises(FileNotFoundError, match="does not exist"):
            fit("mopt_fast", 2, ckpt_path=memory + ".missing")
        written = memory.replace("e0.ckpt", "written.ckpt")  # Trainer.save_checkpoint to an fsspec path
        model, trainer = fit("mopt_fast", 1)
        trainer.save_checkpoint(written)
        assert not os.path.exists("memory:")  # not a local folder named after the protocol
        for fw in FRAMEWORKS:
            assert torch.equal(NETS[fw].load_from_checkpoint(written).net[0].weight, model.net[0].weight)
    finally:
        server.shutdown()
        server.server_close()
