"""mopt_fast.lightning: mopt_fast's precision plugins inside Lightning's own Trainer.

Each run trains the same seeded module on the same batches; the reference is Lightning's own plugin
where it does the right thing, and a hand-written torch loop where it refuses (clipping with a fused
optimizer) or is wrong (manual optimization under 16-mixed clips the scaled gradients, Lightning's
issue #18089, and updates the scale after every optimizer step). Weights must be bitwise equal
where no clip-by-norm acts, and within rtol 2e-5 where it does (mopt_fast takes the norm in fp64,
torch in fp32). 16-mixed runs on the CPU with the plugin built directly: Lightning turns
``precision="16-mixed"`` into bf16-mixed on the CPU, but takes a plugin as it is given.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import pickle
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

from helpers import importorskip_unless_ci

importorskip_unless_ci("lightning")

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.plugins.precision import HalfPrecision as LightningHalfPrecision  # noqa: E402
from lightning.pytorch.plugins.precision import MixedPrecision as LightningMixedPrecision  # noqa: E402
from lightning.pytorch.utilities.exceptions import MisconfigurationException  # noqa: E402

from mopt_fast.amp import GradScaler  # noqa: E402
from mopt_fast.lightning import HalfPrecision, MixedPrecision, Precision, precision_plugin  # noqa: E402

RTOL, ATOL = 2e-5, 2e-6
INF_BATCHES = (2, 5)  # batches whose loss is multiplied by inf: the scaler must skip those steps
OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2),
    "adamw_fused": lambda params: torch.optim.AdamW(params, lr=1e-2, fused=True),
}
AUTOCAST = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
# Low enough that only the inf batches overflow fp16 (at torch's default, 2**16, the first steps do too).
INIT_SCALE = 2.0**10


def ours16(**scaler_kwargs: Any) -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", GradScaler("cpu", init_scale=INIT_SCALE, **scaler_kwargs))


def lightnings16(**scaler_kwargs: Any) -> LightningMixedPrecision:
    return LightningMixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, **scaler_kwargs))


def torch_scaler(**scaler_kwargs: Any) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, **scaler_kwargs)


# -- the runs -------------------------------------------------------------------------------------
def loader() -> DataLoader:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(64, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(64, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))


class Regressor(pl.LightningModule):
    """Automatic optimization; a loss times inf on `inf_batches`, no loss at all on `none_batches`."""

    def __init__(self, optimizer: str = "sgd", inf_batches: tuple = (), none_batches: tuple = ()) -> None:
        super().__init__()
        self.net = net()
        self.optimizer = optimizer
        self.inf_batches = inf_batches
        self.none_batches = none_batches

    def loss(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x).float(), y)
        return loss * math.inf if batch_idx in self.inf_batches else loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        return None if batch_idx in self.none_batches else self.loss(batch, batch_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return OPTIMIZERS[self.optimizer](self.parameters())


class TwoOptimizers(pl.LightningModule):
    """Manual optimization, GAN-shaped: `a` steps, then `b` trains on top of the updated `a`, each
    clipped with self.clip_gradients before its step (the case of Lightning's issue #18089)."""

    def __init__(self, optimizer: str, clip: tuple[float, str] | None, inf_batches: tuple = INF_BATCHES,
                 clip_before_backward: bool = False) -> None:
        super().__init__()
        self.a, self.b = net(), net()
        self.optimizer, self.clip, self.inf_batches = optimizer, clip, inf_batches
        # Also clip right after zero_grad, when there is no gradient: nothing to do, as in Lightning.
        self.clip_before_backward = clip_before_backward
        self.automatic_optimization = False

    def clip_gradients_of(self, opt: Any) -> None:
        if self.clip is not None:
            self.clip_gradients(opt, gradient_clip_val=self.clip[0], gradient_clip_algorithm=self.clip[1])

    def loss_a(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.a(x).float(), y)
        return loss * math.inf if batch_idx in self.inf_batches else loss

    def loss_b(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.b(x).float() + self.a(x).float().detach(), y)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_a, opt_b = self.optimizers()
        for opt, loss in ((opt_a, partial(self.loss_a, batch, batch_idx)), (opt_b, partial(self.loss_b, batch))):
            opt.zero_grad()
            if self.clip_before_backward:
                self.clip_gradients_of(opt)
            self.manual_backward(loss())
            self.clip_gradients_of(opt)
            opt.step()

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return OPTIMIZERS[self.optimizer](self.a.parameters()), OPTIMIZERS[self.optimizer](self.b.parameters())


def fit(module: pl.LightningModule, plugin: Any = None, ckpt_path: str | None = None, **trainer_kwargs: Any) -> pl.Trainer:
    kwargs = dict(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    if plugin is not None:
        kwargs["plugins"] = [plugin]
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader(), ckpt_path=ckpt_path)
    return trainer


def seeded(factory: Callable[[], pl.LightningModule]) -> pl.LightningModule:
    torch.manual_seed(0)
    return factory()


def assert_weights(got: nn.Module, ref: nn.Module, exact: bool) -> None:
    for (name, p), q in zip(got.named_parameters(), ref.parameters()):
        if exact:
            assert torch.equal(p, q), name
        else:
            torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL, msg=name)


def autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision in AUTOCAST:
        return torch.autocast("cpu", dtype=AUTOCAST[precision], cache_enabled=False)
    return contextlib.nullcontext()


def torch_clip(params: list[nn.Parameter], clip: tuple[float, str] | None) -> None:
    if clip is not None:
        clip_fn = torch.nn.utils.clip_grad_norm_ if clip[1] == "norm" else torch.nn.utils.clip_grad_value_
        clip_fn(params, clip[0])


def torch_automatic(module: Regressor, precision: str, clip: tuple[float, str] | None,
                    scaler: torch.amp.GradScaler | None = None) -> None:
    """Lightning's automatic optimization written out in torch: training_step under autocast, then
    zero_grad, (scaled) backward, unscale, clip, step, update."""
    opt = module.configure_optimizers()
    params = list(module.parameters())
    for batch_idx, batch in enumerate(loader()):
        with autocast(precision):
            loss = module.training_step(batch, batch_idx)
        opt.zero_grad()
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opt)
        torch_clip(params, clip)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()


def torch_two_optimizers(module: TwoOptimizers, scaler: torch.amp.GradScaler) -> None:
    """torch's recipe for several optimizers: unscale_, clip and step each, update once at the end."""
    opts = module.configure_optimizers()
    for batch_idx, batch in enumerate(loader()):
        with autocast("16-mixed"):  # Lightning runs the whole manual training_step under autocast
            for opt, loss in zip(opts, (partial(module.loss_a, batch, batch_idx), partial(module.loss_b, batch))):
                opt.zero_grad()
                scaler.scale(loss()).backward()
                scaler.unscale_(opt)
                torch_clip([p for g in opt.param_groups for p in g["params"]], module.clip)
                scaler.step(opt)
        scaler.update()


