"""Per-step cost of mopt_fast.Trainer against a hand-written PyTorch loop and Lightning's Trainer.

Two workloads, one thread (the overhead is per-step Python work, so more threads only add noise):

- "gan": the demo's GAN (manual optimization, two Adam optimizers, log_dict(prog_bar=True));
- "lm": a small transformer language model in automatic optimization with bf16-mixed autocast,
  gradient clipping (norm 1.0) and AdamW.

Each implementation trains a fresh model for a short and a long run; `report.py` turns the pair
into seconds per step with the set-up removed: (T(long) - T(short)) / (long - short), and
divides by the hand-written loop's. No progress bar, logger, summary or checkpoint in any of them
(the Trainers' defaults would add I/O the loop does not do).
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import gan_2d  # noqa: E402

import mopt_fast  # noqa: E402

IMPLS = ["loop", "mopt_fast", "lightning"]
STEPS = {"gan": (8, 40), "lm": (2, 10)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def frameworks(impl: str) -> tuple[type, type]:
    if impl == "lightning":
        pl = pytest.importorskip("lightning.pytorch")
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        return pl.LightningModule, pl.Trainer
    return mopt_fast.LightningModule, mopt_fast.Trainer


def quiet_fit(Trainer: type, model: Any, data: DataLoader, steps: int, **kw: Any) -> None:
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=steps, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, data)


# -- the small transformer LM ---------------------------------------------------------------------
VOCAB, SEQ, WIDTH, LAYERS, BATCH = 512, 64, 128, 2, 16


def make_lm(LightningModule: type) -> type:
    class TinyLM(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, WIDTH)
            layer = nn.TransformerEncoderLayer(WIDTH, 4, 4 * WIDTH, dropout=0.0, batch_first=True, norm_first=True)
            self.body = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
            self.head = nn.Linear(WIDTH, VOCAB)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(SEQ - 1), persistent=False)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(self.embed(tokens), mask=self.mask, is_causal=True))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            (tokens,) = batch
            logits = self(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
            self.log("loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=3e-4, weight_decay=0.1)

    return TinyLM


def lm_data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(VOCAB, (BATCH * 16, SEQ), generator=g)
    return DataLoader(TensorDataset(tokens), batch_size=BATCH, shuffle=True)


def lm_loop(steps: int) -> None:
    torch.manual_seed(0)
    model = make_lm(mopt_fast.LightningModule)()
    opt = model.configure_optimizers()
    for i, (tokens,) in enumerate(lm_data()):
        if i == steps:
            break
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def run(workload: str, impl: str, steps: int) -> None:
    if workload == "gan":
        if impl == "loop":
            gan_2d.hand_written(steps)
            return
        LM, Trainer = frameworks(impl)
        torch.manual_seed(0)
        quiet_fit(Trainer, gan_2d.make_gan(LM)(), gan_2d.loader(), steps)
        return
    if impl == "loop":
        lm_loop(steps)
        return
    LM, Trainer = frameworks(impl)
    torch.manual_seed(0)
    quiet_fit(Trainer, make_lm(LM)(), lm_data(), steps, precision="bf16-mixed", gradient_clip_val=1.0)


@pytest.mark.parametrize("length", ["short", "long"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("workload", ["gan", "lm"])
def test_trainer_step(benchmark, workload: str, impl: str, length: str) -> None:
    steps = STEPS[workload][0 if length == "short" else 1]
    frameworks(impl)  # skips when lightning is missing
    run(workload, impl, 2)  # warm-up
    benchmark.group = f"trainer-{workload}"
    benchmark.extra_info.update(kind="trainer", workload=workload, impl=impl, steps=steps)
    benchmark.pedantic(run, args=(workload, impl, steps), rounds=5 if workload == "gan" else 3, iterations=1)
