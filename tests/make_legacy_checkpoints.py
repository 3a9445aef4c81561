"""Writes tests/data/legacy-*.ckpt: checkpoints of the fit `test_legacy_checkpoints_resume_bitwise`
runs, saved by mopt_fast before its loops serialized themselves (the flat ``"loops"`` entry of
format mopt_fast.checkpoint/2). Kept so that later layouts are checked against files an earlier
release wrote; rerunning this script with today's code writes today's layout instead.

    python tests/make_legacy_checkpoints.py tests/data
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from mopt_fast import LightningModule, ModelCheckpoint, Trainer  # noqa: E402

import lightning_cases as cases  # noqa: E402

# The run: plateau scheduler, validation twice an epoch, 3 epochs (6 batches each).
TRAINER_KWARGS = {"accelerator": "cpu", "max_epochs": 3, "val_check_interval": 0.5, "logger": False,
                  "enable_progress_bar": False, "enable_model_summary": False}
# Saved at a batch's end (epoch 1, batch 0), after a mid-epoch validation (epoch 1, batch 2) and
# after the validation in an epoch's last batch (epoch 0, batch 5).
KEPT = {"step=7.ckpt": "legacy-batch.ckpt", "end-epoch=1-step=9.ckpt": "legacy-mid-epoch-validation.ckpt",
        "end-epoch=0-step=6.ckpt": "legacy-last-batch-validation.ckpt"}


def fit(ckpt_path: str | None = None, callbacks: tuple = ()) -> tuple[LightningModule, Trainer]:
    torch.manual_seed(0 if ckpt_path is None else 99)
    model = cases.automatic(scheduler="plateau")(LightningModule)()
    trainer = Trainer(enable_checkpointing=bool(callbacks), callbacks=list(callbacks), **TRAINER_KWARGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, *cases.make_data(), ckpt_path=ckpt_path)
    return model, trainer


def main(out: str) -> None:
    tmp = tempfile.mkdtemp()
    try:
        steps = ModelCheckpoint(dirpath=tmp, filename="{step}", every_n_train_steps=1, save_top_k=-1)
        epochs = ModelCheckpoint(dirpath=tmp, filename="end-{epoch}-{step}", save_top_k=-1)
        fit(callbacks=(steps, epochs))
        os.makedirs(out, exist_ok=True)
        for name, kept in KEPT.items():
            shutil.copy(os.path.join(tmp, name), os.path.join(out, kept))
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main(sys.argv[1])