class OpLog(TorchDispatchMode):
    """Counts the ops that reach the dispatcher (mopt_fast's custom ops among them)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


# -- optional dependency ------------------------------------------------------------------------------
def run_python(code: str, cwd: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter, from `cwd` (not the source tree: the installed package runs)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_import_mopt_fast_does_not_import_lightning(tmp_path: Any) -> None:
    result = run_python(
        "import sys, mopt_fast\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
        "print(loaded)\n"
        "assert not loaded, loaded\n",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_lightning_the_plugin_module_names_the_missing_package(tmp_path: Any) -> None:
    # None in sys.modules is how Python marks a module as not importable.
    result = run_python(
        "import sys\n"
        "sys.modules['lightning'] = None\n"
        "import mopt_fast\n"
        "try:\n"
        "    import mopt_fast.lightning\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e.name, e)\n"
        "else:\n"
        "    raise SystemExit('imported without lightning')\n",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ImportError lightning "), result.stdout
    assert "needs the 'lightning' package" in result.stdout and "pip install lightning" in result.stdout


# -- bf16-mixed and 32-true through the Trainer ------------------------------------------------------
CLIPS = {
    "none": None,
    "norm_inactive": (1e3, "norm"),  # above every gradient norm: the clip must write nothing
    "norm": (0.05, "norm"),
    "value": (0.01, "value"),
}


@pytest.mark.parametrize("clip", list(CLIPS))
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_automatic_matches_lightning(precision: str, optimizer: str, clip: str) -> None:
    clip_args = CLIPS[clip]
    clip_kwargs = {} if clip_args is None else dict(gradient_clip_val=clip_args[0], gradient_clip_algorithm=clip_args[1])
    ref = seeded(lambda: Regressor(optimizer))
    fit(ref, precision=precision, **clip_kwargs)
    got = seeded(lambda: Regressor(optimizer))
    trainer = fit(got, precision_plugin(precision, "cpu"), **clip_kwargs)
    assert trainer.precision == precision
    assert_weights(got, ref, exact=clip != "norm")


def test_bf16_fused_optimizer_clips_where_lightning_refuses() -> None:
    """Lightning's MixedPrecision refuses to clip for a fused optimizer even under bf16-mixed,
    where nothing is scaled; mopt_fast's plugin clips, as a hand-written loop does."""
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        fit(seeded(lambda: Regressor("adamw_fused")), precision="bf16-mixed", gradient_clip_val=0.05)
    ref = seeded(lambda: Regressor("adamw_fused"))
    torch_automatic(ref, "bf16-mixed", (0.05, "norm"))
    got = seeded(lambda: Regressor("adamw_fused"))
    fit(got, MixedPrecision("bf16-mixed", "cpu"), gradient_clip_val=0.05)
    assert_weights(got, ref, exact=False)


