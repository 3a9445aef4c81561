"""The manual-optimization guide's examples (and automatic-mode ones), written once against a
LightningModule base class so the same code runs under lightning.pytorch and under mopt_fast.

`run(framework, case, **trainer_kwargs)` trains a fresh, identically seeded module and returns
what the differential tests compare: the final state_dict, global_step, callback_metrics, the
learning rates and the hooks called.
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

N_ACC = 2


def frameworks(name: str) -> tuple[type, type]:
    if name == "lightning":
        import lightning.pytorch as pl

        for logger_name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(logger_name).setLevel(logging.ERROR)
        return pl.LightningModule, pl.Trainer
    import mopt_fast

    return mopt_fast.LightningModule, mopt_fast.Trainer


def make_data(n: int = 96, batch_size: int = 16, shuffle: bool = True) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)
    val = DataLoader(TensorDataset(x[:40], y[:40]), batch_size=16)
    return train, val


class Stream(IterableDataset):
    """make_data's samples as a stream without a length, in an order drawn from the global RNG at
    every pass (so both Trainers must create their iterators at the same points)."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in torch.randperm(len(self.x)).tolist():
            yield self.x[i], self.y[i]


def make_stream_data(n: int = 96, batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    """make_data's sizes, from loaders without a length (IterableDatasets)."""
    return DataLoader(Stream(n), batch_size=batch_size), DataLoader(Stream(40), batch_size=16)


def base(LM: type) -> type:
    class Regressor(LM):
        recorded: list

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 1))
            self.recorded = []

        def compute_loss(self, batch: Any) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", self.compute_loss(batch), prog_bar=True)

    return Regressor


# -- the guide's examples (manual optimization) ------------------------------------------------
def minimal(LM: type) -> type:
    class Minimal(base(LM)):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            opt.zero_grad()
            loss = self.compute_loss(batch)
            self.manual_backward(loss)
            opt.step()
            self.log("loss", loss, on_step=True, on_epoch=True)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    return Minimal


def own_optimizer(LM: type) -> type:
    class OwnOptimizer(minimal(LM)):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers().optimizer  # the raw optimizer: its steps are not counted
            opt.zero_grad()
            loss = self.compute_loss(batch)
            self.manual_backward(loss)
            opt.step()
            self.log("loss", loss)

    return OwnOptimizer


def accumulation(LM: type) -> type:
    class Accumulation(minimal(LM)):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            loss = self.compute_loss(batch) / N_ACC
            self.manual_backward(loss)
            if (batch_idx + 1) % N_ACC == 0:
                opt.step()
                opt.zero_grad()
            self.log("loss", loss, reduce_fx="max", on_epoch=True)

    return Accumulation


def clipping(algorithm: str, value: float) -> Callable[[type], type]:
    def make(LM: type) -> type:
        class Clipping(minimal(LM)):
            def training_step(self, batch: Any, batch_idx: int) -> None:
                opt = self.optimizers()
                loss = self.compute_loss(batch)
                opt.zero_grad()
                self.manual_backward(loss)
                self.clip_gradients(opt, gradient_clip_val=value, gradient_clip_algorithm=algorithm)
                opt.step()
                self.log("loss", loss)

        return Clipping

    return make


def gan(LM: type) -> type:
    class SimpleGAN(LM):
        def __init__(self) -> None:
            super().__init__()
            self.G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
            self.D = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
            self.criterion = nn.BCEWithLogitsLoss()
            self.automatic_optimization = False

        def sample_G(self, n: int) -> torch.Tensor:
            return self.G(torch.randn(n, 4, device=self.device))

        def training_step(self, batch: Any, batch_idx: int) -> None:
            g_opt, d_opt = self.optimizers()
            X, _ = batch
            batch_size = X.shape[0]
            real_label = torch.ones((batch_size, 1), device=self.device)
            fake_label = torch.zeros((batch_size, 1), device=self.device)
            g_X = self.sample_G(batch_size)
            errD = self.criterion(self.D(X), real_label) + self.criterion(self.D(g_X.detach()), fake_label)
            d_opt.zero_grad()
            self.manual_backward(errD)
            d_opt.step()
            errG = self.criterion(self.D(g_X), real_label)
            g_opt.zero_grad()
            self.manual_backward(errG)
            g_opt.step()
            self.log_dict({"g_loss": errG, "d_loss": errD}, prog_bar=True)

        def configure_optimizers(self) -> Any:
            g_opt = torch.optim.Adam(self.G.parameters(), lr=1e-3)
            d_opt = torch.optim.Adam(self.D.parameters(), lr=1e-3)
            return g_opt, d_opt

    return SimpleGAN


def different_frequencies(LM: type) -> type:
    class Alternating(gan(LM)):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            g_opt, d_opt = self.optimizers()
            X, _ = batch
            n = X.shape[0]
            g_X = self.sample_G(n)
            errD = self.criterion(self.D(X), torch.ones(n, 1)) + self.criterion(self.D(g_X.detach()), torch.zeros(n, 1))
            d_opt.zero_grad()
            self.manual_backward(errD)
            if (batch_idx + 1) % 2 == 0:
                d_opt.step()
            errG = self.criterion(self.D(g_X), torch.ones(n, 1))
            g_opt.zero_grad()
            self.manual_backward(errG)
            g_opt.step()
            self.log("g_loss", errG, on_step=False, on_epoch=True)

    return Alternating


