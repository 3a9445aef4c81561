"""One training batch, after the fit loop has fetched it and run on_train_batch_start: the
`training_step` call and the optimization around it.

- automatic optimization (`run_automatic`): training_step → zero_grad (first batch of an
  accumulation window) → backward, as the closure `optimizer_step` calls; or, inside an
  accumulation window, the closure alone under `no_sync`;
- manual optimization (`run_manual`): training_step alone; the module calls `manual_backward`
  and `optimizer.step()` itself, and every wrapper step is counted as a global step.

Both reach the precision plugin (mopt_fast/precision.py) through `backward` and `optimizer_step`:
the three files a training step passes through are fit_loop.py, this one and precision.py.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from mopt_fast.core.optimizer import LightningOptimizer
    from mopt_fast.trainer.fit_loop import FitLoop
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["backward", "make_before_update", "optimizer_step", "run_automatic", "run_manual"]


def run_automatic(trainer: Trainer, loop: FitLoop, args: tuple) -> dict[str, Any]:
    """training_step, backward and (unless accumulating) the optimizer step of one batch."""
    wrapper = trainer.lightning_optimizers[0]
    closure = _AutomaticClosure(trainer, loop, args, wrapper)
    if loop.should_accumulate():
        with trainer.strategy.block_grad_sync(True):  # no all-reduce until the stepping batch
            closure()
    else:
        trainer.hooks.call_module("optimizer_step", loop.epochs_completed, loop.batch_idx, wrapper, closure)
        loop.auto_steps += 1
    return closure.outputs


def run_manual(trainer: Trainer, loop: FitLoop, args: tuple) -> dict[str, Any]:
    """training_step of one batch; the steps it takes through the optimizer wrappers are counted."""
    wrappers = trainer.lightning_optimizers
    count = loop.count_manual_step
    for w in wrappers:
        w._on_after_step = count
    try:
        out = trainer.hooks.run_as("training_step", _forward, trainer, trainer.lightning_module, args)
    finally:
        for w in wrappers:
            w._on_after_step = None
    if out is None:
        return {}
    if isinstance(out, torch.Tensor):
        return {"loss": out}
    if isinstance(out, Mapping):
        return dict(out)
    raise MisconfigurationException(
        "In manual optimization, `training_step` must either return a Tensor or have no return "
        f"(a Mapping is also accepted); it returned {type(out).__name__}."
    )


def _forward(trainer: Trainer, module: Any, args: tuple) -> Any:
    """The module's training_step through the strategy, under the precision plugin's autocast."""
    with trainer.precision_plugin.forward_context():
        return trainer.strategy.training_step(module, args)


class _AutomaticClosure:
    """training_step → zero_grad (first batch of an accumulation window) → backward, as the
    closure that `optimizer.step` calls (LBFGS may call it several times)."""

    __slots__ = ("trainer", "loop", "args", "wrapper", "outputs")

    def __init__(self, trainer: Trainer, loop: FitLoop, args: tuple, wrapper: LightningOptimizer) -> None:
        self.trainer = trainer
        self.loop = loop
        self.args = args
        self.wrapper = wrapper
        self.outputs: dict[str, Any] = {}

    def __call__(self) -> torch.Tensor | None:
        trainer = self.trainer
        module = trainer.lightning_module
        out = trainer.hooks.run_as("training_step", _forward, trainer, module, self.args)
        extra: dict[str, Any]
        if out is None:
            loss, extra = None, {}
        elif isinstance(out, torch.Tensor):
            loss, extra = out, {}
        elif isinstance(out, Mapping):
            if "loss" not in out:
                raise MisconfigurationException(
                    "In automatic_optimization, when `training_step` returns a dict, the 'loss' key needs to be present"
                )
            loss, extra = out["loss"], {k: v for k, v in out.items() if k != "loss"}
        else:
            raise MisconfigurationException(
                "In automatic optimization, `training_step` must return a Tensor, a dict, or None (where the step "
                "will be skipped)."
            )
        n = trainer.accumulate_grad_batches
        if loss is not None and n > 1:
            loss = loss / n
        batch_idx = self.loop.batch_idx
        skip_backward = self.loop._skip_backward  # no zero_grad or backward (Lightning's SWA sets it)
        if batch_idx % n == 0 and not skip_backward:
            raw = self.wrapper._optimizer
            trainer.hooks.call("on_before_zero_grad", raw)
            trainer.hooks.call_module("optimizer_zero_grad", self.loop.epochs_completed, batch_idx, raw)
        if loss is not None:
            if not skip_backward:
                backward(trainer, loss, self.wrapper)
            detached = loss.detach()
            self.outputs = {"loss": detached, **extra}
            return detached
        self.outputs = {}
        return None


def backward(trainer: Trainer, loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> None:
    """on_before_backward → the precision plugin's loss scaling → the module's `backward` hook →
    on_after_backward (`manual_backward` and the automatic closure both come here)."""
    trainer.hooks.call("on_before_backward", loss)
    loss = trainer.precision_plugin.scale_loss(loss)
    trainer.strategy.before_backward(trainer.lightning_module, loss)
    trainer.hooks.call_module("backward", loss, *args, **kwargs)
    trainer.hooks.call("on_after_backward")


def optimizer_step(trainer: Trainer, wrapper: LightningOptimizer, closure: Callable[[], Any] | None,
                   **kwargs: Any) -> Any:
    """`LightningOptimizer.step` under a Trainer: the closure, the hooks between it and the
    update (`make_before_update`), the update, all in the precision plugin."""
    raw = wrapper._optimizer
    before = trainer.before_update.get(id(raw))
    module = trainer.lightning_module
    assert module is not None  # a fit runs with its module attached
    plugin = trainer.precision_plugin
    result = plugin.optimizer_step(raw, closure, before, skip_if_no_loss=module.automatic_optimization, **kwargs)
    guard = plugin.step_guard
    if guard is not None and guard.skipped_steps is not None and not trainer.barebones:
        # A device tensor: read when the logger writes, not here.
        module.log(guard.metric_name, guard.skipped_steps, on_step=True, on_epoch=False, reduce_fx="max")
    return result


def make_before_update(trainer: Trainer, raw: torch.optim.Optimizer) -> Callable[[], None] | None:
    """What runs between the closure and the update: on_before_optimizer_step, then (automatic
    optimization) configure_gradient_clipping. None when neither has anything to do."""
    module = trainer.lightning_module
    assert module is not None  # configured at the start of a fit, with the module attached
    hooks = trainer.hooks.has("on_before_optimizer_step")
    clip = module.automatic_optimization and (
        trainer.hooks.module_overrides("configure_gradient_clipping") or bool(trainer.gradient_clip_val)
    )
    if not hooks and not clip:
        return None

    def before_update() -> None:
        if hooks:
            trainer.hooks.call("on_before_optimizer_step", raw)
        if clip:
            trainer.hooks.call_module(
                "configure_gradient_clipping", raw, gradient_clip_val=trainer.gradient_clip_val,
                gradient_clip_algorithm=trainer.gradient_clip_algorithm,
            )

    return before_update
