"""mopt_fast inside Lightning's own Trainer: precision plugins for ``lightning.pytorch.Trainer``.

    import lightning.pytorch as pl
    from mopt_fast.lightning import MixedPrecision

    trainer = pl.Trainer(plugins=[MixedPrecision("16-mixed", "cuda")], gradient_clip_val=1.0)

`Precision` ("32-true") and `MixedPrecision` ("16-mixed", "bf16-mixed") subclass Lightning's plugins
of the same names and keep their hooks, their order and their checkpoint key. What changes:

- clipping runs on mopt_fast's fused kernels (`mopt_fast.clip_grad_norm_`, `clip_grad_value_`);
- under 16-mixed, clipping by norm gradients that are still scaled is one read pass (unscale +
  inf/NaN check + norm) and one scaling pass, or no write pass at all with a fused torch optimizer
  (``fused=True``), whose ``grad_scale`` takes the clip factor;
- fused optimizers may clip (Lightning refuses to, even under bf16-mixed where nothing is scaled);
- manual optimization under 16-mixed: ``self.clip_gradients`` unscales the gradients before it
  clips them (Lightning clips the scaled ones, its issue #18089), and the loss scale is updated once
  per ``training_step``, after every optimizer has stepped (Lightning updates it after each step);
- ``optimizer.zero_grad(set_to_none=False)`` zeroes with one fused kernel per device, whether called
  on Lightning's optimizer wrapper (``self.optimizers()``) or in ``optimizer_zero_grad``;
- an optional `mopt_fast.StepGuard` (``step_guard=``; not under 16-mixed, whose loss scaler does
  it already) skips, on the device, every step whose gradients hold an inf/NaN, and logs the count
  as ``step_guard/skipped_steps``. `HalfPrecision` ("bf16-true", "16-true") takes it too.

Lightning is an optional dependency (``pip install mopt_fast[lightning]``, tested with 2.6):
``import mopt_fast`` never imports it; this module needs it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, SupportsIndex, cast

import torch
from torch.amp.grad_scaler import OptState

try:
    import lightning.pytorch as pl
    from lightning.fabric.plugins.precision.amp import _optimizer_handles_unscaling
    from lightning.fabric.utilities.types import Optimizable
    from lightning.pytorch.core.optimizer import LightningOptimizer
    from lightning.pytorch.plugins.precision import HalfPrecision as _LightningHalfPrecision
    from lightning.pytorch.plugins.precision import MixedPrecision as _LightningMixedPrecision
    from lightning.pytorch.plugins.precision import Precision as _LightningPrecision
    from lightning.pytorch.utilities import GradClipAlgorithmType
    from lightning.pytorch.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.utilities.model_helpers import is_overridden
except ImportError as exc:
    if (exc.name or "").partition(".")[0] != "lightning":
        raise  # Lightning is there but something it needs is not: its own error says what
    raise ImportError(
        "mopt_fast.lightning needs the 'lightning' package (Lightning 2.x), which is not installed; "
        "install it with `pip install lightning`. The rest of mopt_fast works without it.",
        name="lightning",
    ) from exc

from mopt_fast import _validate
from mopt_fast._validate import FLOAT_DTYPES
from mopt_fast.amp import GradScaler, _is_fused
from mopt_fast.exceptions import not_built
from mopt_fast.functional import _clip_grad_norm, clip_grad_value_, forget_logged_norm, scale_grads_, zero_grad_
from mopt_fast.precision import normalize_precision
from mopt_fast.step_guard import ClipNorm, StepGuard, check_plugin_guard

__all__ = ["HalfPrecision", "MixedPrecision", "Precision", "precision_plugin"]


# The mixins' bases, for the type checker: what they are mixed into (at run time they mix into any
# optimizer class, and into Lightning's two precision plugins).
if TYPE_CHECKING:
    _OptimizerBase = torch.optim.Optimizer
    _PluginBase = _LightningPrecision
else:
    _OptimizerBase = _PluginBase = object


# -- fused zero_grad on the optimizers Lightning wraps ----------------------------------------------
class _FusedZeroGrad(_OptimizerBase):
    """Mixed into an optimizer's class by `_use_fused_zero_grad`."""

    _plain_class: type[torch.optim.Optimizer]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``Optimizer.zero_grad``, with ``set_to_none=False`` on mopt_fast's fused kernel."""
        params = [p for group in self.param_groups for p in group["params"]]
        if set_to_none or any(p.grad is not None and p.grad.dtype not in FLOAT_DTYPES for p in params):
            # Setting None has nothing to fuse; dtypes the kernels do not take keep torch's loop.
            return super().zero_grad(set_to_none=set_to_none)
        zero_grad_(params, set_to_none=False)

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple:
        # Pickled and deep-copied as the class it was made from: a class made at run time cannot be
        # pickled by name, and the fused zero_grad belongs to the fit that attached it.
        return _new_optimizer, (self._plain_class,), self.__getstate__()


