"""Precision plugins: where autocast, loss scaling, gradient clipping and the optimizer step meet.

One plugin is shared by every optimizer a Trainer drives (or owned by one standalone
`LightningOptimizer`). It answers four questions:

- `forward_context()`: what the forward passes run under (autocast for the mixed modes);
- `backward(loss)`: how a loss is back-propagated (scaled first under 16-mixed);
- `clip_gradients(optimizer, value, algorithm)`: clipping, on mopt_fast's fused kernels;
- `optimizer_step(optimizer, closure, ...)`: the step, with the hooks and clipping that must see
  the gradients between the closure and the update.

With a `mopt_fast.StepGuard` (``step_guard=``, not under 16-mixed, whose loss scaler skips
non-finite steps already), the step is skipped on the device when a gradient is inf/NaN; when the
step also clips by norm, the guard takes the clip's norm and reads no gradient itself.

Under 16-mixed the unscale, inf/NaN check and clip-by-norm run as one read pass
(`mopt_fast.amp.GradScaler.unscale_clip_grad_norm_`); with torch's fused Adam/AdamW/SGD the
factor `scale / clip_coef` and `found_inf` are handed to the optimizer, so no gradient is rewritten
and nothing waits on the device. `scaler.update()` runs once per training iteration
(`end_iteration`), not once per optimizer.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch.amp.grad_scaler import OptState

from mopt_fast.amp import GradScaler, _is_fused
from mopt_fast.exceptions import not_built
from mopt_fast.functional import _clip_grad_norm, clip_grad_value_, forget_logged_norm
from mopt_fast.step_guard import ClipNorm, StepGuard, check_plugin_guard

__all__ = ["Precision", "MixedPrecision", "HalfPrecision", "DoublePrecision", "make_precision", "PRECISIONS",
           "CLIP_ALGORITHMS"]

#: Accepted spellings of each precision setting, as Lightning accepts them.
PRECISIONS = {
    "32-true": "32-true", "32": "32-true", 32: "32-true",
    "16-mixed": "16-mixed", "16": "16-mixed", 16: "16-mixed",
    "bf16-mixed": "bf16-mixed", "bf16": "bf16-mixed",
    "16-true": "16-true", "bf16-true": "bf16-true",
    "64-true": "64-true", "64": "64-true", 64: "64-true",
}
CLIP_ALGORITHMS = ("norm", "value")


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _noop_closure() -> None:
    return None


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Floating-point tensors made inside (``torch.zeros(3)``, a layer's parameters) get `dtype`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _floating_to(data: Any, dtype: torch.dtype) -> Any:
    """`data` (a tensor, or lists, tuples, named tuples, dicts of them, nested) with its
    floating-point tensors cast to `dtype`; integer tensors and other objects as they are."""
    if isinstance(data, torch.Tensor):
        return data.to(dtype) if torch.is_floating_point(data) else data
    if isinstance(data, Mapping):
        items = {key: _floating_to(value, dtype) for key, value in data.items()}
        return items if type(data) is dict else type(data)(items)  # type: ignore[call-arg]
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # a named tuple
        return type(data)(*(_floating_to(value, dtype) for value in data))
    if isinstance(data, (list, tuple)):
        return type(data)(_floating_to(value, dtype) for value in data)
    return data


class Precision:
    """32-true: no autocast, no loss scaling.

    Args:
        step_guard: a `mopt_fast.StepGuard`: every optimizer step is skipped on the device when a
            gradient is inf/NaN (or the norm is above the guard's ``max_total_norm``), and the
            count of skipped steps is logged as ``StepGuard.metric_name``. Off by default, as in
            Lightning, which has no such behaviour. ``max_total_norm`` is compared with the 2-norm
            of the gradients before the step's clip by norm (``gradient_clip_val``,
            ``configure_gradient_clipping``); without one, with the gradients the guard finds.
    """

    name = "32-true"
    scaler: GradScaler | None = None
    #: The dtype of the module and of the batches' floating-point tensors ("*-true" other than 32),
    #: None: both left as they are.
    module_dtype: torch.dtype | None = None
    step_guard: StepGuard | None = None
    # While a guarded step runs its hooks: the norm the clip by norm computed, for the guard.
    _guarding = False
    _clip_norm: ClipNorm | None = None

    def __init__(self, step_guard: StepGuard | None = None) -> None:
        self.step_guard = check_plugin_guard(step_guard)

    def forward_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module as this precision trains it (before its optimizers are made)."""
        return module

    def tensor_init_context(self) -> contextlib.AbstractContextManager:
        """What `Trainer.init_module` and `configure_model` run under."""
        return contextlib.nullcontext()

    def convert_input(self, data: Any) -> Any:
        """A batch as this precision feeds it to the step (before the batch-transfer hooks)."""
        return data

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        self.scale_loss(loss).backward(*args, **kwargs)

    def clip_gradients(self, optimizer: torch.optim.Optimizer, clip_val: float, algorithm: str) -> None:
        """Clip `optimizer`'s gradients; a value ≤ 0 does nothing (as Lightning)."""
        if clip_val <= 0:
            return
        params = _optimizer_params(optimizer)
        if algorithm == "value":
            clip_grad_value_(params, clip_val)
            self._clip_norm = None  # the gradients changed since any norm
        else:  # the norm grad_norm logged in this step's hooks, if it did, is reused
            total = _clip_grad_norm(params, float(clip_val), 2.0, False, [], reuse_logged=True)
            self._clip_norm = ClipNorm(optimizer, total) if self._guarding else None

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        closure: Callable[[], Any] | None,
        before_step: Callable[[], None] | None = None,
        skip_if_no_loss: bool = False,
        **kwargs: Any,
    ) -> Any:
        """`optimizer.step` with `before_step` (hooks, then automatic clipping) run after the
        closure, inside the step: the closure computes the gradients, so the hooks see them. An
        optimizer that calls its closure several times (LBFGS) runs the hooks each time."""
        forget_logged_norm()  # only norms logged in this step's hooks may spare the clip a pass
        if self.step_guard is not None:
            return self._guarded_step(self.step_guard, optimizer, closure, before_step, **kwargs)
        if before_step is None:
            # Nothing runs between closure and update: hand the closure (or none) straight over.
            return optimizer.step(closure=closure, **kwargs) if closure is not None else optimizer.step(**kwargs)
        closure = closure or _noop_closure

        def closure_then_hooks() -> Any:
            result = closure()
            before_step()
            return result

        return optimizer.step(closure=closure_then_hooks, **kwargs)

    def _guarded_step(self, guard: StepGuard, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None,
                      before_step: Callable[[], None] | None, **kwargs: Any) -> Any:
        """The closure, the hooks, then the guard's step. A clip by norm among the hooks hands its
        norm to the guard, which then reads no gradient (one read pass per step for clip and guard
        together), unless a gradient was written after the clip (see ClipNorm)."""
        if isinstance(optimizer, torch.optim.LBFGS):
            raise ValueError(
                "A step guard and LBFGS do not go together: LBFGS re-evaluates its closure inside step(), "
                "where no guard can look at the gradients. Use another optimizer or no step_guard."
            )
        self._guarding, self._clip_norm = True, None
        try:
            result = (closure or _noop_closure)()
            if before_step is not None:
                before_step()
            handed = self._clip_norm
        finally:
            self._guarding, self._clip_norm = False, None
        total = handed.total_for(optimizer) if handed is not None else None
        if not any(p.grad is not None for p in _optimizer_params(optimizer)):
            optimizer.step(**kwargs)  # nothing to guard (training_step returned None): as unguarded
        else:
            guard.step(optimizer, total_norm=total, **kwargs)
        return result

    def end_iteration(self) -> None:
        """Called once per training iteration, after every optimizer has stepped."""

    def state_dict(self) -> dict[str, Any]:
        return {"step_guard": self.step_guard.state_dict()} if self.step_guard is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.step_guard is not None and "step_guard" in state:
            self.step_guard.load_state_dict(state["step_guard"])


