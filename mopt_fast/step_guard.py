"""A step guard for training without a loss scaler (bf16, fp32): skip the optimizer step on the
device when a gradient is not finite, or, optionally, when the total gradient norm is above a
threshold, with no host sync.

bf16 training has no GradScaler, so nothing stops one inf/NaN gradient from poisoning every
weight it reaches. The guard reads the gradients once with the fused read pass that already
computes the norm (the AMP `unscale_norm` op with a unit scale): it sets a device flag on any
non-finite value, and the same pass gives the norm for clipping. Then:

- torch's fused optimizers (``fused=True``: Adam, AdamW, SGD, Adagrad) take the flag as their
  ``found_inf`` and skip the update on the device (their step counters are put back too), the
  way torch's GradScaler drives them; a clip factor goes in as their ``grad_scale``, so the
  gradients are not rewritten.
- any other optimizer steps, then every parameter and every tensor of its state is set back to
  its value before the step where the flag is set (``torch.where`` on the device). That costs a
  copy of the parameters and of the state per step; a fused optimizer needs none.

When the caller has just computed the norm of exactly these gradients (a clip by norm, as the
precision plugins do right before the step), it hands it over as ``total_norm`` and the guard
reads no gradient at all: the norm is non-finite whenever a gradient is (and when a finite sum
overflows, which is as unusable). FSDP2's sharded gradients: each rank reads its shards, and the
norm and the flag travel in one all-reduce, so every rank skips the same steps.

Nothing here reads a tensor's value on the host, so a CUDA stream never waits on the guard.
"""
from __future__ import annotations

from typing import Any

import torch

from mopt_fast import _validate
from mopt_fast.amp import _is_fused
from mopt_fast.functional import _amp_call, _dtensor_type, _grads, _NormMemo, _packed_all_reduce, _sharded_grads
from mopt_fast.registry import kernel

__all__ = ["StepGuard"]


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (sharing its memory), a plain tensor as it is."""
    dtensor = _dtensor_type()
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


class ClipNorm:
    """The norm a clip by norm computed in a guarded step, for the guard that follows: it is
    handed over only for the same optimizer's very same gradients, none written since the clip
    (their version counters; a hook that rewrites a gradient after the clip makes the guard read
    them itself). The norm is the one before the clip."""

    __slots__ = ("optimizer_id", "memo")

    def __init__(self, optimizer: torch.optim.Optimizer, total: torch.Tensor) -> None:
        self.optimizer_id = id(optimizer)
        self.memo = _NormMemo(2.0, _grads(_params(optimizer)), total)

    def total_for(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        if id(optimizer) != self.optimizer_id or not self.memo.matches(2.0, _grads(_params(optimizer))):
            return None
        return self.memo.total


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def check_plugin_guard(step_guard: Any) -> StepGuard | None:
    """A precision plugin's `step_guard` argument, checked."""
    if step_guard is None:
        return None
    if not isinstance(step_guard, StepGuard):
        raise TypeError(f"step_guard must be a mopt_fast.StepGuard or None, got {type(step_guard).__name__}")
    if step_guard.max_total_norm is not None and step_guard.norm_type != 2.0:
        raise ValueError(
            "A precision plugin's step guard compares max_total_norm with the 2-norm its clip by norm computes "
            f"(before the clip); got a guard of norm_type={step_guard.norm_type}")
    return step_guard


