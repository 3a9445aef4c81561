"""`Trainer(plugins=...)`, side by side with Lightning 2.6: Lightning's plain precision plugins (and
mopt_fast's own) train as Lightning does with the same plugin; a checkpoint IO plugin gets the same
save / load / remove calls and the checkpoints it wrote resume a fit; TorchSyncBatchNorm; the
same errors for what Lightning refuses, and NotBuiltError for the plugins not built."""
from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import mopt_fast

import lightning_cases as cases
from helpers import importorskip_unless_ci

pl = importorskip_unless_ci("lightning.pytorch")
from lightning.pytorch import plugins as pl_plugins  # noqa: E402
from lightning.pytorch.plugins import environments as pl_environments  # noqa: E402

FRAMEWORKS = ("lightning", "mopt_fast")


def trainer_kwargs(**kwargs: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=tempfile.mkdtemp(prefix="mopt_fast_test_"))
    base.update(kwargs)
    return base


def fit(framework: str, max_epochs: int = 2, ckpt_path: str | None = None, **kwargs: Any) -> tuple[Any, Any]:
    LM, Trainer = cases.frameworks(framework)
    torch.manual_seed(0)
    model = cases.automatic()(LM)()
    trainer = Trainer(**trainer_kwargs(max_epochs=max_epochs, **kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, *cases.make_data(), ckpt_path=ckpt_path)
    return model, trainer


def assert_same_state(ours: nn.Module, theirs: nn.Module) -> None:
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


# -- precision plugins ------------------------------------------------------------------------------
LIGHTNING_PRECISIONS = {
    "Precision": lambda: pl_plugins.Precision(),
    "MixedPrecision-bf16": lambda: pl_plugins.MixedPrecision("bf16-mixed", "cpu"),
    "HalfPrecision-bf16": lambda: pl_plugins.HalfPrecision("bf16-true"),
    "HalfPrecision-16": lambda: pl_plugins.HalfPrecision("16-true"),
    "DoublePrecision": lambda: pl_plugins.DoublePrecision(),
}


@pytest.mark.parametrize("name", sorted(LIGHTNING_PRECISIONS))
def test_lightning_precision_plugins_train_as_in_lightning(name: str) -> None:
    theirs, _ = fit("lightning", plugins=[LIGHTNING_PRECISIONS[name]()])
    ours, trainer = fit("mopt_fast", plugins=[LIGHTNING_PRECISIONS[name]()])
    assert_same_state(ours, theirs)
    assert isinstance(trainer.precision_plugin, mopt_fast.plugins.Precision)  # the fused step is kept
    assert trainer.precision == LIGHTNING_PRECISIONS[name]().precision


def test_our_precision_plugin_object_as_the_setting() -> None:
    """mopt_fast's plugin object, given as a plugin, trains as the same setting given by name."""
    by_name, _ = fit("mopt_fast", precision="bf16-true")
    by_plugin, trainer = fit("mopt_fast", plugins=mopt_fast.plugins.HalfPrecision("bf16-true"))
    assert_same_state(by_plugin, by_name)
    assert trainer.precision == "bf16-true"


def test_lightning_mixed_precision_scaler_settings_carry_over() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 7, growth_interval=3)
    trainer = mopt_fast.Trainer(**trainer_kwargs(plugins=pl_plugins.MixedPrecision("16-mixed", "cpu", scaler)))
    ours = trainer.precision_plugin.scaler
    assert isinstance(ours, mopt_fast.amp.GradScaler)
    assert ours.get_scale() == 2.0 ** 7 and ours.get_growth_interval() == 3


# -- Lightning's errors --------------------------------------------------------------------------------
def same_error(make_kwargs: Any) -> tuple[type, str]:
    """The exception class and message each framework raises for the same arguments (the same
    plugin objects, so that their reprs in the messages agree)."""
    kwargs = make_kwargs()
    raised = {}
    for framework in FRAMEWORKS:
        with pytest.raises(Exception) as caught:  # noqa: PT011 (compared below)
            cases.frameworks(framework)[1](accelerator="cpu", **kwargs)
        raised[framework] = (type(caught.value).__name__, str(caught.value))
    assert raised["mopt_fast"] == raised["lightning"]
    return raised["mopt_fast"]


@pytest.mark.parametrize("case", ["both_precisions", "two_precision_plugins", "two_checkpoint_io", "invalid_type",
                                  "sync_batchnorm_and_other_layer_sync"])
def test_plugin_errors_as_lightning(case: str) -> None:
    class OtherSync(pl_plugins.LayerSync):
        def apply(self, model: nn.Module) -> nn.Module:
            return model

        def revert(self, model: nn.Module) -> nn.Module:
            return model

    makers = {
        "both_precisions": lambda: dict(precision="bf16-mixed", plugins=[pl_plugins.Precision()]),
        "two_precision_plugins": lambda: dict(plugins=[pl_plugins.Precision(), pl_plugins.DoublePrecision()]),
        "two_checkpoint_io": lambda: dict(plugins=[pl_plugins.TorchCheckpointIO(), pl_plugins.TorchCheckpointIO()]),
        "invalid_type": lambda: dict(plugins=[object()]),
        "sync_batchnorm_and_other_layer_sync": lambda: dict(sync_batchnorm=True, plugins=[OtherSync()]),
    }
    kind, _ = same_error(makers[case])
    assert kind in ("ValueError", "MisconfigurationException")


