"""The step guard as an option of the Trainers: mopt_fast.Trainer's precision plugins and
mopt_fast.lightning's plugins in Lightning's own Trainer.

A fit whose gradients are poisoned (NaN) at batch k ends with the weights and optimizer state
bitwise those of the same fit stopped after batch k-1; the guard adds no host read to the fit;
a clip by norm hands its norm to the guard (one read pass per step); the count of skipped steps
is logged and survives a checkpoint. Without the option both Trainers behave as Lightning does
(the poison spreads)."""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

import mopt_fast
from mopt_fast.exceptions import NotBuiltError
from mopt_fast.precision import HalfPrecision, MixedPrecision, Precision

from helpers import HostReads, importorskip_unless_ci

importorskip_unless_ci("lightning")

import lightning.pytorch as pl  # noqa: E402

import mopt_fast.lightning as for_lightning  # noqa: E402

POISON_BATCH = 3
METRIC = mopt_fast.StepGuard.metric_name
OPTIMIZERS = {
    "adamw_fused": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True),
    "adamw_foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, foreach=True),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9),
}


def module_class(base: type):
    class Regression(base):
        def __init__(self, optimizer: str, poison: bool, poison_after_clip: bool = False) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
            self.optimizer_name, self.poison, self.poison_after_clip = optimizer, poison, poison_after_clip

        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            if self.poison_after_clip and self.trainer.fit_loop.epoch_loop.batch_idx == POISON_BATCH:
                self.net[0].bias.grad[0] = math.nan  # written after the clip computed its norm

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def on_after_backward(self) -> None:
            if self.poison and self.trainer.fit_loop.epoch_loop.batch_idx == POISON_BATCH:
                self.net[2].weight.grad[1, 3] = math.nan  # one value of one gradient

        def configure_optimizers(self):
            return OPTIMIZERS[self.optimizer_name](self.parameters())

    return Regression


def loader() -> DataLoader:
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(64, 6, generator=gen), torch.randn(64, 2, generator=gen))
    return DataLoader(data, batch_size=8)


def fit(kind: str, plugin, optimizer: str, batches: int, poison: bool, clip: float | None = None,
        ckpt_path=None, max_epochs: int = 1, poison_after_clip: bool = False):
    """One epoch of `batches` batches on mopt_fast's Trainer ("ours") or Lightning's; the module,
    the trainer and the host reads the fit made."""
    base, trainer_class = (mopt_fast.LightningModule, mopt_fast.Trainer) if kind == "ours" else (
        pl.LightningModule, pl.Trainer)
    model = module_class(base)(optimizer, poison, poison_after_clip)
    trainer = trainer_class(
        max_epochs=max_epochs, limit_train_batches=batches, accelerator="cpu", devices=1, plugins=[plugin],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        gradient_clip_val=clip)
    with HostReads() as reads:
        trainer.fit(model, loader(), ckpt_path=ckpt_path)
    return model, trainer, reads.count


def state(model, trainer):
    weights = [p.detach().clone() for p in model.parameters()]
    optimizer = trainer.optimizers[0]
    opt_state = {(i, k): v.clone() for i, p in enumerate(model.parameters())
                 for k, v in optimizer.state.get(p, {}).items() if isinstance(v, torch.Tensor)}
    return weights, opt_state


def assert_same_state(a, b) -> None:
    (wa, sa), (wb, sb) = a, b
    for x, y in zip(wa, wb):
        assert torch.equal(x, y)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def plugins(kind: str, precision: str, guard):
    """The plugin of `precision` with `guard`, as each Trainer's users write it."""
    if kind == "lightning":
        if precision == "32-true":
            return for_lightning.Precision(step_guard=guard)
        if precision == "bf16-true":
            return for_lightning.HalfPrecision("bf16-true", step_guard=guard)
        return for_lightning.MixedPrecision(precision, "cpu", step_guard=guard)
    if precision == "32-true":
        return Precision(step_guard=guard)
    if precision == "bf16-true":
        return HalfPrecision("bf16-true", step_guard=guard)
    return MixedPrecision(precision, "cpu", step_guard=guard)