def _new_optimizer(cls: type[torch.optim.Optimizer]) -> torch.optim.Optimizer:
    """An empty `cls` for unpickling, which then sets its state (pickle's copyreg.__newobj__
    insists on the object's own class)."""
    return cls.__new__(cls)


_FUSED_ZERO_GRAD_CLASSES: dict[type, type] = {}


def _use_fused_zero_grad(optimizer: torch.optim.Optimizer) -> None:
    """Give `optimizer` a class of its own whose zero_grad is fused, as Lightning gives its wrapper one.

    Lightning builds its optimizer wrapper's class from the optimizer's class after the precision
    plugin's `connect`, so both ``self.optimizers()[i].zero_grad`` (manual optimization) and the
    raw optimizer's (``LightningModule.optimizer_zero_grad``) reach this one. The class keeps the
    optimizer's ``__name__`` (LearningRateMonitor names its keys after it).
    """
    cls = type(optimizer)
    if isinstance(optimizer, LightningOptimizer) or cls.zero_grad is not torch.optim.Optimizer.zero_grad:
        return  # a wrapper, or a class with a zero_grad of its own (one switched already included)
    if cls not in _FUSED_ZERO_GRAD_CLASSES:
        namespace = {"__module__": __name__, "__qualname__": f"FusedZeroGrad[{cls.__qualname__}]",
                     "_plain_class": cls}
        _FUSED_ZERO_GRAD_CLASSES[cls] = type(cls.__name__, (_FusedZeroGrad, cls), namespace)
    optimizer.__class__ = _FUSED_ZERO_GRAD_CLASSES[cls]