# -- 16-mixed, automatic optimization -------------------------------------------------------------------
@pytest.mark.parametrize("clip", ["none", "norm_inactive", "norm", "value"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_16_mixed_automatic_matches_lightning(optimizer: str, clip: str) -> None:
    clip_args = CLIPS[clip]
    clip_kwargs = {} if clip_args is None else dict(gradient_clip_val=clip_args[0], gradient_clip_algorithm=clip_args[1])
    ref = seeded(lambda: Regressor(optimizer, INF_BATCHES))
    ref_trainer = fit(ref, lightnings16(), **clip_kwargs)
    got = seeded(lambda: Regressor(optimizer, INF_BATCHES))
    trainer = fit(got, ours16(), **clip_kwargs)
    assert_weights(got, ref, exact=clip != "norm")
    # The inf batches were skipped and backed the scale off, as under Lightning.
    assert trainer.precision_plugin.scaler.get_scale() == ref_trainer.precision_plugin.scaler.get_scale() == INIT_SCALE / 4


@pytest.mark.parametrize("optimizer", ["sgd", "adamw_fused"])
def test_16_mixed_gradient_accumulation(optimizer: str) -> None:
    """accumulate_grad_batches: scaled gradients add up over two batches, then one unscale + clip."""
    clip = dict(gradient_clip_val=1e3) if optimizer == "adamw_fused" else dict(gradient_clip_val=0.05)
    ref = seeded(lambda: Regressor(optimizer, INF_BATCHES))
    if optimizer == "adamw_fused":  # Lightning refuses any clip with it; one that never acts, then
        ref_trainer = fit(ref, lightnings16(), accumulate_grad_batches=2)
    else:
        ref_trainer = fit(ref, lightnings16(), accumulate_grad_batches=2, **clip)
    got = seeded(lambda: Regressor(optimizer, INF_BATCHES))
    trainer = fit(got, ours16(), accumulate_grad_batches=2, **clip)
    assert trainer.global_step == ref_trainer.global_step == 4
    assert_weights(got, ref, exact=optimizer == "adamw_fused")
    assert trainer.precision_plugin.scaler.state_dict() == ref_trainer.precision_plugin.scaler.state_dict()


def test_16_mixed_fused_optimizer() -> None:
    """Fused AdamW: without clipping, bitwise Lightning's result; with clipping (which Lightning
    refuses), a hand-written GradScaler loop's."""
    ref = seeded(lambda: Regressor("adamw_fused", INF_BATCHES))
    fit(ref, lightnings16())
    got = seeded(lambda: Regressor("adamw_fused", INF_BATCHES))
    fit(got, ours16())
    assert_weights(got, ref, exact=True)

    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        fit(seeded(lambda: Regressor("adamw_fused")), lightnings16(), gradient_clip_val=0.05)
    for clip in [(0.05, "norm"), (0.01, "value")]:
        scaler = torch_scaler()
        ref = seeded(lambda: Regressor("adamw_fused", INF_BATCHES))
        torch_automatic(ref, "16-mixed", clip, scaler)
        got = seeded(lambda: Regressor("adamw_fused", INF_BATCHES))
        trainer = fit(got, ours16(), gradient_clip_val=clip[0], gradient_clip_algorithm=clip[1])
        assert_weights(got, ref, exact=False)
        assert trainer.precision_plugin.scaler.get_scale() == scaler.get_scale() == INIT_SCALE / 4


@pytest.mark.parametrize("optimizer", ["sgd", "adamw_fused"])
def test_16_mixed_clip_by_norm_is_one_read_pass(optimizer: str) -> None:
    """Clip-by-norm of scaled gradients, per step: one fused unscale + inf check + norm pass, then
    one scaling pass (both in the one unscale_clip_inplace op), or no scaling pass with a fused
    optimizer; torch's unscale never runs."""
    module = seeded(lambda: Regressor(optimizer))
    with OpLog() as log:
        trainer = fit(module, ours16(), gradient_clip_val=0.05)
    steps = trainer.global_step
    assert steps == 8
    fused = optimizer == "adamw_fused"
    assert log.counts["mopt_fast.unscale_norm"] == (steps if fused else 0)
    assert log.counts["mopt_fast.unscale_clip_inplace"] == (0 if fused else steps)
    assert log.counts["mopt_fast.scale_inplace"] == 0
    assert log.counts["mopt_fast.unscale_inplace"] == 0
    assert log.counts["aten._amp_foreach_non_finite_check_and_unscale_"] == 0


class RecordsGradNorms(Regressor):
    """Reads the gradients in on_before_optimizer_step, where Lightning shows them unscaled."""

    def __init__(self, optimizer: str) -> None:
        super().__init__(optimizer, INF_BATCHES)
        self.norms: list[float] = []

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.norms.append(torch.cat([p.grad.flatten() for p in self.parameters()]).norm().item())


@pytest.mark.parametrize("optimizer", ["sgd", "adamw_fused"])
def test_16_mixed_hooks_see_the_gradients_lightning_shows(optimizer: str) -> None:
    """Unscaled for a non-fused optimizer, still scaled for a fused one (which unscales in its step)."""
    ref = seeded(lambda: RecordsGradNorms(optimizer))
    fit(ref, lightnings16())
    got = seeded(lambda: RecordsGradNorms(optimizer))
    fit(got, ours16())
    assert len(ref.norms) == 8
    torch.testing.assert_close(torch.tensor(got.norms), torch.tensor(ref.norms), rtol=0, atol=0, equal_nan=True)
    assert_weights(got, ref, exact=True)


class ZeroesInHook(Regressor):
    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=False)


def test_16_mixed_skipped_training_steps_with_clipping() -> None:
    """training_step returning None skips backward and step; the clip hook still runs (on zeroed
    gradients here) and must neither unscale nor update: the scaler stays as Lightning's."""
    ref = seeded(lambda: ZeroesInHook("sgd", none_batches=(1, 4)))
    ref_trainer = fit(ref, lightnings16(), gradient_clip_val=0.05)
    got = seeded(lambda: ZeroesInHook("sgd", none_batches=(1, 4)))
    trainer = fit(got, ours16(), gradient_clip_val=0.05)
    assert trainer.global_step == ref_trainer.global_step
    assert_weights(got, ref, exact=False)
    assert trainer.precision_plugin.scaler.state_dict() == ref_trainer.precision_plugin.scaler.state_dict()


class ClipsTwice(Regressor):
    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        self.clip_gradients(optimizer, gradient_clip_val=0.05, gradient_clip_algorithm="norm")
        self.clip_gradients(optimizer, gradient_clip_val=0.002, gradient_clip_algorithm="value")


def test_16_mixed_fused_optimizer_clipped_twice_in_one_step() -> None:
    """The first clip leaves its factor in the fused optimizer's grad_scale; the second needs the
    gradients as they are, so the factor is applied first."""
    module = seeded(lambda: ClipsTwice("adamw_fused", INF_BATCHES))
    fit(module, ours16())
    ref = seeded(lambda: ClipsTwice("adamw_fused", INF_BATCHES))
    scaler = torch_scaler()
    opt = ref.configure_optimizers()
    params = list(ref.parameters())
    for batch_idx, batch in enumerate(loader()):
        with autocast("16-mixed"):
            loss = ref.training_step(batch, batch_idx)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 0.05)
        torch.nn.utils.clip_grad_value_(params, 0.002)
        scaler.step(opt)
        scaler.update()
    assert_weights(module, ref, exact=False)


