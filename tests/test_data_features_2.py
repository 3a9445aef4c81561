"""Data features beyond tests/test_data_features.py: a resumed fit with several training loaders
that keep persistent workers, CombinedLoaders in their own mode as evaluation dataloaders, and
stateful dataloaders in checkpoints. Side by side with Lightning 2.6 where Lightning has the
behaviour; against the uninterrupted mopt_fast fit where the behaviour is a resume's exactness."""
from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import mopt_fast
from mopt_fast import ModelCheckpoint


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