def sched_every_step(LM: type) -> type:
    class EveryStep(minimal(LM)):
        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
            return [optimizer], [scheduler]

        def training_step(self, batch: Any, batch_idx: int) -> None:
            super().training_step(batch, batch_idx)
            self.lr_schedulers().step()

    return EveryStep


def sched_two(LM: type) -> type:
    class TwoSchedulers(gan(LM)):
        def configure_optimizers(self) -> Any:
            g, d = super().configure_optimizers()
            return [g, d], [torch.optim.lr_scheduler.StepLR(g, 3, 0.5), torch.optim.lr_scheduler.ExponentialLR(d, 0.9)]

        def training_step(self, batch: Any, batch_idx: int) -> None:
            super().training_step(batch, batch_idx)
            sch1, sch2 = self.lr_schedulers()
            sch1.step()
            sch2.step()

    return TwoSchedulers


def sched_every_n(LM: type) -> type:
    class EveryN(sched_every_step(LM)):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            minimal(LM).training_step(self, batch, batch_idx)
            sch = self.lr_schedulers()
            if (batch_idx + 1) % 3 == 0:  # every N batches
                sch.step()
            if self.trainer.is_last_batch and (self.trainer.current_epoch + 1) % 2 == 0:  # every N epochs
                sch.step()

    return EveryN


def sched_plateau(LM: type) -> type:
    class Plateau(minimal(LM)):
        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=0)
            return [optimizer], [scheduler]

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            opt.zero_grad()
            loss = self.compute_loss(batch)
            self.manual_backward(loss)
            opt.step()
            self.log("loss", loss)

        def on_train_epoch_end(self) -> None:
            self.lr_schedulers().step(self.trainer.callback_metrics["loss"])

    return Plateau


def lbfgs(LM: type) -> type:
    class WithLBFGS(minimal(LM)):
        def configure_optimizers(self) -> Any:
            return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=4)

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()

            def closure() -> torch.Tensor:
                loss = self.compute_loss(batch)
                opt.zero_grad()
                self.manual_backward(loss)
                return loss

            loss = opt.step(closure=closure)
            self.log("loss", loss)

    return WithLBFGS


def toggled_gan(LM: type) -> type:
    class ToggledGAN(gan(LM)):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            g_opt, d_opt = self.optimizers()
            X, _ = batch
            n = X.shape[0]
            with self.toggled_optimizer(d_opt):
                errD = self.criterion(self.D(X), torch.ones(n, 1)) + self.criterion(
                    self.D(self.sample_G(n).detach()), torch.zeros(n, 1))
                d_opt.zero_grad()
                self.manual_backward(errD)
                d_opt.step()
            self.toggle_optimizer(g_opt)
            errG = self.criterion(self.D(self.sample_G(n)), torch.ones(n, 1))
            g_opt.zero_grad()
            self.manual_backward(errG)
            g_opt.step()
            self.untoggle_optimizer(g_opt)
            self.log("d_loss", errD, prog_bar=True, on_epoch=True)

    return ToggledGAN


def manual_returns_loss(LM: type) -> type:
    class ReturnsLoss(minimal(LM)):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            opt = self.optimizers()
            opt.zero_grad()
            loss = self.compute_loss(batch)
            self.manual_backward(loss)
            opt.step()
            return loss

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.log("seen_loss", outputs["loss"], on_epoch=True, reduce_fx="sum")

    return ReturnsLoss


def epoch_hook_logging(LM: type) -> type:
    class EpochHookLogging(minimal(LM)):
        def on_train_start(self) -> None:
            self.log("start", 0.5)

        def on_train_epoch_start(self) -> None:
            self.log("epoch_start", float(self.current_epoch))

        def on_validation_epoch_end(self) -> None:
            self.log("val_end", torch.tensor(2.0), reduce_fx="max")

    return EpochHookLogging


def logging_variety(LM: type) -> type:
    """self.log in its forms: hidden from the loggers, step-only, step and epoch in validation, from
    an epoch-end hook."""
    class LoggingVariety(minimal(LM)):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            super().training_step(batch, batch_idx)
            self.log("hidden", float(batch_idx), logger=False)
            self.log("step_only", 2.0 * batch_idx, prog_bar=True, on_step=True, on_epoch=False)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            loss = self.compute_loss(batch)
            self.log("val_loss", loss, on_step=True, on_epoch=True)
            self.log("val_hidden", loss, logger=False)

        def on_train_epoch_end(self) -> None:
            self.log("epoch_end_value", self.current_epoch + 0.5)

    return LoggingVariety


def eval_submodule_and_stale_grads(LM: type) -> type:
    class EvalSubmodule(accumulation(LM)):
        def __init__(self) -> None:
            super().__init__()
            self.net[2].eval()  # a dropout the user froze: fit must leave it in eval mode
            for p in self.parameters():  # gradients from before fit must not reach the first step
                p.grad = torch.full_like(p, 3.0)

    return EvalSubmodule