# -- 16-mixed, manual optimization: Lightning's issue #18089 ------------------------------------------
def scaler_pair() -> tuple[GradScaler, torch.amp.GradScaler]:
    """mopt_fast's and torch's scalers, growing after 3 clean updates: how often update() runs shows."""
    return GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=3), torch_scaler(growth_interval=3)


@pytest.mark.parametrize("clip", [(0.5, "norm"), (0.01, "value")], ids=["norm", "value"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw_fused"])
def test_manual_clip_gradients_matches_torch_recipe(optimizer: str, clip: tuple[float, str]) -> None:
    ours, torchs = scaler_pair()
    ref = seeded(lambda: TwoOptimizers(optimizer, clip))
    torch_two_optimizers(ref, torchs)
    got = seeded(lambda: TwoOptimizers(optimizer, clip, clip_before_backward=True))
    fit(got, MixedPrecision("16-mixed", "cpu", ours))
    assert_weights(got, ref, exact=False)
    assert ours.state_dict() == torchs.state_dict()  # scale and growth tracker: one update per iteration

    if optimizer == "adamw_fused":  # Lightning refuses to clip for fused optimizers
        with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
            fit(seeded(lambda: TwoOptimizers(optimizer, clip)), lightnings16())
        return
    # Lightning's own plugin clips the scaled gradients and updates after each step: it ends elsewhere.
    lightning_scaler = scaler_pair()[1]
    theirs = seeded(lambda: TwoOptimizers(optimizer, clip))
    fit(theirs, LightningMixedPrecision("16-mixed", "cpu", lightning_scaler))
    assert not torch.allclose(theirs.a[0].weight, ref.a[0].weight, rtol=1e-3)
    assert lightning_scaler.state_dict() != torchs.state_dict()


def test_manual_without_clipping_updates_once_per_iteration() -> None:
    ours, torchs = scaler_pair()
    ref = seeded(lambda: TwoOptimizers("adamw", None))
    torch_two_optimizers(ref, torchs)
    got = seeded(lambda: TwoOptimizers("adamw", None))
    fit(got, MixedPrecision("16-mixed", "cpu", ours))
    assert_weights(got, ref, exact=True)
    assert ours.state_dict() == torchs.state_dict()


class StepsTwice(pl.LightningModule):
    """Manual optimization stepping one optimizer on each half of the batch."""

    def __init__(self, inf_half: tuple[int, int]) -> None:
        super().__init__()
        self.net = net()
        self.inf_half = inf_half
        self.automatic_optimization = False

    def half_loss(self, batch: Any, batch_idx: int, half: int) -> torch.Tensor:
        x, y = (t[half * 4:(half + 1) * 4] for t in batch)
        loss = nn.functional.mse_loss(self.net(x).float(), y)
        return loss * math.inf if (batch_idx, half) == self.inf_half else loss

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        for half in (0, 1):
            opt.zero_grad()
            self.manual_backward(self.half_loss(batch, batch_idx, half))
            self.clip_gradients(opt, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
            opt.step()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return OPTIMIZERS["sgd"](self.parameters())


def test_manual_one_optimizer_stepping_twice_per_iteration() -> None:
    """Both steps use the scale their gradients were made with; one update at the end of the
    iteration backs off when either step found an inf. Written out with torch's own AMP kernels
    (torch's GradScaler refuses a second step before update())."""
    inf_half = (3, 0)
    got = seeded(lambda: StepsTwice(inf_half))
    ours = GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=3)
    fit(got, MixedPrecision("16-mixed", "cpu", ours))

    ref = seeded(lambda: StepsTwice(inf_half))
    opt = ref.configure_optimizers()
    params = list(ref.parameters())
    scale, growth_tracker = torch.full((), INIT_SCALE), torch.zeros((), dtype=torch.int32)
    for batch_idx, batch in enumerate(loader()):
        found_any = torch.zeros(())
        with autocast("16-mixed"):
            for half in (0, 1):
                opt.zero_grad()
                (ref.half_loss(batch, batch_idx, half) * scale).backward()
                found = torch.zeros(())
                torch._amp_foreach_non_finite_check_and_unscale_([p.grad for p in params], found, scale.reciprocal())
                torch.nn.utils.clip_grad_norm_(params, 0.5)
                if not found.item():
                    opt.step()
                found_any += found
        torch._amp_update_scale_(scale, growth_tracker, found_any, 2.0, 0.5, 3)
    assert_weights(got, ref, exact=False)
    assert ours.get_scale() == scale.item() and ours._get_growth_tracker() == growth_tracker.item()


class ClipsWithoutStepping(TwoOptimizers):
    """`b` is clipped but not stepped on odd batches, stepped without a clip on even ones."""

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_a, opt_b = self.optimizers()
        opt_a.zero_grad()
        self.manual_backward(self.loss_a(batch, batch_idx))
        opt_a.step()
        opt_b.zero_grad()
        self.manual_backward(self.loss_b(batch))
        if batch_idx % 2:
            self.clip_gradients(opt_b, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
        else:
            opt_b.step()


def test_manual_clip_without_a_step_leaves_no_factor_behind() -> None:
    """A fused optimizer clipped and not stepped: its clip factor must not reach its next step."""
    ours, torchs = scaler_pair()
    got = seeded(lambda: ClipsWithoutStepping("adamw_fused", None))
    fit(got, MixedPrecision("16-mixed", "cpu", ours))
    ref = seeded(lambda: ClipsWithoutStepping("adamw_fused", None))
    opt_a, opt_b = ref.configure_optimizers()
    for batch_idx, batch in enumerate(loader()):
        with autocast("16-mixed"):
            opt_a.zero_grad()
            torchs.scale(ref.loss_a(batch, batch_idx)).backward()
            torchs.step(opt_a)
            opt_b.zero_grad()
            torchs.scale(ref.loss_b(batch)).backward()
            if batch_idx % 2:
                torchs.unscale_(opt_b)
                torch.nn.utils.clip_grad_norm_(ref.b.parameters(), 0.5)
            else:
                torchs.step(opt_b)
        torchs.update()
    assert_weights(got, ref, exact=False)
    assert ours.state_dict() == torchs.state_dict()


# -- fused zero_grad through Lightning's optimizer wrapper ---------------------------------------------
class ZeroesManually(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = net()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        opt.zero_grad(set_to_none=False)
        x, y = batch
        self.manual_backward(nn.functional.mse_loss(self.net(x), y))
        opt.step()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return OPTIMIZERS["sgd"](self.parameters())


@pytest.mark.parametrize("module", [ZeroesManually, ZeroesInHook], ids=["manual_wrapper", "optimizer_zero_grad"])
def test_zero_grad_without_none_is_fused(module: type) -> None:
    ref = seeded(module)
    fit(ref)
    got = seeded(module)
    with OpLog() as log:
        trainer = fit(got, Precision())
    assert_weights(got, ref, exact=True)
    assert all(p.grad is not None for p in got.parameters())  # zeroed, not set to None
    # The first zero_grad finds no gradient; each later one is one fused call.
    assert log.counts["mopt_fast.zero_inplace"] == trainer.global_step - 1 == 7
    assert log.counts["aten.zero_"] == 0
    # The optimizer is still its class by name and isinstance, and pickles as the plain class.
    opt = trainer.optimizers[0]
    assert isinstance(opt, torch.optim.SGD) and type(opt).__name__ == "SGD"
    for clone in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        assert type(clone) is torch.optim.SGD
        assert clone.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


class OwnZeroGrad(torch.optim.SGD):
    calls = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        OwnZeroGrad.calls += 1
        super().zero_grad(set_to_none)


def test_an_optimizer_with_its_own_zero_grad_keeps_it() -> None:
    class Module(ZeroesInHook):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return OwnZeroGrad(self.parameters(), lr=0.05)

    OwnZeroGrad.calls = 0
    trainer = fit(seeded(lambda: Module("sgd")), Precision())
    assert type(trainer.optimizers[0]) is OwnZeroGrad and OwnZeroGrad.calls == 8


# -- checkpoints, arguments, errors ---------------------------------------------------------------------
def test_resumes_the_loss_scale_from_lightnings_checkpoint(tmp_path: Any) -> None:
    """The plugin is named MixedPrecision, as Lightning's: the checkpoint key of the scaler state."""
    trainer = fit(seeded(lambda: Regressor("sgd", INF_BATCHES)), lightnings16())
    path = str(tmp_path / "lightning.ckpt")
    trainer.save_checkpoint(path)
    saved_scale = trainer.precision_plugin.scaler.get_scale()
    assert saved_scale == INIT_SCALE / 4

    class Resumed(Regressor):
        def on_train_start(self) -> None:
            self.scale_at_start = self.trainer.precision_plugin.scaler.get_scale()

    resumed = seeded(lambda: Resumed("sgd"))
    fit(resumed, ours16(), max_epochs=2, ckpt_path=path)
    assert resumed.scale_at_start == saved_scale


def test_precision_plugin_spellings() -> None:
    assert type(precision_plugin()) is Precision
    for spelling in ("16-mixed", "16", 16):
        plugin = precision_plugin(spelling, "cpu")
        assert type(plugin) is MixedPrecision and plugin.precision == "16-mixed" and isinstance(plugin.scaler, GradScaler)
    for spelling in ("bf16-mixed", "bf16"):
        plugin = precision_plugin(spelling, "cpu")
        assert plugin.precision == "bf16-mixed" and plugin.scaler is None
    for spelling in ("16-true", "bf16-true"):
        plugin = precision_plugin(spelling)
        assert type(plugin) is HalfPrecision and plugin.precision == spelling
        assert isinstance(plugin, LightningHalfPrecision)
    assert HalfPrecision().precision == LightningHalfPrecision().precision  # the same default
    with pytest.raises(ValueError, match="not supported"):
        precision_plugin("64-true")


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="needs a mopt_fast.amp.GradScaler"):
        MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))
    with pytest.raises(MisconfigurationException, match="does not use a scaler"):
        MixedPrecision("bf16-mixed", "cpu", GradScaler("cpu"))
    with pytest.raises(ValueError, match="Precision must be"):
        MixedPrecision("32-true", "cpu")


class WithLBFGS(Regressor):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.LBFGS(self.parameters())


def test_16_mixed_lbfgs_is_refused_before_anything_changes() -> None:
    module = seeded(lambda: WithLBFGS())
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(MisconfigurationException, match="LBFGS"):
        fit(module, ours16())
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())
