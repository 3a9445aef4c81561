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

Under FSDP2 each rank holds only its shards of the gradients, so each finds infs only in its own:
the inf check must be reduced across ranks, or the ranks that found one skip the step while the
others take it, and the shards of one model diverge (torch's ShardedGradScaler all-reduces
found_inf for this). Here the reduction rides on the norm's: the partial sum of |g|^p, found_inf
and, when given, a non-finite-loss flag go in ONE all-reduce per step (see
`mopt_fast.functional._packed_all_reduce`); `unscale_` without a clip reduces found_inf alone, also
once. Under DDP the gradients are all-reduced before they are unscaled, so every rank finds the
same infs: no collective is added.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.amp.grad_scaler import OptState

from mopt_fast import _validate
from mopt_fast.functional import _grads_group, _nonfinite_flag, _packed_all_reduce, clip_grad_norm_
from mopt_fast.registry import kernel

__all__ = ["GradScaler"]


def _optimizer_grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def _local_grads(optimizer: torch.optim.Optimizer) -> tuple[list[torch.Tensor], Any]:
    """The optimizer's gradients as this rank holds them (FSDP2's DTensors as their local
    shards), and the process group their partial results are reduced over (None: not sharded)."""
    grads = _optimizer_grads(optimizer)
    group = _grads_group(grads)
    if group is None:
        return grads, None
    return [g.to_local() for g in grads], group  # type: ignore[attr-defined]  # DTensors here


def _is_fused(optimizer: torch.optim.Optimizer) -> bool:
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and bool(
        optimizer.defaults.get("fused", False)
    )


def _replica_group(loss_flag: torch.Tensor | None) -> Any:
    """The group over which a loss flag of replicated gradients (DDP) is reduced: the default
    process group when there is a loss flag and more than one rank, else None. Replicated
    gradients are the same on every rank after DDP's all-reduce, and so is their found_inf: only
    the loss, computed per rank, needs this collective."""
    import torch.distributed as dist

    if loss_flag is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return dist.group.WORLD


def _reduce_flags(group: Any, flags: list[torch.Tensor]) -> None:
    """Set each 0/1 flag where any rank of `group` set it: one all-reduce for all of them."""
    with torch.no_grad():
        _, reduced = _packed_all_reduce(None, 2.0, group, flags)
        for flag, value in zip(flags, reduced):
            flag.copy_(torch.maximum(flag, value.reshape(flag.shape).to(flag.device, flag.dtype)))


