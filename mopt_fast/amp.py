"""A torch.amp.GradScaler on mopt_fast's fused kernels.

`GradScaler` is torch's own class (same state, `update` rule, `state_dict`, per-optimizer stage
tracking) with two changes:

- the unscale pass (`unscale_`, and the inf check that `step` makes for fused optimizers) runs on
  mopt_fast's multi-tensor kernels, one call per device instead of one per (device, dtype);
- `unscale_clip_grad_norm_(optimizer, max_norm)` does unscale + inf/NaN check + clip-by-norm with
  one read pass over the gradients. For torch's fused optimizers (`fused=True`: Adam, AdamW, SGD)
  the factor `scale / clip_coef` is handed to the optimizer as its `grad_scale`, so the gradients
  are never rewritten; for other optimizers one in-place pass applies `inv_scale * clip_coef`.
  No host sync either way (the step of a non-fused optimizer still reads found_inf, as torch's
  GradScaler does).
"""
from __future__ import annotations

import torch
from torch.amp.grad_scaler import OptState

from mopt_fast import _validate
from mopt_fast.functional import clip_grad_norm_
from mopt_fast.registry import kernel

__all__ = ["GradScaler"]


def _optimizer_grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def _is_fused(optimizer: torch.optim.Optimizer) -> bool:
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and bool(
        optimizer.defaults.get("fused", False)
    )


class GradScaler(torch.amp.GradScaler):
    """torch.amp.GradScaler whose unscale and clip passes are mopt_fast's fused kernels."""

    def _unscale_grads_(
        self,
        optimizer: torch.optim.Optimizer,
        inv_scale: torch.Tensor,
        found_inf: torch.Tensor,
        allow_fp16: bool,
    ) -> dict[torch.device, torch.Tensor]:
        grads = _optimizer_grads(optimizer)
        if any(g.is_sparse for g in grads):
            # torch's own path coalesces sparse fp16 gradients first; keep it for them.
            return super()._unscale_grads_(optimizer, inv_scale, found_inf, allow_fp16)
        if not allow_fp16 and any(g.dtype == torch.float16 for g in grads):
            raise ValueError("Attempting to unscale FP16 gradients.")
        per_device: dict[torch.device, list[torch.Tensor]] = {}
        for g in grads:
            per_device.setdefault(g.device, []).append(g)
        found: dict[torch.device, torch.Tensor] = {}
        for device, group in per_device.items():
            found[device] = found_inf.to(device, copy=True) if found_inf.device != device else found_inf
            inv = inv_scale.to(device) if inv_scale.device != device else inv_scale
            with torch.no_grad():
                kernel("unscale_inplace", device)(group, found[device], inv)
        return found

    def unscale_clip_grad_norm_(
        self, optimizer: torch.optim.Optimizer, max_norm: float, norm_type: float = 2.0
    ) -> torch.Tensor:
        """Unscale and clip the gradients of `optimizer` to `max_norm`; returns the total norm of
        the unscaled gradients (a tensor, no host sync).

        Call it where you would call ``scaler.unscale_(optimizer)`` followed by
        ``clip_grad_norm_(params, max_norm)``, before ``scaler.step(optimizer)``. With a fused
        optimizer the gradients stay as they are and the optimizer applies ``1 / grad_scale``;
        otherwise they are unscaled and clipped in place (and left untouched when an inf/NaN was
        found: the step is skipped then).
        """
        max_norm = _validate.non_negative(max_norm, "max_norm")
        p = _validate.norm_type(norm_type)
        if not self._enabled:  # nothing is scaled: plain clipping
            params = [q for group in optimizer.param_groups for q in group["params"]]
            return clip_grad_norm_(params, max_norm, p)
        scale, _ = self._check_scale_growth_tracker("unscale_clip_grad_norm_")  # self._scale, not None
        state = self._per_optimizer_states[id(optimizer)]
        if state["stage"] is OptState.UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        grads = _optimizer_grads(optimizer)
        if not grads:
            raise ValueError("mopt_fast.GradScaler.unscale_clip_grad_norm_: the optimizer has no gradients")
        device = scale.device
        inv_scale = scale.double().reciprocal().float()
        found_inf = torch.zeros((), dtype=torch.float32, device=device)
        total = None
        if grads[0].device == device:
            try:  # the kernels check every gradient's device before they write
                with torch.no_grad():
                    if _is_fused(optimizer):
                        # The optimizer divides by grad_scale: scale / coef unscales and clips in
                        # its own pass. torch's step() uses an optimizer.grad_scale set before an
                        # UNSCALED step.
                        total, _ = kernel("unscale_norm", device)(grads, inv_scale, found_inf, p, False)
                        coef = torch.clamp(max_norm / (total.float() + 1e-6), max=1.0)
                        # torch's Optimizer declares no grad_scale (torch's GradScaler sets it the same way)
                        optimizer.grad_scale = scale / coef  # type: ignore[attr-defined]
                    else:
                        total = kernel("unscale_clip_inplace", device)(grads, inv_scale, found_inf, max_norm, p)
            except ValueError as error:
                if not _validate.one_device_refused(error):
                    raise
        if total is None:
            raise NotImplementedError(
                "mopt_fast.GradScaler.unscale_clip_grad_norm_ needs every gradient on the scaler's "
                f"device ({device}); got {sorted({str(g.device) for g in grads})}. Use unscale_() "
                "and mopt_fast.clip_grad_norm_ for gradients spread over devices."
            )
        state["found_inf_per_device"] = {device: found_inf}
        state["stage"] = OptState.UNSCALED
        return total

    # -- for precision plugins that call update() once per iteration, not once per step -----------
    def _stage(self, optimizer: torch.optim.Optimizer) -> OptState:
        """Where `optimizer` is in the current iteration: READY, UNSCALED or STEPPED."""
        return self._per_optimizer_states[id(optimizer)]["stage"]

    def _awaits_update(self) -> bool:
        """Whether an optimizer was unscaled or stepped since the last update()."""
        return any(state["stage"] is not OptState.READY for state in self._per_optimizer_states.values())

    def _end_iteration(self, folded: dict[int, torch.optim.Optimizer]) -> None:
        """The end of a training iteration: `folded` holds the fused optimizers whose clip factor
        went into their grad_scale and that did not step since; the factor is dropped (torch's
        step() multiplies whatever it finds there), and the scale is updated if any optimizer was
        unscaled or stepped (a clip without a step counts too, else the optimizer would stay
        marked unscaled and the next iteration would clip still-scaled gradients)."""
        for optimizer in folded.values():
            if hasattr(optimizer, "grad_scale"):
                del optimizer.grad_scale
        folded.clear()
        if self._awaits_update():
            self.update()

    def _step_again(self, optimizer: torch.optim.Optimizer) -> None:
        """Let `optimizer`, already stepped since the last update(), be unscaled and stepped again
        before that update(), with the same scale (its new gradients were scaled by it).

        torch's step() refuses a second step without an update() in between; an update() here
        would change the scale under gradients that already carry the old one. Instead the
        earlier step's record is kept under a key of its own: update() sums the inf checks of every
        record, so it still backs off when either step found an inf, as one update() per iteration
        does for several optimizers.
        """
        states = self._per_optimizer_states
        # torch types the records' keys as ids; a fresh object, kept alive by the dict, cannot collide with one
        states[object()] = states.pop(id(optimizer))  # type: ignore[index]