@pytest.mark.parametrize("kind", ["ours", "lightning"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("clip", [None, 0.5])
def test_a_poisoned_batch_leaves_the_fit_as_before_it(kind, precision, optimizer, clip):
    clean, clean_trainer, _ = fit(kind, plugins(kind, precision, None), optimizer, POISON_BATCH, False, clip)
    guard = mopt_fast.StepGuard()
    guarded, trainer, _ = fit(kind, plugins(kind, precision, guard), optimizer, POISON_BATCH + 1, True, clip)
    assert_same_state(state(guarded, trainer), state(clean, clean_trainer))
    assert guard.skipped_steps.item() == 1.0
    assert trainer.callback_metrics[METRIC].item() == 1.0


@pytest.mark.parametrize("kind", ["ours", "lightning"])
@pytest.mark.parametrize("optimizer", ["adamw_fused", "sgd_momentum"])
def test_unpoisoned_steps_are_the_plain_steps_and_the_guard_reads_nothing_back(kind, optimizer):
    """Guarded or not, the same fit gives the same bits, with the same number of host reads."""
    plain, plain_trainer, plain_reads = fit(kind, plugins(kind, "bf16-mixed", None), optimizer, 6, False, 0.5)
    guard = mopt_fast.StepGuard()
    guarded, trainer, reads = fit(kind, plugins(kind, "bf16-mixed", guard), optimizer, 6, False, 0.5)
    assert_same_state(state(guarded, trainer), state(plain, plain_trainer))
    assert reads == plain_reads
    assert guard.skipped_steps.item() == 0.0


@pytest.mark.parametrize("kind", ["ours", "lightning"])
def test_without_the_option_the_poison_spreads_as_in_lightning(kind):
    model, _, _ = fit(kind, plugins(kind, "32-true", None), "adamw_fused", POISON_BATCH + 1, True)
    assert not torch.isfinite(model.net[2].weight).all()


class OpCounter(TorchDispatchMode):
    """Counts mopt_fast's ops as they reach the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "mopt_fast":
            self.ops[func._opname] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", ["ours", "lightning"])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_the_guard_takes_the_clips_norm_one_read_pass_per_step(kind, clip):
    steps = 4
    counter = OpCounter()
    with counter:
        fit(kind, plugins(kind, "32-true", mopt_fast.StepGuard()), "adamw_foreach", steps, False, clip)
    reads = counter.ops["norm"] + counter.ops["unscale_norm"]
    assert reads == steps  # the clip's norm pass, or the guard's own when nothing clips
    assert counter.ops["unscale_norm"] == (0 if clip else steps)


@pytest.mark.parametrize("kind", ["ours", "lightning"])
def test_max_total_norm_skips_every_step_above_it(kind):
    guard = mopt_fast.StepGuard(max_total_norm=1e-6)  # below every gradient norm here
    model, trainer, _ = fit(kind, plugins(kind, "32-true", guard), "adamw_fused", 3, False, 0.5)
    torch.manual_seed(0)
    initial = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
    for p, p0 in zip(model.parameters(), initial.parameters()):
        assert torch.equal(p.detach(), p0.detach())
    assert guard.skipped_steps.item() == 3.0


@pytest.mark.parametrize("kind", ["ours", "lightning"])
def test_the_count_is_checkpointed_and_resumed(kind, tmp_path):
    guard = mopt_fast.StepGuard()
    _, trainer, _ = fit(kind, plugins(kind, "32-true", guard), "adamw_fused", POISON_BATCH + 1, True)
    trainer.save_checkpoint(tmp_path / "guarded.ckpt")
    resumed_guard = mopt_fast.StepGuard()
    # A second epoch, unpoisoned: the count goes on from the checkpoint's.
    _, resumed, _ = fit(kind, plugins(kind, "32-true", resumed_guard), "adamw_fused", POISON_BATCH + 1, False,
                        ckpt_path=tmp_path / "guarded.ckpt", max_epochs=2)
    assert resumed.current_epoch == 2
    assert resumed_guard.skipped_steps.item() == 1.0
    assert resumed.callback_metrics[METRIC].item() == 1.0


@pytest.mark.parametrize("kind", ["ours", "lightning"])
def test_a_gradient_written_after_the_clip_is_read_by_the_guard(kind):
    """The clip's norm is handed over only for gradients no one wrote since: a hook that poisons
    one after clipping makes the guard read them itself, and skip."""
    clean, clean_trainer, _ = fit(kind, plugins(kind, "32-true", None), "adamw_foreach", POISON_BATCH, False, 0.5)
    guard = mopt_fast.StepGuard()
    counter = OpCounter()
    with counter:
        guarded, trainer, _ = fit(kind, plugins(kind, "32-true", guard), "adamw_foreach", POISON_BATCH + 1, False,
                                  0.5, poison_after_clip=True)
    assert guard.skipped_steps.item() == 1.0
    assert_same_state(state(guarded, trainer), state(clean, clean_trainer))
    assert counter.ops["unscale_norm"] == 1  # the guard's own read, at the poisoned step only


@pytest.mark.parametrize("kind", ["ours", "lightning"])
def test_max_total_norm_is_compared_with_the_norm_before_the_clip(kind):
    """Clipped to 1e-3, every step's gradients are below a 2e-3 threshold; their norm before the
    clip is not: every step is skipped."""
    guard = mopt_fast.StepGuard(max_total_norm=2e-3)
    fit(kind, plugins(kind, "32-true", guard), "adamw_fused", 3, False, 1e-3)
    assert guard.skipped_steps.item() == 3.0
    with pytest.raises(ValueError, match="2-norm"):
        plugins(kind, "32-true", mopt_fast.StepGuard(max_total_norm=1.0, norm_type=1.0))


@pytest.mark.parametrize("saved_by, resumed_by", [("lightning", "ours"), ("ours", "lightning")])
def test_the_count_crosses_between_the_trainers_checkpoints(saved_by, resumed_by, tmp_path):
    guard = mopt_fast.StepGuard()
    _, trainer, _ = fit(saved_by, plugins(saved_by, "bf16-mixed", guard), "adamw_fused", POISON_BATCH + 1, True)
    trainer.save_checkpoint(tmp_path / "guarded.ckpt")
    resumed_guard = mopt_fast.StepGuard()
    fit(resumed_by, plugins(resumed_by, "bf16-mixed", resumed_guard), "adamw_fused", POISON_BATCH + 1, False,
        ckpt_path=tmp_path / "guarded.ckpt", max_epochs=2)
    assert resumed_guard.skipped_steps.item() == 1.0


def test_a_disabled_scaler_writes_no_precision_entry():
    """As before the guard's entry: a 16-mixed run whose scaler is disabled leaves no entry that an
    enabled scaler would then fail to read."""
    from mopt_fast.trainer.resume import _precision_entry

    assert _precision_entry(MixedPrecision("16-mixed", "cpu", mopt_fast.amp.GradScaler("cpu", enabled=False))) == {}
    assert _precision_entry(Precision(step_guard=mopt_fast.StepGuard())) == {"step_guard": {"skipped_steps": 0.0}}


def test_our_trainer_takes_the_lightning_plugin_with_its_guard():
    """A script moving from Lightning's Trainer to mopt_fast's keeps its plugins, guard included."""
    guard = mopt_fast.StepGuard()
    _, trainer, _ = fit("ours", for_lightning.MixedPrecision("bf16-mixed", "cpu", step_guard=guard),
                        "adamw_foreach", POISON_BATCH + 1, True)
    assert trainer.precision_plugin.step_guard is guard
    assert guard.skipped_steps.item() == 1.0


def test_refusals():
    with pytest.raises(NotBuiltError, match="16-mixed"):
        MixedPrecision("16-mixed", "cpu", step_guard=mopt_fast.StepGuard())
    with pytest.raises(NotBuiltError, match="16-mixed"):
        for_lightning.MixedPrecision("16-mixed", "cpu", step_guard=mopt_fast.StepGuard())
    with pytest.raises(TypeError, match="StepGuard"):
        Precision(step_guard=True)
    with pytest.raises(TypeError, match="StepGuard"):
        for_lightning.Precision(step_guard="yes")
