"""A training run for the resume tests, as its own process (so it can be killed with SIGKILL).

    python tests/resume_child.py CASE OUT_DIR [--kill-at-batch N] [--kill-in-save N] [--resume]

Trains CASE (see CASES) with checkpoints after every batch or epoch (last.ckpt) and writes the final
weights to OUT_DIR/final.pt. --kill-at-batch N: SIGKILL itself when the N-th training batch
(counted over the whole run) starts. --kill-in-save N: SIGKILL itself inside the N-th checkpoint
write, after the temporary file is written and before it replaces the old one.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import mopt_fast  # noqa: E402
from mopt_fast.core import saving as checkpoint_module  # noqa: E402

import lightning_cases as cases  # noqa: E402

CASES = {
    # manual, two Adams, dropout-free GAN with its own noise draws + shuffled data
    "gan": (cases.gan, {}),
    # manual, SGD with momentum, dropout, shuffled data, validation, StepLR stepped by hand
    "manual_sched": (cases.sched_every_n, {}),
    # automatic: accumulation, clipping, a step-interval scheduler and a plateau one on val_loss
    "automatic": (cases.automatic(scheduler="plateau"), {"accumulate_grad_batches": 2, "gradient_clip_val": 0.5}),
    "automatic_bf16": (cases.automatic(optimizer="adamw_fused", scheduler="step_interval"), {"precision": "bf16-mixed"}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("out")
    ap.add_argument("--kill-at-batch", type=int, default=-1)
    ap.add_argument("--kill-in-save", type=int, default=-1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--save-every", choices=["step", "epoch"], default="step")
    args = ap.parse_args()
    torch.set_num_threads(1)
    make, kwargs = CASES[args.case]

    if args.kill_in_save >= 0:
        real_fsync = checkpoint_module._fsync
        count = {"n": 0}

        def fsync_then_die(f):
            real_fsync(f)
            count["n"] += 1
            if count["n"] == args.kill_in_save:
                os.kill(os.getpid(), signal.SIGKILL)

        checkpoint_module._fsync = fsync_then_die

    class Killer(mopt_fast.Callback):
        seen = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            Killer.seen += 1
            if Killer.seen == args.kill_at_batch:
                os.kill(os.getpid(), signal.SIGKILL)

    torch.manual_seed(1000 if args.resume else 0)  # a resumed run must not depend on its own seed
    model = make(mopt_fast.LightningModule)()
    train, val = cases.make_data()
    # Per step: last.ckpt alone. Per epoch: the newest epoch file too, since (as in Lightning) a
    # ModelCheckpoint writes last.ckpt at an epoch's end only when it saved a top-k file there.
    every = {"every_n_train_steps": 1, "save_top_k": 0} if args.save_every == "step" else {"every_n_epochs": 1}
    ckpt = mopt_fast.ModelCheckpoint(dirpath=os.path.join(args.out, "ckpt"), save_last=True, **every)
    trainer = mopt_fast.Trainer(accelerator="cpu", max_epochs=args.epochs, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=[ckpt, Killer()], default_root_dir=args.out,
                                **kwargs)
    trainer.fit(model, train, val, ckpt_path="last" if args.resume else None)
    torch.save({"state": model.state_dict(), "global_step": trainer.global_step,
                "optimizers": [o.state_dict() for o in trainer.optimizers]}, os.path.join(args.out, "final.pt"))


if __name__ == "__main__":
    main()
