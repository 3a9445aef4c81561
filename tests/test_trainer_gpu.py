"""The Trainer on CUDA (skipped without a GPU): 16-mixed with a fused optimizer and clipping runs
with no host-device sync inside the training steps, and matches a hand-written GradScaler loop."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mopt_fast

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class ManualAmp(mopt_fast.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 1))
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        opt.zero_grad()
        loss = nn.functional.mse_loss(self.net(x), y)
        self.manual_backward(loss)
        self.clip_gradients(opt, gradient_clip_val=0.5)
        opt.step()
        self.log("loss", loss, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3, fused=True)


def _batches(n=12):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(32, 64, generator=g).cuda(), torch.randn(32, 1, generator=g).cuda()) for _ in range(n)]


def test_16_mixed_fused_clip_has_no_host_sync_and_matches_torch():
    torch.manual_seed(0)
    model = ManualAmp()
    ref = copy.deepcopy(model).cuda()
    data = _batches()
    steps = []

    class SyncGuard(mopt_fast.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx >= 2:  # after the first steps' one-time set-up (tables, scaler state)
                torch.cuda.set_sync_debug_mode("error")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            torch.cuda.set_sync_debug_mode(0)
            steps.append(batch_idx)

    trainer = mopt_fast.Trainer(accelerator="cuda", precision="16-mixed", max_epochs=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, callbacks=[SyncGuard()])
    try:
        trainer.fit(model, data)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert steps == list(range(len(data)))

    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda")
    for x, y in data:
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
            loss = nn.functional.mse_loss(ref.net(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()
    for a, b in zip(ref.parameters(), model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert trainer.scaler.get_scale() == scaler.get_scale()
