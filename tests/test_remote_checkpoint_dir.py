"""`ModelCheckpoint(dirpath=<URL>)`: checkpoints in a remote folder through fsspec (its in-memory
file system here, as an S3 bucket would be reached), side by side with Lightning 2.6: the same
files, the same best/last choices and removals, `fit(ckpt_path="last")` resuming from the remote
folder, `to_yaml` there."""
from __future__ import annotations

import tempfile
import uuid
import warnings
from typing import Any

import pytest
import torch

import mopt_fast

import lightning_cases as cases
from helpers import importorskip_unless_ci

pl = importorskip_unless_ci("lightning.pytorch")
fsspec = importorskip_unless_ci("fsspec")

FRAMEWORKS = ("lightning", "mopt_fast")


def callbacks(framework: str) -> Any:
    return pl.callbacks if framework == "lightning" else mopt_fast.callbacks


def logging_val_loss(LM: type) -> type:
    base = cases.automatic()(LM)

    class WithValLoss(base):  # type: ignore[misc, valid-type]
        batches_run = 0

        def on_train_batch_end(self, *args: Any) -> None:
            self.batches_run += 1

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", self.compute_loss(batch))

    return WithValLoss


def fit(framework: str, checkpoint: Any, max_epochs: int, ckpt_path: str | None = None) -> Any:
    LM, Trainer = cases.frameworks(framework)
    torch.manual_seed(0)
    model = logging_val_loss(LM)()
    trainer = Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[checkpoint],
                      default_root_dir=tempfile.mkdtemp(prefix="mopt_fast_test_"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, *cases.make_data(shuffle=False), ckpt_path=ckpt_path)
    trainer.batches_run = model.batches_run  # what this fit trained (a resumed one: only the rest)
    return trainer


def names(fs: Any, folder: str) -> list[str]:
    return sorted(str(p).rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False))


def test_remote_checkpoint_folder_as_lightning() -> None:
    fs = fsspec.filesystem("memory")
    seen = {}
    for framework in FRAMEWORKS:
        folder = f"memory://mopt-fast-{uuid.uuid4().hex}/{framework}"
        checkpoint = callbacks(framework).ModelCheckpoint(dirpath=folder, monitor="val_loss", save_top_k=2,
                                                          save_last=True)
        trainer = fit(framework, checkpoint, max_epochs=4)
        checkpoint.to_yaml()
        best_k = sorted(p.rsplit("/", 1)[-1] for p in checkpoint.best_k_models)
        # Resume from the remote last checkpoint: the loop position comes back from there.
        resumed = fit(framework, callbacks(framework).ModelCheckpoint(dirpath=folder, save_last=True),
                      max_epochs=5, ckpt_path=checkpoint.last_model_path)
        seen[framework] = (names(fs, folder), checkpoint.best_model_path.rsplit("/", 1)[-1],
                           checkpoint.last_model_path.rsplit("/", 1)[-1], best_k, trainer.global_step,
                           resumed.batches_run, resumed.global_step)
        assert checkpoint.dirpath == folder  # a URL is kept as given
    assert seen["mopt_fast"] == seen["lightning"]
    assert seen["mopt_fast"][-2:] == (6, 30)  # resumed after 4 epochs of 6 batches: one epoch more
    files = seen["mopt_fast"][0]
    assert "best_k_models.yaml" in files and "last.ckpt" in files


def test_fit_resumes_from_the_remote_last_checkpoint_by_name() -> None:
    """`fit(ckpt_path="last")` finds the newest last checkpoint in a remote folder. (Lightning 2.6
    does not: its lookup returns the file system's paths without their protocol, which then name
    local files, so it warns "no last checkpoint" and trains from scratch.)"""
    folder = f"memory://mopt-fast-{uuid.uuid4().hex}/run"
    fit("mopt_fast", mopt_fast.callbacks.ModelCheckpoint(dirpath=folder, save_last=True), max_epochs=4)
    resumed = fit("mopt_fast", mopt_fast.callbacks.ModelCheckpoint(dirpath=folder, save_last=True), max_epochs=5,
                  ckpt_path="last")
    assert (resumed.batches_run, resumed.global_step) == (6, 30)
    assert resumed.ckpt_path == f"{folder}/last.ckpt"


def test_remote_checkpoint_loads_back_checked() -> None:
    """A remote checkpoint written by mopt_fast carries its checksum and loads with load_from_checkpoint."""
    folder = f"memory://mopt-fast-{uuid.uuid4().hex}/run"
    checkpoint = mopt_fast.callbacks.ModelCheckpoint(dirpath=folder, save_top_k=1)
    fit("mopt_fast", checkpoint, max_epochs=2)
    model_class = logging_val_loss(mopt_fast.LightningModule)
    model = model_class.load_from_checkpoint(checkpoint.best_model_path)
    stored = torch.load(fsspec.open(checkpoint.best_model_path, "rb").open(), weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(value, stored["state_dict"][name]), name


def test_remote_folder_with_a_symbolic_last_link_is_named_not_built() -> None:
    checkpoint = mopt_fast.callbacks.ModelCheckpoint(dirpath=f"memory://mopt-fast-{uuid.uuid4().hex}/x",
                                                     save_last="link")
    with pytest.raises(mopt_fast.exceptions.NotBuiltError, match="save_last='link'"):
        fit("mopt_fast", checkpoint, max_epochs=1)