class StepGuard:
    """Skips an optimizer step on the device when its gradients are not finite (and, with
    `max_total_norm`, when their norm is above it); counts the skipped steps.

    Args:
        max_total_norm: also skip a step whose total gradient norm (of order `norm_type`) is
            above this; None: only non-finite gradients skip.
        norm_type: the order of the norm used for `max_total_norm` and for clipping.

    ``skipped_steps`` is a 0-d float32 tensor on the gradients' device (created at the first
    step) counting the steps skipped so far: log it as it is, no sync until a logger reads it.
    The precision plugins of `mopt_fast.Trainer` and of `mopt_fast.lightning` take a guard
    (``step_guard=``) and log it as ``metric_name`` after every step.

    Example::

        guard = mopt_fast.StepGuard()
        loss.backward()
        guard.step(optimizer, max_norm=1.0)  # clip by norm, then step, or skip on the device
        optimizer.zero_grad()
    """

    #: The name the precision plugins log ``skipped_steps`` under.
    metric_name = "step_guard/skipped_steps"

    def __init__(self, max_total_norm: float | None = None, norm_type: float = 2.0) -> None:
        self.max_total_norm = None if max_total_norm is None else _validate.non_negative(max_total_norm,
                                                                                          "max_total_norm")
        self.norm_type = _validate.norm_type(norm_type)
        self.skipped_steps: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"StepGuard(max_total_norm={self.max_total_norm}, norm_type={self.norm_type})"

    def state_dict(self) -> dict[str, Any]:
        """The count of skipped steps (read on the host: call it when checkpointing, not per step)."""
        return {"skipped_steps": 0.0 if self.skipped_steps is None else float(self.skipped_steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the count; it lands on the gradients' device at the next step."""
        count = float(state.get("skipped_steps", 0.0))
        self.skipped_steps = torch.tensor(count, dtype=torch.float32) if count else None

    @torch.no_grad()
    def check(self, optimizer: torch.optim.Optimizer,
              total_norm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One read pass over `optimizer`'s gradients: ``(total_norm, found_inf)``, both 0-d
        float32 tensors on the gradients' device (found_inf: 1.0 when the step must be skipped).
        Nothing is written. All gradients must be on one device.

        `total_norm`: the norm of order ``norm_type`` of these gradients, which the caller just
        computed (a clip by norm, before it scaled them: a non-finite gradient makes it
        non-finite either way): no gradient is read; the step is skipped where it is not finite
        (and where it is above ``max_total_norm``)."""
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grads, group = _sharded_grads(params)
        if not grads:
            raise ValueError("mopt_fast.StepGuard: the optimizer has no gradients")
        device = grads[0].device
        if total_norm is not None:
            total = _local(total_norm).detach().reshape(()).to(device, torch.float32)
            found_inf = (~torch.isfinite(total)).float()
        else:
            found = torch.zeros(1, dtype=torch.float32, device=device)
            unit = torch.ones(1, dtype=torch.float32, device=device)
            # The kernel checks every gradient before it reads; the list is looked at here only
            # when it refuses (a Python loop over a thousand gradients costs 5x the read pass).
            total, _ = _amp_call("unscale_norm", grads, device, unit, found, self.norm_type, False)
            if group is not None:  # each rank read its shards: one all-reduce for norm and flag
                reduced, (found,) = _packed_all_reduce(total, self.norm_type, group, [found])
                assert reduced is not None
                total = reduced
            total, found_inf = total.float().reshape(()), found.reshape(())
        if self.max_total_norm is not None:  # NaN totals already set found_inf
            found_inf = torch.maximum(found_inf, (total > self.max_total_norm).float())
        return total, found_inf

    @torch.no_grad()
    def step(self, optimizer: torch.optim.Optimizer, max_norm: float | None = None,
             total_norm: torch.Tensor | None = None, **step_kwargs: Any) -> torch.Tensor:
        """Check the gradients, clip them by norm to `max_norm` when given, then step
        `optimizer` (with `step_kwargs`), or skip the step on the device. Returns the total
        norm (before clipping).

        `total_norm`: the norm of order ``norm_type`` of the gradients, when the caller just
        computed it (see `check`): the guard then reads no gradient. The precision plugins hand
        over the norm their clip by norm computed, before it scaled the gradients: the step is
        skipped where that norm is not finite or above ``max_total_norm``.

        A skipped step leaves every parameter and every optimizer state tensor bitwise as it was
        before the call. State entries the step creates (the first step of most optimizers)
        are left zero-filled when that step is skipped: for Adam, AdamW and SGD's momentum that
        is the same as no state. Optimizers that need a closure (LBFGS) are not supported.
        """
        if max_norm is not None:
            max_norm = _validate.non_negative(max_norm, "max_norm")
        if isinstance(optimizer, torch.optim.LBFGS) or step_kwargs.get("closure") is not None:
            raise ValueError("mopt_fast.StepGuard: a closure (LBFGS's) re-evaluates the gradients inside step(), "
                             "where no guard can look at them; compute them before the guarded step")
        total, found_inf = self.check(optimizer, total_norm)
        if _is_fused(optimizer):
            self._fused_step(optimizer, total, found_inf, max_norm, step_kwargs)
        else:
            self._restoring_step(optimizer, total, found_inf, max_norm, step_kwargs)
        if self.skipped_steps is None:
            self.skipped_steps = found_inf.clone()
        else:
            self.skipped_steps = self.skipped_steps.to(found_inf.device) + found_inf
        return total

    @staticmethod
    def _fused_step(optimizer: torch.optim.Optimizer, total: torch.Tensor, found_inf: torch.Tensor,
                    max_norm: float | None, step_kwargs: dict[str, Any]) -> None:
        # torch's fused step reads these attributes, as GradScaler sets them (Optimizer declares neither).
        optimizer.found_inf = found_inf  # type: ignore[attr-defined]
        if max_norm is not None:  # the optimizer divides every gradient by grad_scale
            coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
            optimizer.grad_scale = coef.reciprocal()  # type: ignore[attr-defined]
        try:
            optimizer.step(**step_kwargs)
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]
            if max_norm is not None:
                del optimizer.grad_scale  # type: ignore[attr-defined]

    @staticmethod
    def _restoring_step(optimizer: torch.optim.Optimizer, total: torch.Tensor, found_inf: torch.Tensor,
                        max_norm: float | None, step_kwargs: dict[str, Any]) -> None:
        if found_inf.device.type != "cpu" and any(g.get("capturable") is False for g in optimizer.param_groups):
            # Its step counters live on the CPU: putting one back would wait for the device.
            raise NotImplementedError(
                f"mopt_fast.StepGuard: {type(optimizer).__name__} keeps its step count on the CPU; skipping its "
                "step without a host sync needs fused=True (best) or capturable=True")
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if max_norm is not None:  # skipped on the device when found_inf is set: nothing to undo
            kernel("scale_inplace", found_inf.device)([_local(p.grad) for p in params], None, total, max_norm,
                                                      found_inf.reshape(1))
        # Sharded (DTensor) parameters and state are saved and put back shard by shard.
        state = optimizer.state
        before: list[tuple[Any, Any, torch.Tensor]] = [(p, None, _local(p.detach()).clone()) for p in params]
        before += [(p, key, _local(value).clone()) for p in params for key, value in state.get(p, {}).items()
                   if isinstance(value, torch.Tensor)]
        known = {(id(p), key) for p, key, _ in before}
        optimizer.step(**step_kwargs)
        skip = found_inf.bool()
        for p, key, old in before:
            new = _local(p.detach() if key is None else state[p][key])
            new.copy_(torch.where(skip.to(new.device), old, new))
        for p in params:  # entries the step created: zero where it is skipped
            for key, value in state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and (id(p), key) not in known:
                    local = _local(value)
                    local.copy_(torch.where(skip.to(local.device), torch.zeros_like(local), local))