class GradScaler(torch.amp.GradScaler):
    """torch.amp.GradScaler whose unscale and clip passes are mopt_fast's fused kernels."""

    def _unscale_grads_(
        self,
        optimizer: torch.optim.Optimizer,
        inv_scale: torch.Tensor,
        found_inf: torch.Tensor,
        allow_fp16: bool,
    ) -> dict[torch.device, torch.Tensor]:
        grads, sharded = _local_grads(optimizer)
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
        loss_flag = _nonfinite_flag(self._watched_loss, found_inf.device)
        if loss_flag is not None:  # a non-finite loss skips the step as an inf gradient does
            for flag in found.values():
                flag.copy_(torch.maximum(flag, loss_flag.reshape(flag.shape).to(flag.device)))
        reduce_over = sharded if sharded is not None else _replica_group(loss_flag)
        if found and reduce_over is not None:
            # Each rank checked its shards only (or its own loss). After unscale_() a clip usually
            # follows, whose norm all-reduce can carry the flags: defer (see _reduce_unreduced);
            # inside step() (a fused optimizer's inf check) they are needed at once.
            flags = list(found.values())
            if self._deferring:
                self._unreduced[id(optimizer)] = (reduce_over, flags, sharded is not None)
            else:
                _reduce_flags(reduce_over, flags)
        return found

    # -- FSDP2: found_inf reduced across ranks in the step's one all-reduce -------------------------
    #: Set while unscale_() runs: its found_inf may wait for the clip's all-reduce.
    _deferring = False

    @property
    def _unreduced(self) -> dict[int, tuple[Any, list[torch.Tensor], bool]]:
        """Per optimizer (by id): the process group, the found_inf flags that unscale_() left
        unreduced (only this rank's shards, or its loss, were checked), and whether the gradients
        are sharded (then the clip's norm all-reduce can carry them)."""
        if "_unreduced_flags" not in self.__dict__:
            self.__dict__["_unreduced_flags"] = {}
        return self.__dict__["_unreduced_flags"]

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        self._deferring = True
        try:
            super().unscale_(optimizer)
        finally:
            self._deferring = False

    def take_unreduced(self, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        """The found_inf flags of `optimizer` that unscale_() left unreduced over sharded
        gradients, handed to a caller whose norm all-reduce will carry them and write the global
        values back in place (the clip's: mopt_fast.functional._clip_grad_norm). Empty when there
        are none; replicated gradients' flags (DDP with a watched loss) stay for the step: their
        clip makes no collective to ride on."""
        entry = self._unreduced.get(id(optimizer))
        if entry is None or not entry[2]:
            return []
        del self._unreduced[id(optimizer)]
        return entry[1]

    def _reduce_unreduced(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Reduce what unscale_() deferred and no clip took: before the step reads it (one
        all-reduce), or before update() for every optimizer (one all-reduce for all)."""
        keys = [id(optimizer)] if optimizer is not None else list(self._unreduced)
        entries = [self._unreduced.pop(k) for k in keys if k in self._unreduced]
        if entries:
            _reduce_flags(entries[0][0], [flag for _, flags, _ in entries for flag in flags])

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> float | None:
        self._reduce_unreduced(optimizer)
        return super().step(optimizer, *args, **kwargs)

    #: A loss whose non-finiteness (on any rank) also skips this iteration's steps: see watch_loss.
    _watched_loss: torch.Tensor | None = None

    def watch_loss(self, loss: torch.Tensor | None) -> None:
        """Until the next update(), the unscale of each optimizer also checks `loss`: a non-finite
        value (on any rank, for sharded gradients) sets found_inf, so the step is skipped there
        and everywhere. The flag travels in the same all-reduce as the norm and found_inf; on the
        device, no host read. A loss can be inf while its gradients are finite."""
        self._watched_loss = None if loss is None else loss.detach()

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        self._reduce_unreduced()  # an optimizer unscaled, neither clipped nor stepped
        self._watched_loss = None
        super().update(new_scale)

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
        grads, sharded = _local_grads(optimizer)
        if not grads:
            raise ValueError("mopt_fast.GradScaler.unscale_clip_grad_norm_: the optimizer has no gradients")
        device = scale.device
        inv_scale = scale.double().reciprocal().float()
        found_inf = torch.zeros((), dtype=torch.float32, device=device)
        total = None
        if grads[0].device == device:
            try:  # the kernels check every gradient's device before they write
                with torch.no_grad():
                    if sharded is not None or self._watched_loss is not None:
                        total = self._unscale_clip_reduced(optimizer, grads, sharded, inv_scale, found_inf, max_norm, p)
                    elif _is_fused(optimizer):
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

    def _unscale_clip_reduced(
        self, optimizer: torch.optim.Optimizer, grads: list[torch.Tensor], sharded: Any, inv_scale: torch.Tensor,
        found_inf: torch.Tensor, max_norm: float, p: float,
    ) -> torch.Tensor:
        """unscale_clip_grad_norm_ over shards (or with a watched loss): the read pass on this
        rank's shards, then ONE packed all-reduce of [partial norm, found_inf, loss flag], then the
        clip with the global norm and found_inf (the optimizer's grad_scale for a fused one).
        Replicated gradients with a watched loss: the flags alone are reduced (DDP), once."""
        device = found_inf.device
        total, _ = kernel("unscale_norm", device)(grads, inv_scale, found_inf, p, False)
        loss_flag = _nonfinite_flag(self._watched_loss, device)
        flags = [found_inf] if loss_flag is None else [found_inf, loss_flag]
        if sharded is not None:
            total, flags = _packed_all_reduce(total, p, sharded, flags)
            assert total is not None
        elif _replica_group(loss_flag) is not None:
            _, flags = _packed_all_reduce(None, p, _replica_group(loss_flag), flags)
        for flag in flags:
            found_inf.copy_(torch.maximum(found_inf, flag.reshape(found_inf.shape)))
        if _is_fused(optimizer):
            coef = torch.clamp(max_norm / (total.float() + 1e-6), max=1.0)
            assert self._scale is not None  # checked by unscale_clip_grad_norm_
            optimizer.grad_scale = self._scale / coef  # type: ignore[attr-defined]
        else:
            kernel("scale_inplace", device)(grads, inv_scale, total, max_norm, found_inf)
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