class MixedPrecision(Precision):
    """16-mixed (autocast to fp16 with loss scaling) or bf16-mixed (autocast to bf16, no scaling).

    Under FSDP2 (and DDP) the inf check of 16-mixed is the same on every rank: see mopt_fast/amp.py
    (one packed all-reduce per step under FSDP2 for norm and found_inf, none added under DDP).

    Args:
        skip_nonfinite_loss: 16-mixed only: also skip an optimizer step (on every rank) when the
            loss the closure returned is inf/NaN on any rank, even if the gradients are finite.
            The flag rides in the step's one all-reduce; nothing is read on the host for it.
        step_guard: bf16-mixed only: see `Precision`.
    """

    def __init__(self, precision: str, device_type: str, scaler: GradScaler | None = None,
                 skip_nonfinite_loss: bool = False, step_guard: StepGuard | None = None) -> None:
        if precision not in ("16-mixed", "bf16-mixed"):
            raise ValueError(f"MixedPrecision takes '16-mixed' or 'bf16-mixed', got {precision!r}")
        super().__init__(step_guard)
        if step_guard is not None and precision == "16-mixed":
            raise not_built(
                "MixedPrecision('16-mixed', step_guard=...)",
                "16-mixed's loss scaler already skips steps with inf/NaN gradients; the guard is for "
                "'bf16-mixed' and the '*-true' precisions",
            )
        self.name = precision
        self.device_type = device_type
        self.dtype = torch.float16 if precision == "16-mixed" else torch.bfloat16
        if precision == "16-mixed":
            self.scaler = scaler if scaler is not None else GradScaler(device_type)
        elif scaler is not None:
            raise ValueError("bf16-mixed does not scale the loss: pass no scaler")
        if skip_nonfinite_loss and self.scaler is None:
            raise not_built(
                "MixedPrecision('bf16-mixed', skip_nonfinite_loss=True)",
                "the step skipping rides on the loss scaler's found_inf: use '16-mixed'",
            )
        self.skip_nonfinite_loss = skip_nonfinite_loss
        # Fused optimizers whose clip factor went into their grad_scale, until they step.
        self._folded: dict[int, torch.optim.Optimizer] = {}

    def forward_context(self) -> contextlib.AbstractContextManager:
        # No weight-cast cache: in manual optimization a step inside training_step changes the
        # weights, and a cached low-precision copy would be stale for the next forward.
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=False)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def clip_gradients(self, optimizer: torch.optim.Optimizer, clip_val: float, algorithm: str) -> None:
        """Under 16-mixed the gradients are unscaled before they are clipped (Lightning clips the
        scaled gradients, its issue #18089): clip-by-norm is the fused unscale + inf-check + norm
        read pass, then one scaling pass, or none for a fused torch optimizer."""
        scaler = self.scaler
        if scaler is None or clip_val <= 0 or not scaler.is_enabled():
            return super().clip_gradients(optimizer, clip_val, algorithm)
        stage = scaler._stage(optimizer)
        if stage is OptState.STEPPED:
            raise RuntimeError("clip_gradients() was called after this optimizer's step() in the same iteration")
        if stage is OptState.READY:
            if algorithm == "norm":
                scaler.unscale_clip_grad_norm_(optimizer, clip_val)
                if _is_fused(optimizer):
                    self._folded[id(optimizer)] = optimizer
                return
            scaler.unscale_(optimizer)
        elif getattr(optimizer, "grad_scale", None) is not None:
            # The earlier clip left the gradients scaled and gave the factor to the optimizer.
            raise RuntimeError(
                "clip_gradients() was called twice for the same optimizer step under 16-mixed with a "
                "fused optimizer; clip once per step"
            )
        elif algorithm == "norm":
            # unscale_() ran (for the hooks); under FSDP2 its found_inf, checked on this rank's
            # shards only, waits unreduced: the norm's all-reduce carries it (one per step).
            _clip_grad_norm(_optimizer_params(optimizer), clip_val, 2.0, False, scaler.take_unreduced(optimizer),
                            reuse_logged=True)
            return
        super().clip_gradients(optimizer, clip_val, algorithm)

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        closure: Callable[[], Any] | None,
        before_step: Callable[[], None] | None = None,
        skip_if_no_loss: bool = False,
        **kwargs: Any,
    ) -> Any:
        scaler = self.scaler
        if scaler is None:
            return super().optimizer_step(optimizer, closure, before_step, skip_if_no_loss, **kwargs)
        forget_logged_norm()  # only norms logged in this step's hooks may spare the clip a pass
        if isinstance(optimizer, torch.optim.LBFGS):
            raise ValueError(
                "16-mixed and LBFGS do not go together: LBFGS re-evaluates its closure inside step(), "
                "where the loss scale cannot be applied. Use precision='32-true' or 'bf16-mixed'."
            )
        closure_result = (closure or _noop_closure)()
        if skip_if_no_loss and closure_result is None:
            return None  # automatic optimization, training_step returned None: no backward, no step
        if self.skip_nonfinite_loss and isinstance(closure_result, torch.Tensor):
            scaler.watch_loss(closure_result)
        if scaler._stage(optimizer) is OptState.STEPPED:
            # A second step of this optimizer in one iteration: its new gradients carry the scale
            # not yet updated, so it steps with that scale and both steps count in the update.
            scaler._step_again(optimizer)
        if before_step is not None:
            if scaler._stage(optimizer) is OptState.READY and not _is_fused(optimizer):
                # The hooks expect unscaled gradients; a fused optimizer keeps its scaled ones
                # (it unscales inside its own step), so only non-fused ones pay this pass here.
                scaler.unscale_(optimizer)
            before_step()
        result = scaler.step(optimizer, **kwargs)
        self._folded.pop(id(optimizer), None)
        return result

    def end_iteration(self) -> None:
        """Once per training iteration: update the loss scale if any optimizer was unscaled or
        stepped. A clip without a step counts too: otherwise the optimizer would stay marked
        unscaled and the next iteration would clip its new, still-scaled gradients."""
        if self.scaler is not None:
            self.scaler._end_iteration(self._folded)

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else super().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        super().load_state_dict(state)