@pytest.mark.parametrize("plugin", [
    lambda: pl_environments.LightningEnvironment(), lambda: pl_plugins.AsyncCheckpointIO(),
    lambda: "bitsandbytes", lambda: pl_plugins.precision.DeepSpeedPrecision("32-true"),
], ids=["cluster_environment", "async_checkpoint_io", "by_name", "deepspeed_precision"])
def test_plugins_not_built_are_named(plugin: Any) -> None:
    with pytest.raises(mopt_fast.exceptions.NotBuiltError, match="not built in mopt_fast"):
        mopt_fast.Trainer(accelerator="cpu", plugins=[plugin()])


def test_custom_subclass_of_lightning_precision_is_not_silently_replaced() -> None:
    class Custom(pl_plugins.Precision):
        def backward(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("a custom step mopt_fast would not run")

    with pytest.raises(mopt_fast.exceptions.NotBuiltError, match="Custom"):
        mopt_fast.Trainer(accelerator="cpu", plugins=[Custom()])


def test_torch_sync_batchnorm_plugin_sets_sync_batchnorm() -> None:
    for framework in FRAMEWORKS:
        trainer = cases.frameworks(framework)[1](accelerator="cpu", plugins=[pl_plugins.TorchSyncBatchNorm()])
        if framework == "mopt_fast":
            assert trainer.sync_batchnorm is True


# -- checkpoint IO ------------------------------------------------------------------------------------
class RecordingIO(pl_plugins.TorchCheckpointIO):
    """Lightning's own file writer, recording each call (file names, not folders)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self.calls.append(("save", os.path.basename(path), storage_options))
        super().save_checkpoint(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> dict[str, Any]:
        self.calls.append(("load", os.path.basename(path), weights_only))
        return super().load_checkpoint(path, weights_only=weights_only)

    def remove_checkpoint(self, path: Any) -> None:
        self.calls.append(("remove", os.path.basename(path), None))
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        self.calls.append(("teardown", "", None))


def test_checkpoint_io_plugin_gets_lightnings_calls_and_resumes(tmp_path) -> None:
    runs = {}
    for framework in FRAMEWORKS:
        io = RecordingIO()
        folder = tmp_path / framework
        callback = (pl.callbacks if framework == "lightning" else mopt_fast.callbacks).ModelCheckpoint(
            dirpath=str(folder), save_top_k=1)
        _, trainer = fit(framework, max_epochs=3, plugins=[io], callbacks=[callback], enable_checkpointing=True)
        trainer.save_checkpoint(str(folder / "extra.ckpt"), storage_options={"note": 1})
        # The file the plugin wrote resumes a fit, read back through the plugin.
        resumed_io = RecordingIO()
        resumed, _ = fit(framework, max_epochs=4, plugins=[resumed_io], ckpt_path=callback.best_model_path)
        runs[framework] = (io.calls, resumed_io.calls, resumed)
    (ours_calls, ours_resume, ours_model), (their_calls, their_resume, _) = runs["mopt_fast"], runs["lightning"]
    assert ours_calls == their_calls
    assert ("save", "extra.ckpt", {"note": 1}) in ours_calls and any(c[0] == "remove" for c in ours_calls)
    assert [c for c in ours_resume if c[0] == "load"] == [c for c in their_resume if c[0] == "load"]
    # Resumed through the plugin, exactly as the uninterrupted fit (mopt_fast's checkpoints carry the
    # RNG state; Lightning's resume reshuffles, so its weights are not the reference here).
    uninterrupted, _ = fit("mopt_fast", max_epochs=4)
    assert_same_state(ours_model, uninterrupted)


def test_default_checkpoint_io_refuses_storage_options_as_lightning() -> None:
    messages = {}
    for framework in FRAMEWORKS:
        _, trainer = fit(framework, max_epochs=1)
        with pytest.raises(TypeError) as caught:
            trainer.save_checkpoint(os.path.join(tempfile.mkdtemp(), "x.ckpt"), storage_options={"a": 1})
        messages[framework] = str(caught.value)
    assert messages["mopt_fast"] == messages["lightning"]


def test_our_checkpoint_io_subclass_writes_elsewhere(tmp_path) -> None:
    """A mopt_fast CheckpointIO of the user's: its files hold the checksum and load back checked."""

    class Doubling(mopt_fast.plugins.CheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            torch.save(checkpoint, str(path) + ".mine")

        def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> dict[str, Any]:
            return torch.load(str(path) + ".mine", weights_only=True)

        def remove_checkpoint(self, path: Any) -> None:
            os.remove(str(path) + ".mine")

    _, trainer = fit("mopt_fast", max_epochs=2, plugins=[Doubling()])
    path = str(tmp_path / "a.ckpt")
    trainer.save_checkpoint(path)
    assert os.path.exists(path + ".mine") and not os.path.exists(path)
    resumed, _ = fit("mopt_fast", max_epochs=3, plugins=[Doubling()], ckpt_path=path)
    reference, _ = fit("mopt_fast", max_epochs=3)
    assert_same_state(resumed, reference)
    # A damaged file written by the plugin is caught by the checksum, before anything is restored.
    ckpt = torch.load(path + ".mine", weights_only=True)
    next(iter(ckpt["state_dict"].values())).add_(1.0)
    torch.save(ckpt, path + ".mine")
    with pytest.raises(ValueError, match="checksum"):
        fit("mopt_fast", max_epochs=3, plugins=[Doubling()], ckpt_path=path)