# -- helpers ------------------------------------------------------------------------------------------
def _raw(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer behind Lightning's wrapper (manual optimization passes the wrapper to
    ``self.clip_gradients``; the scaler keys its records by the raw optimizer)."""
    return optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer


def _grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def _gradients_read_before_step(model: pl.LightningModule) -> bool:
    """Whether user code runs between backward and the optimizer step. Lightning unscales the
    gradients of a non-fused optimizer before that code, so it sees unscaled ones."""
    if is_overridden("on_before_optimizer_step", model, pl.LightningModule):
        return True
    if model.automatic_optimization and is_overridden("configure_gradient_clipping", model, pl.LightningModule):
        return True
    # Lightning's Trainer sets `callbacks` in its callback connector, which its typing does not declare
    callbacks = model.trainer.callbacks  # type: ignore[attr-defined]
    return any(is_overridden("on_before_optimizer_step", cb, pl.Callback) for cb in callbacks)


class _FusedKernels(_PluginBase):
    """What the plugins share: clipping on mopt_fast's kernels, fused zero_grad on the optimizers,
    the optional step guard."""

    step_guard: StepGuard | None = None
    # While a guarded step runs its hooks: the norm the clip by norm computed, for the guard.
    _guarding = False
    _clip_norm: ClipNorm | None = None

    def connect(self, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                lr_schedulers: list[Any]) -> tuple[torch.nn.Module, list[torch.optim.Optimizer], list[Any]]:
        model, optimizers, lr_schedulers = super().connect(model, optimizers, lr_schedulers)
        for optimizer in optimizers:
            _use_fused_zero_grad(optimizer)
        return model, optimizers, lr_schedulers

    def clip_grad_by_value(self, optimizer: torch.optim.Optimizer, clip_val: float) -> None:
        clip_grad_value_(list(self.main_params(optimizer)), clip_val)
        self._clip_norm = None  # the gradients changed since any norm

    def clip_grad_by_norm(self, optimizer: torch.optim.Optimizer, clip_val: float) -> None:
        # The norm mopt_fast.grad_norm logged in this step's on_before_optimizer_step, if it did, is reused.
        total = _clip_grad_norm(list(self.main_params(optimizer)), _validate.non_negative(clip_val, "clip_val"), 2.0,
                                False, [], reuse_logged=True)
        self._clip_norm = ClipNorm(optimizer, total) if self._guarding else None

    # Lightning's signature (see MixedPrecision.optimizer_step)
    def optimizer_step(  # type: ignore[override]
        self, optimizer: Optimizable, model: pl.LightningModule, closure: Callable[[], Any], **kwargs: Any
    ) -> Any:
        forget_logged_norm()  # only norms logged in this step's hooks may spare the clip a pass
        guard = self.step_guard
        if guard is None or getattr(self, "scaler", None) is not None:
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        optimizer = cast(torch.optim.Optimizer, optimizer)
        if isinstance(optimizer, torch.optim.LBFGS):
            raise MisconfigurationException(
                "A step guard and LBFGS do not go together: LBFGS re-evaluates its closure inside step(), where no "
                "guard can look at the gradients.")
        # Lightning's closure, hooks and clipping, then the guard's step instead of optimizer.step(closure).
        # A clip by norm among them hands its norm over (see ClipNorm): the guard reads no gradient.
        self._guarding, self._clip_norm = True, None
        try:
            closure_result = self._wrap_closure(model, optimizer, closure)
            handed = self._clip_norm
        finally:
            self._guarding, self._clip_norm = False, None
        total = handed.total_for(optimizer) if handed is not None else None
        if not _grads(optimizer):
            optimizer.step(**kwargs)  # nothing to guard (training_step returned None): as unguarded
        else:
            guard.step(optimizer, total_norm=total, **kwargs)
        if guard.skipped_steps is not None and not model.trainer.barebones:
            # A device tensor: read when the logger writes, not here.
            model.log(guard.metric_name, guard.skipped_steps, on_step=True, on_epoch=False, reduce_fx="max")
        return closure_result

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.step_guard is not None:  # never with a scaler, whose state is the whole dict
            state = {**state, "step_guard": self.step_guard.state_dict()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "step_guard" in state_dict:  # a guarded run's entry: no scaler state in it
            if self.step_guard is not None:
                self.step_guard.load_state_dict(state_dict["step_guard"])
            state_dict = {k: v for k, v in state_dict.items() if k != "step_guard"}
            if not state_dict:
                return
        super().load_state_dict(state_dict)


# -- the plugins ----------------------------------------------------------------------------------------
class Precision(_FusedKernels, _LightningPrecision):
    """Lightning's "32-true" plugin with clipping and ``zero_grad(set_to_none=False)`` on mopt_fast's
    fused kernels. ``Trainer(plugins=[Precision()])``.

    Args:
        step_guard: a `mopt_fast.StepGuard`: skip, on the device, every step whose gradients hold
            an inf/NaN (or whose norm is above the guard's ``max_total_norm``), and log the count of
            skipped steps as ``step_guard/skipped_steps``. None (default): Lightning's behaviour.
    """

    def __init__(self, step_guard: StepGuard | None = None) -> None:
        super().__init__()
        self.step_guard = check_plugin_guard(step_guard)


class HalfPrecision(_FusedKernels, _LightningHalfPrecision):
    """Lightning's "bf16-true"/"16-true" plugin (the module and its inputs in that dtype) with
    clipping and ``zero_grad(set_to_none=False)`` on mopt_fast's fused kernels, and the optional
    step guard (see `Precision`). ``Trainer(plugins=[HalfPrecision("bf16-true", step_guard=...)])``."""

    def __init__(self, precision: str = "16-true", step_guard: StepGuard | None = None) -> None:
        super().__init__(precision)  # type: ignore[arg-type]  # Lightning's typing names the two it accepts
        self.step_guard = check_plugin_guard(step_guard)


class MixedPrecision(_FusedKernels, _LightningMixedPrecision):
    """Lightning's mixed-precision plugin ("16-mixed", "bf16-mixed") on mopt_fast's fused kernels.

    Args:
        precision: "16-mixed" (autocast to float16, loss scaling) or "bf16-mixed" (autocast to
            bfloat16, no scaling).
        device: the device type autocast runs on ("cuda", "cpu").
        scaler: under 16-mixed, a `mopt_fast.amp.GradScaler` (default: a new one for `device`);
            torch's own GradScaler lacks the fused unscale-and-clip pass.
        step_guard: bf16-mixed only: see `Precision`.
    """

    scaler: GradScaler | None  # mopt_fast's (Lightning's plugin declares torch's)

    def __init__(self, precision: str, device: str, scaler: GradScaler | None = None,
                 step_guard: StepGuard | None = None) -> None:
        if step_guard is not None and precision in ("16-mixed", "16", 16):
            raise not_built(
                "mopt_fast.lightning.MixedPrecision('16-mixed', step_guard=...)",
                "16-mixed's loss scaler already skips steps with inf/NaN gradients; the guard is for "
                "'bf16-mixed' and the '*-true' precisions",
            )
        if precision == "16-mixed":
            if scaler is None:
                scaler = GradScaler(device)
            elif not isinstance(scaler, GradScaler):
                raise TypeError(
                    f"mopt_fast.lightning.MixedPrecision needs a mopt_fast.amp.GradScaler, got "
                    f"{type(scaler).__module__}.{type(scaler).__qualname__}; mopt_fast.amp.GradScaler "
                    "takes the same arguments as torch.amp.GradScaler."
                )
        # Lightning's checks: the name (its typing names the two it accepts), no scaler for bf16
        super().__init__(precision, device, scaler)  # type: ignore[arg-type]
        self.step_guard = check_plugin_guard(step_guard)
        self._in_training_step = False
        # Stepping in this iteration is skipped (automatic optimization, training_step returned None).
        self._step_skipped = False
        # Fused optimizers clipped by norm whose clip factor waits in their grad_scale for their step.
        self._folded: dict[int, torch.optim.Optimizer] = {}

    # -- clipping ----------------------------------------------------------------------------------
    def clip_gradients(
        self,
        optimizer: torch.optim.Optimizer,
        clip_val: int | float = 0.0,
        gradient_clip_algorithm: GradClipAlgorithmType = GradClipAlgorithmType.NORM,
    ) -> None:
        """Clips the gradients; under 16-mixed it unscales them first, once per step."""
        if clip_val <= 0:
            return
        scaler = self.scaler
        if scaler is None or not scaler.is_enabled() or self._step_skipped:
            # Nothing is scaled (or no step follows): plain clipping, fused optimizers included.
            return _LightningPrecision.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm)
        optimizer = _raw(optimizer)
        grads = _grads(optimizer)
        if not grads:
            return  # nothing to clip; the scaler's record of this optimizer stays as it is
        self._begin_step(optimizer)
        if scaler._stage(optimizer) is OptState.READY:
            if gradient_clip_algorithm == GradClipAlgorithmType.NORM and self._one_pass_applies(grads):
                scaler.unscale_clip_grad_norm_(optimizer, clip_val)
                if _is_fused(optimizer):
                    self._folded[id(optimizer)] = optimizer
                return
            scaler.unscale_(optimizer)
        elif id(optimizer) in self._folded:
            self._unfold(optimizer)  # a second clip of this step needs the gradients as they are
        _LightningPrecision.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm)

    def _one_pass_applies(self, grads: list[torch.Tensor]) -> bool:
        """The fused unscale-and-clip pass takes gradients on the scaler's device only."""
        assert self.scaler is not None  # called under 16-mixed only
        scale = self.scaler._scale
        return scale is not None and all(g.device == scale.device for g in grads)

    def _unfold(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply the unscale-and-clip factor left in a fused optimizer's grad_scale to its gradients."""
        # torch's Optimizer declares no grad_scale (torch's GradScaler sets it on fused optimizers)
        grad_scale = self._folded.pop(id(optimizer)).grad_scale  # type: ignore[attr-defined]
        del optimizer.grad_scale  # type: ignore[attr-defined]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        scale_grads_(params, grad_scale.double().reciprocal())

    # -- the step ----------------------------------------------------------------------------------
    # Lightning's signature; Lightning marks it too: fabric's base plugin takes (optimizer, **kwargs)
    def optimizer_step(  # type: ignore[override]
        self,
        optimizer: Optimizable,
        model: pl.LightningModule,
        closure: Callable[[], Any],
        **kwargs: Any,
    ) -> Any:
        forget_logged_norm()  # only norms logged in this step's hooks may spare the clip a pass
        if self.scaler is None:
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        # Lightning passes the torch optimizer itself (its Optimizable is a structural view of one)
        optimizer = cast(torch.optim.Optimizer, optimizer)
        if isinstance(optimizer, torch.optim.LBFGS):
            raise MisconfigurationException("AMP and the LBFGS optimizer are not compatible.")
        closure_result = closure()
        if closure_result is None and model.automatic_optimization:
            # training_step returned None: no backward and no step. Lightning still runs the hooks
            # and the clipping; they must not unscale, which would leave the scaler mid-step.
            self._step_skipped = True
            try:
                self._after_closure(model, optimizer)
            finally:
                self._step_skipped = False
            return closure_result
        scaler = self.scaler
        self._begin_step(optimizer)
        if (
            scaler._stage(optimizer) is OptState.READY
            and not _optimizer_handles_unscaling(optimizer)
            and _gradients_read_before_step(model)
        ):
            # As Lightning: the hooks see unscaled gradients. Without such hooks the unscale waits
            # for the clip (fused with its norm pass) or for scaler.step.
            scaler.unscale_(optimizer)
        self._after_closure(model, optimizer)
        step_output = scaler.step(optimizer, **kwargs)
        self._folded.pop(id(optimizer), None)
        if not self._in_training_step:
            scaler.update()  # automatic optimization: one step per iteration
        return step_output

    def _begin_step(self, optimizer: torch.optim.Optimizer) -> None:
        """An optimizer stepping a second time in one training_step: its new gradients carry the
        scale not updated yet, so it steps with that scale and both steps count in the update."""
        assert self.scaler is not None  # called under 16-mixed only
        if self.scaler._stage(optimizer) is OptState.STEPPED:
            self.scaler._step_again(optimizer)

    @contextlib.contextmanager
    def train_step_context(self) -> Generator[None, None, None]:
        """training_step under autocast. Steps taken inside it (manual optimization) update the loss
        scale once, when it returns, as torch's recipe for several optimizers does."""
        self._in_training_step = True
        try:
            with super().train_step_context():
                yield
        finally:
            self._in_training_step = False
            self._end_iteration()

    def _end_iteration(self) -> None:
        if self.scaler is not None:
            self.scaler._end_iteration(self._folded)


def precision_plugin(precision: str | int = "32-true",
                     device: str = "cuda") -> Precision | MixedPrecision | HalfPrecision:
    """The plugin for a precision setting, spelled as Lightning's ``precision=`` accepts it
    ("32-true"/"32"/32, "16-mixed"/"16"/16, "bf16-mixed"/"bf16", "16-true", "bf16-true"),
    autocasting on `device` for the mixed ones."""
    name = normalize_precision(precision)
    if name == "64-true":
        raise ValueError(f"precision={precision!r} is not supported by this plugin: pass Lightning's own "
                         "`precision='64-true'` (mopt_fast.Trainer takes it too)")
    if name == "32-true":
        return Precision()
    if name.endswith("-true"):
        return HalfPrecision(name)
    return MixedPrecision(name, device)