class HalfPrecision(Precision):
    """16-true or bf16-true: the module's parameters and buffers in fp16/bf16, the batches'
    floating-point tensors cast to it, and tensors made during the forward in it — no autocast, no
    loss scaling (Lightning's HalfPrecision). 64-true is `DoublePrecision`."""

    def __init__(self, precision: str = "16-true", step_guard: StepGuard | None = None) -> None:
        dtypes = {"16-true": torch.float16, "bf16-true": torch.bfloat16, "64-true": torch.float64}
        if precision not in dtypes:
            raise ValueError(f"{type(self).__name__} takes one of {sorted(dtypes)}, got {precision!r}")
        super().__init__(step_guard)
        self.name = precision
        self.module_dtype = dtypes[precision]

    def forward_context(self) -> contextlib.AbstractContextManager:
        assert self.module_dtype is not None
        return _default_dtype(self.module_dtype)

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(dtype=self.module_dtype)

    def tensor_init_context(self) -> contextlib.AbstractContextManager:
        assert self.module_dtype is not None
        return _default_dtype(self.module_dtype)

    def convert_input(self, data: Any) -> Any:
        assert self.module_dtype is not None
        return _floating_to(data, self.module_dtype)


class DoublePrecision(HalfPrecision):
    """64-true: HalfPrecision's rules in float64 (Lightning's DoublePrecision)."""

    def __init__(self, precision: str = "64-true", step_guard: StepGuard | None = None) -> None:
        super().__init__(precision, step_guard)


def normalize_precision(precision: Any) -> str:
    try:
        return PRECISIONS[precision]
    except (KeyError, TypeError):
        raise ValueError(
            f"precision={precision!r} is not supported; use one of '32-true', '16-mixed', 'bf16-mixed', '16-true',"
            " 'bf16-true', '64-true'"
        ) from None


def make_precision(precision: Any, device_type: str) -> Precision:
    """The plugin for a precision setting on a device type ("cpu", "cuda")."""
    if isinstance(precision, Precision):
        return precision
    name = normalize_precision(precision)
    if name == "32-true":
        return Precision()
    if name == "64-true":
        return DoublePrecision()
    if name.endswith("-true"):
        return HalfPrecision(name)
    if name == "16-mixed" and device_type == "cpu":
        warnings.warn(
            "precision='16-mixed' on the CPU: AMP with fp16 is not supported there, using "
            "'bf16-mixed' instead (as Lightning does).",
            stacklevel=3,
        )
        name = "bf16-mixed"
    return MixedPrecision(name, device_type)