class SetToNoneFalseSGD(torch.optim.SGD):
    """An optimizer with its own zero_grad, which the wrapper must keep."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(0.5)  # decays instead of clearing: visible in the weights


def custom_zero_grad(LM: type) -> type:
    class CustomZeroGrad(minimal(LM)):
        def configure_optimizers(self) -> Any:
            return SetToNoneFalseSGD(self.parameters(), lr=0.05)

    return CustomZeroGrad


# -- automatic optimization ---------------------------------------------------------------------
def automatic(optimizer: str = "sgd", scheduler: str | None = None, returns: str = "tensor") -> Callable[[type], type]:
    def make(LM: type) -> type:
        class Automatic(base(LM)):
            def training_step(self, batch: Any, batch_idx: int) -> Any:
                loss = self.compute_loss(batch)
                self.log("loss", loss, on_step=True, on_epoch=True, prog_bar=True)
                if returns == "dict":
                    return {"loss": loss, "extra": loss.detach() * 2}
                if returns == "none" and batch_idx % 3 == 2:
                    return None
                return loss

            def configure_optimizers(self) -> Any:
                if optimizer == "adamw_fused":
                    opt = torch.optim.AdamW(self.parameters(), lr=1e-2, fused=True)
                elif optimizer == "lbfgs":
                    return torch.optim.LBFGS(self.parameters(), lr=0.3, max_iter=3)
                else:
                    opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
                if scheduler == "step_interval":
                    return {"optimizer": opt, "lr_scheduler": {
                        "scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, 0.7), "interval": "step", "frequency": 2}}
                if scheduler == "epoch":
                    return [opt], [torch.optim.lr_scheduler.ExponentialLR(opt, 0.8)]
                if scheduler == "plateau":
                    return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(
                        opt, factor=0.5, patience=0), "monitor": "val_loss"}
                if scheduler == "plateau_step":
                    return {"optimizer": opt, "lr_scheduler": {
                        "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0),
                        "monitor": "loss_step", "interval": "step", "frequency": 3}}
                return opt

        return Automatic

    return make


# The hooks `recording` wraps: each call is recorded with global_step and current_epoch.
RECORDED_HOOKS = (
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end", "on_train_epoch_start",
    "on_train_epoch_end", "on_train_batch_start", "on_train_batch_end", "on_before_backward",
    "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad", "on_validation_start",
    "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end",
)


def recording(case: Callable[[type], type]) -> Callable[[type], type]:
    def make(LM: type) -> type:
        cls = case(LM)
        namespace: dict[str, Any] = {}
        for hook in RECORDED_HOOKS:
            def hook_fn(self: Any, *args: Any, _hook: str = hook, **kwargs: Any) -> None:
                self.recorded.append((_hook, self.trainer.global_step, self.trainer.current_epoch))
                getattr(super(recorded_cls, self), _hook)(*args, **kwargs)

            namespace[hook] = hook_fn
        recorded_cls = type("Recording" + cls.__name__, (cls,), namespace)
        return recorded_cls

    return make


def recording_logger(framework: str) -> Any:
    """A logger of `framework` that keeps every log_metrics call (step, metrics) and finalize status."""
    if framework == "lightning":
        from lightning.pytorch.loggers import Logger
    else:
        from mopt_fast.loggers import Logger

    class RecordingLogger(Logger):
        def __init__(self) -> None:
            if framework == "lightning":
                super().__init__()
            else:
                super().__init__(tempfile.mkdtemp(prefix="mopt_fast_test_"))
            self.calls: list[tuple[int | None, dict[str, float]]] = []
            self.finalized: list[str] = []

        @property
        def name(self) -> str:
            return "recording"

        @property
        def version(self) -> int:
            return 0

        def log_metrics(self, metrics: Any, step: int | None = None) -> None:
            self.calls.append((step, dict(metrics)))

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass

        def finalize(self, status: str) -> None:
            self.finalized.append(status)

    return RecordingLogger()


def run(framework: str, case: Callable[[type], type], data: tuple | None = None, seed: int = 0,
        **trainer_kwargs: Any) -> dict[str, Any]:
    LM, Trainer = frameworks(framework)
    torch.manual_seed(seed)
    model = case(LM)()
    if not hasattr(model, "recorded"):
        model.recorded = []
    train, val = data if data is not None else make_data()
    kwargs = dict(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False,
                  default_root_dir=tempfile.mkdtemp(prefix="mopt_fast_test_"))
    kwargs.update(trainer_kwargs)
    trainer = Trainer(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "global_step": trainer.global_step,
        "current_epoch": trainer.current_epoch,
        "callback_metrics": {k: v.detach().clone() for k, v in trainer.callback_metrics.items()},
        "logged_metrics": {k: v.detach().clone() for k, v in trainer.logged_metrics.items()},
        "lrs": [g["lr"] for opt in trainer.optimizers for g in opt.param_groups],
        "recorded": list(model.recorded),
        "scheduler_states": [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs],
        "trainer": trainer,
        "model": model,
    }
