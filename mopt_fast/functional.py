"""The functional API: torch.nn.utils-compatible gradient utilities on the fused kernels.

Every function takes a Tensor or an iterable of Tensors, skips parameters without `.grad`, groups
the tensors by device and runs one fused multi-tensor kernel per device (see registry.py for which
one). Nothing here synchronizes the host with the device, except `error_if_nonfinite=True`, which
must look at the norm to decide whether to raise (as torch does).

Bad input raises before anything is written: a rejected call leaves every gradient as it was.
"""
from __future__ import annotations

import math
import sys
import types
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast import _validate
from mopt_fast._ops import result_dtype
from mopt_fast.registry import kernel

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

Tensors = torch.Tensor | Iterable[torch.Tensor]

__all__ = [
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "get_total_norm",
    "grad_norm",
    "group_grad_norms",
    "scale_grads_",
    "unscale_clip_grad_norm_",
    "unscale_grads_",
    "zero_grad_",
]


def _grads(parameters: Tensors) -> list[torch.Tensor]:
    """The gradients, with FSDP2's sharded (DTensor) ones replaced by their local shards: every
    elementwise op here works on each rank's shard, whatever the mesh or the placements (the
    norms need more: see _sharded_grads). Each `.grad` is read once: on a thousand parameters
    these reads are most of a call's own time (~80 ns each), so without an initialized process
    group nothing else walks the list."""
    return _local_grads(parameters)[0]


def _local_grads(parameters: Tensors) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """(the gradients with DTensors as their local shards, the gradients as they are when any is
    a DTensor, else None)."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [g for g in [p.grad for p in parameters] if g is not None]
    dtensor = _dtensor_type()
    if dtensor is None or not any(isinstance(g, dtensor) for g in grads):
        return grads, None
    return [g.to_local() if isinstance(g, dtensor) else g for g in grads], grads


def _sharded_grads(parameters: Tensors) -> tuple[list[torch.Tensor], Any]:
    """The gradients (DTensors as their local shards) and the process group over which their
    partial norms are reduced, None for plain tensors (see _grads_group), from one read of each
    `.grad`."""
    local, raw = _local_grads(parameters)
    return local, (None if raw is None else _grads_group(raw))


def _dtensor_type() -> type[DTensor] | None:
    """FSDP2's gradient type, DTensor, when gradients can be DTensors: an initialized process
    group, and torch.distributed.tensor loaded (no DTensor exists before it is). None otherwise, so
    no list is scanned, and importing mopt_fast does not load torch.distributed.tensor (most of
    its import time before)."""
    module = sys.modules.get("torch.distributed.tensor")
    if module is None or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    return module.DTensor


def _grads_group(grads: list[torch.Tensor]) -> Any:
    """The process group of DTensor gradients, or None for plain tensors. Only gradients sharded
    on a 1-D mesh (FSDP2's `fully_shard`) are supported: replicated placements would be counted
    once per rank."""
    dtensor = _dtensor_type()
    if dtensor is None:
        return None
    dts = [g for g in grads if isinstance(g, dtensor)]
    if not dts:
        return None
    if len(dts) != len(grads):
        raise ValueError("mopt_fast: gradients mix DTensors and plain tensors; clip them separately")
    meshes = {g.device_mesh for g in dts}
    mesh = next(iter(meshes))
    if len(meshes) != 1 or mesh.ndim != 1 or not all(pl.is_shard() for g in dts for pl in g.placements):
        raise NotImplementedError(
            "mopt_fast norms of DTensor gradients support one 1-D mesh with sharded placements (FSDP2's "
            "fully_shard); got another layout"
        )
    return mesh.get_group()


def _nonfinite_flag(loss: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """1.0 where any value of `loss` is inf/NaN, else 0.0: a 0-d float32 tensor on `device`,
    computed there (no host read); None without a loss."""
    if loss is None:
        return None
    return (~torch.isfinite(loss.detach()).all()).to(device=device, dtype=torch.float32)


def _packed_all_reduce(
    local_norm: torch.Tensor | None, p: float, group: Any, flags: list[torch.Tensor]
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """The global norm and the flags set on any rank, from ONE all-reduce of a small packed tensor.

    A sharded step needs three cross-rank facts: the norm (from each rank's partial sum of |g|^p),
    whether any rank found an inf/NaN gradient (else the ranks that did skip the step and the
    others do not: the shards of one model diverge), and, when asked, whether any rank's loss is
    non-finite. Each is a few bytes, so one collective's latency is the whole cost: they travel
    together, as [sum |g|^p, flags...] in float64 reduced with SUM (a flag summed over ranks is
    > 0 iff set on any; fp64 keeps the partial sums as exact as before), or, for p = inf, as
    [max |g|, isnan(max |g|), flags...] reduced with MAX, which takes the flags' OR too. The NaN
    slot exists because a MAX reduction may drop a NaN (it compares); the global norm is NaN when
    any rank's was, as torch's unsharded norm is. Returned flags are 0.0/1.0 float32 0-d tensors
    (torch's fused optimizers skip their step on found_inf == 1, not on 2); nothing is read on the
    host. `local_norm` None reduces the flags alone (replicated gradients: DDP)."""
    import torch.distributed as dist

    parts: list[torch.Tensor] = []
    inf_norm = local_norm is not None and math.isinf(p)
    if local_norm is not None:
        local = local_norm.detach().reshape(1).double()
        parts += [local, torch.isnan(local).double()] if inf_norm else [local.pow(p)]
    device = local_norm.device if local_norm is not None else flags[0].device
    parts += [f.detach().reshape(1).to(device, torch.float64) for f in flags]
    packed = torch.cat(parts)
    use_max = inf_norm or local_norm is None
    dist.all_reduce(packed, op=dist.ReduceOp.MAX if use_max else dist.ReduceOp.SUM, group=group)
    total = None
    if local_norm is not None:
        if inf_norm:
            total = torch.where(packed[1] > 0, torch.full_like(packed[0], math.nan), packed[0])
        else:
            total = packed[0].pow(1.0 / p)
        total = total.to(local_norm.dtype)
    reduced = packed[len(parts) - len(flags):]
    return total, [(reduced[i] > 0).float() for i in range(len(flags))]


def _split_by_device(
    tensors: list[torch.Tensor], op: str, writes: bool
) -> list[tuple[torch.device, list[torch.Tensor]]]:
    """The list split by device, keeping the order inside each group, after every tensor is
    checked: a bad tensor in a later group must not leave an earlier group already modified."""
    _validate.check_tensors(tensors, op, writes=writes, one_device=False)
    groups: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.device, []).append(t)
    return list(groups.items())


def _per_device(
    op: str, tensors: list[torch.Tensor], call: Callable[[Callable, torch.device, list[torch.Tensor]], Any],
    writes: bool = True,
) -> list[Any]:
    """call(kernel, device, group) for each device's group of a non-empty list; the results.

    The usual list lives on one device: it goes to that device's kernel whole, without a look at
    each tensor's device here, because every backend's kernel (the fake ones, which the dispatcher
    picks for a list holding a meta tensor, too) checks that all its tensors share tensors[0]'s
    device, and everything else, before it writes. When that check refuses the list, it is split
    by device; then every tensor is checked and every group's kernel looked up (a
    forced backend that cannot run a device raises) before the first group runs.
    """
    first = tensors[0]
    if not isinstance(first, torch.Tensor):  # the kernel is picked by the first item's device
        _validate.check_tensors(tensors, op, writes=writes, one_device=False)  # raises: item 0's TypeError
    device = first.device
    try:
        return [call(kernel(op, device), device, tensors)]
    except ValueError as error:
        if not _validate.one_device_refused(error):
            raise
    except NotImplementedError:
        # The dispatcher sent the list to another device's key, one without mopt_fast kernels:
        # it spans devices (if not, the split below gives one group and the same error again).
        pass
    except RuntimeError:
        # The dispatcher refuses a list holding something other than tensors with a generic
        # message: say which item it is (TypeError), else let the error through.
        _validate.check_tensors(tensors, op, writes=writes, one_device=False)
        raise
    groups = _split_by_device(tensors, op, writes)
    kernels = [kernel(op, d) for d, _ in groups]
    return [call(run, d, group) for run, (d, group) in zip(kernels, groups)]


def _single_device(found_inf: torch.Tensor, inv_scale: torch.Tensor, op: str) -> torch.device:
    """The AMP ops take one found_inf and one inv_scale: the gradients must all live on their
    device (the kernels check it before they write; see _amp_call)."""
    device = found_inf.device if isinstance(found_inf, torch.Tensor) else None
    _validate.amp_scalar(found_inf, "found_inf", device, op)
    _validate.amp_scalar(inv_scale, "inv_scale", device, op)
    return device


def _amp_call(op: str, grads: list[torch.Tensor], device: torch.device, *args: Any) -> Any:
    """One AMP op on the gradients, which must all be on found_inf's device (the kernel checks
    each gradient's before it writes)."""
    if grads[0].device == device:
        try:
            return kernel(op, device)(grads, *args)
        except ValueError as error:
            if not _validate.one_device_refused(error):
                raise
        except (NotImplementedError, RuntimeError):
            # Refused before any kernel ran, so nothing was written: by the dispatcher, which
            # has no kernel for the keys the list combines (a sparse gradient among meta ones
            # makes 'SparseMeta'), or by a forced backend that cannot run the device. A fault
            # of the list itself (a sparse or non-float gradient) is the clearer error.
            _validate.check_tensors(grads, op, one_device=False)
            raise
    # Whatever is wrong with a gradient is said before the device mix it may also have.
    _validate.check_tensors(grads, op, one_device=False)
    devices = sorted({str(g.device) for g in grads})
    raise ValueError(
        f"mopt_fast.{op}: gradients on {devices} cannot be grouped with found_inf on {device}: use "
        "one found_inf/inv_scale per device and one call each"
    )


def _raise_nonfinite(norm_type: float) -> None:
    raise RuntimeError(
        f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it "
        "cannot be clipped. To disable this error and scale the gradients by the non-finite norm "
        "anyway, set `error_if_nonfinite=False`"
    )


def _total_norm(tensors: list[torch.Tensor], p: float) -> torch.Tensor:
    norms = _per_device("norm", tensors, lambda run, device, group: run(group, p, False)[0], writes=False)
    if len(norms) == 1:
        return norms[0]
    first = tensors[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(first, result_dtype(norms)) for n in norms]), p)


@torch.no_grad()  # as torch's own: results never require grad
def get_total_norm(
    tensors: Tensors,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> torch.Tensor:
    r"""Norm of an iterable of tensors, as if they were concatenated into one vector.

    Args:
        tensors: a Tensor or an iterable of Tensors (float32/64, float16, bfloat16, dense).
        norm_type: p > 0, or ``inf`` for the max norm.
        error_if_nonfinite: raise RuntimeError when the norm is NaN or inf (this reads the norm
            on the host, like torch).
        foreach: accepted for torch compatibility; mopt_fast's kernels are always multi-tensor.

    Returns:
        A 0-d tensor on the first tensor's device: float32, or float64 when any tensor is float64.
        fp16/bf16 values are accumulated in fp32, so norms above 65504 stay finite. An empty
        iterable gives ``tensor(0.)``; zero-size tensors add nothing (also for the inf norm).
    """
    tensors = _validate.tensor_list(tensors)
    p = _validate.norm_type(norm_type)
    if not tensors:
        return torch.tensor(0.0)
    total = _total_norm(tensors, p)
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        _raise_nonfinite(p)
    return total


def _norms_with_per_tensor(tensors: list[torch.Tensor], p: float, op: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The total p-norm and the 1-D tensor of per-tensor norms, in list order, from one read pass
    per device (the norm kernel's per_tensor output). Several devices: the per-tensor norms go to
    the first tensor's device, and the total is the norm of the devices' totals."""
    dtensor = _dtensor_type()
    if dtensor is not None and any(isinstance(t, dtensor) for t in tensors):  # a shard's norm is not its tensor's
        raise NotImplementedError(f"mopt_fast.{op}: gradients sharded by FSDP2 (DTensors) are not supported yet")
    results = _per_device("norm", tensors, lambda run, device, group: (device, group, run(group, p, True)),
                          writes=False)
    if len(results) == 1:
        _, _, (total, per) = results[0]
        return total, per
    first = tensors[0].device
    dtype = result_dtype([r[2][0] for r in results])
    position = {id(t): i for i, t in enumerate(tensors)}
    per = torch.empty(len(tensors), dtype=dtype, device=first)
    for _, group, (_, group_per) in results:
        index = torch.tensor([position[id(t)] for t in group], device=first)
        per.index_copy_(0, index, group_per.to(first, dtype))
    totals = torch.stack([r[2][0].to(first, dtype) for r in results])
    return torch.linalg.vector_norm(totals, p), per


class _NormMemo:
    """The total norm that grad_norm / group_grad_norms last computed, for the precision plugin's
    clip that follows them in the same step (Lightning calls on_before_optimizer_step, where norms
    are logged, just before it clips): that clip then reuses the norm instead of reading every
    gradient again (see _clip_grad_norm's `reuse_logged`).

    It is used only for the very same gradients, in the same order (the norm kernel's result
    depends on the order), none written since (their version counters), and the same norm type:
    so the clip's result is bitwise the one a fresh read pass gives. The gradients are held by
    weak references, so a memo never keeps a step's gradients alive, and a gradient freed since
    (zero_grad(set_to_none=True)) never matches a new one. Used once, then dropped.
    """

    __slots__ = ("norm_type", "refs", "versions", "total")

    def __init__(self, norm_type: float, grads: list[torch.Tensor], total: torch.Tensor) -> None:
        self.norm_type = norm_type
        self.refs = [weakref.ref(g) for g in grads]
        self.versions = [g._version for g in grads]
        self.total = total

    def matches(self, norm_type: float, grads: list[torch.Tensor]) -> bool:
        return (norm_type == self.norm_type and len(grads) == len(self.refs)
                and all(ref() is g for ref, g in zip(self.refs, grads))
                and [g._version for g in grads] == self.versions)


_last_norm: _NormMemo | None = None


def _remember_norm(norm_type: float, grads: list[torch.Tensor], total: torch.Tensor) -> None:
    global _last_norm
    _last_norm = _NormMemo(norm_type, grads, total)


def forget_logged_norm() -> None:
    """Drop the norm grad_norm last remembered: a precision plugin calls it as its optimizer step
    begins, so that only norms logged in that step's hooks are reused by its clip."""
    global _last_norm
    _last_norm = None


def _recall_norm(norm_type: float, grads: list[torch.Tensor]) -> torch.Tensor | None:
    """The remembered total norm of exactly these gradients, else None; forgets it either way."""
    global _last_norm
    memo, _last_norm = _last_norm, None
    return memo.total if memo is not None and memo.matches(norm_type, grads) else None


@torch.no_grad()  # as Lightning's: logged values, not part of any graph
def grad_norm(module: torch.nn.Module, norm_type: float | int | str,
              group_separator: str = "/") -> dict[str, torch.Tensor]:
    r"""Each parameter's gradient norm and their total, for logging: the dict of Lightning's
    ``lightning.pytorch.utilities.grad_norm``, from one fused read pass over all gradients instead of
    one ``.norm()`` per parameter, and with no host sync (the values stay on the device until a
    logger reads them).

    Args:
        module: the module whose parameters' gradients are measured (parameters without a
            gradient are left out).
        norm_type: p > 0, or ``"inf"`` / ``inf`` for the max norm.
        group_separator: what separates ``grad_{p}_norm`` from the parameter's name, so that a
            logger groups the values in their own section.

    Returns:
        ``{f"grad_{p}_norm{group_separator}{name}": norm, ..., f"grad_{p}_norm_total": total}`` with
        ``p = float(norm_type)``; empty when no parameter has a gradient. Each parameter's norm
        has its gradient's dtype, as ``Tensor.norm`` gives (computed in fp32, then rounded). The
        total is taken over the gradients themselves in fp32 (fp64 when any gradient is fp64),
        where Lightning's is the norm of the rounded per-parameter norms, on the CPU.
    """
    p = float(norm_type)
    if not p > 0:  # Lightning's check and message
        raise ValueError(f"`norm_type` must be a positive number or 'inf' (infinity norm). Got {p}")
    named = [(name, param.grad) for name, param in module.named_parameters() if param.grad is not None]
    if not named:
        return {}
    grads = [g for _, g in named]
    total, per = _norms_with_per_tensor(grads, p, "grad_norm")
    dtypes = {g.dtype for g in grads}
    if len(dtypes) == 1:  # the usual case: one cast, one unbind
        values = per.to(dtypes.pop()).unbind()
    else:
        by_dtype = {dtype: per.to(dtype) for dtype in dtypes}
        values = tuple(by_dtype[g.dtype][i] for i, g in enumerate(grads))
    _remember_norm(p, grads, total)  # for a clip of the same gradients that follows
    prefix = f"grad_{p}_norm"
    norms = {f"{prefix}{group_separator}{name}": value for (name, _), value in zip(named, values)}
    norms[f"{prefix}_total"] = total
    return norms


@torch.no_grad()  # as torch's own: results never require grad
def group_grad_norms(param_groups: Any, norm_type: float = 2.0) -> tuple[list[torch.Tensor], torch.Tensor]:
    r"""The gradient norm of each parameter group and of all of them, from one read pass.

    For optimizers whose groups are clipped differently: clip some groups by the total norm
    (``clip_grads_with_norm_(group_params, max_norm, total)``) and leave others as they are
    (Muon's, for one), without reading the gradients again.

    Args:
        param_groups: an optimizer, its ``param_groups`` (dicts with ``"params"``), or a list of
            parameter lists.
        norm_type: p > 0, or ``inf``.

    Returns:
        ``(per_group, total)``: one 0-d tensor per group (``tensor(0.)`` for a group without
        gradients) and the norm over all groups, on the first gradient's device, fp32 (fp64 when
        any gradient is fp64).
    """
    p = _validate.norm_type(norm_type)
    if isinstance(param_groups, torch.optim.Optimizer):
        param_groups = param_groups.param_groups
    groups = [list(g["params"]) if isinstance(g, dict) else _validate.tensor_list(g) for g in param_groups]
    grads_per_group = [[q.grad for q in group if q.grad is not None] for group in groups]
    grads = [g for group in grads_per_group for g in group]
    if not grads:
        return [torch.tensor(0.0) for _ in groups], torch.tensor(0.0)
    total, per = _norms_with_per_tensor(grads, p, "group_grad_norms")
    _remember_norm(p, grads, total)  # for a clip of the same gradients that follows
    per_group, start = [], 0
    for group in grads_per_group:
        end = start + len(group)
        per_group.append(torch.linalg.vector_norm(per[start:end], p) if end > start
                         else torch.zeros((), dtype=total.dtype, device=total.device))
        start = end
    return per_group, total


def _clip(grads: list[torch.Tensor], max_norm: float, total_norm: torch.Tensor) -> None:
    if total_norm.dtype in (torch.float16, torch.bfloat16):
        # torch computes the coefficient in the norm's own dtype; the kernels take it as a scale.
        coef = torch.clamp(max_norm / (total_norm.reshape(()) + 1e-6), max=1.0).float()
        _per_device("scale_inplace", grads, lambda run, device, group: run(group, coef.to(device), None, 0.0, None))
        return
    _per_device("scale_inplace", grads, lambda run, device, group: run(group, None, total_norm.to(device), max_norm, None))


@torch.no_grad()  # as torch's own: results never require grad
def clip_grads_with_norm_(
    parameters: Tensors,
    max_norm: float,
    total_norm: torch.Tensor,
    foreach: bool | None = None,
) -> None:
    r"""Scale gradients in place by ``min(1, max_norm / (total_norm + 1e-6))``.

    The coefficient is computed on the device, in the norm's precision, inside the kernel; when it
    is exactly 1 the compiled kernels write nothing.

    Args:
        parameters: a Tensor or an iterable of Tensors whose ``.grad`` is clipped.
        max_norm: the largest norm allowed; a non-negative number.
        total_norm: the norm of the gradients, a one-element tensor (from get_total_norm).
        foreach: accepted for torch compatibility.
    """
    max_norm = _validate.non_negative(max_norm, "max_norm")
    _validate.norm_tensor(total_norm, "clip_grads_with_norm_")
    grads = _grads(parameters)
    if grads:
        _clip(grads, max_norm, total_norm)


@torch.no_grad()  # as torch's own: results never require grad
def clip_grad_norm_(
    parameters: Tensors,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> torch.Tensor:
    r"""Clip the norm of the gradients of ``parameters`` in place; returns the total norm.

    Equivalent to :func:`get_total_norm` on the gradients followed by
    :func:`clip_grads_with_norm_`: one read pass and, only when clipping changes anything, one
    in-place pass.

    Args:
        parameters: a Tensor or an iterable of Tensors whose ``.grad`` is clipped.
        max_norm: the largest norm allowed; a non-negative number (negative or NaN raise).
        norm_type: p > 0, or ``inf``.
        error_if_nonfinite: raise RuntimeError, leaving the gradients unchanged, when the norm is
            NaN or inf.
        foreach: accepted for torch compatibility.

    FSDP2 (``fully_shard``) gradients are DTensors: each rank takes the norm of its own shards
    with the fused kernel, one all-reduce combines the partial sums of |x|^p (the max for
    ``inf``), and each rank scales its shards by the one global coefficient, whose eps is added
    once (torch adds it per rank, its issue #149768). Every rank gets the global norm back, as a
    plain tensor.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        parameters = list(parameters)
        if is_generator and not parameters:
            warnings.warn(
                "`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=2
            )
    max_norm = _validate.non_negative(max_norm, "max_norm")
    p = _validate.norm_type(norm_type)
    return _clip_grad_norm(parameters, max_norm, p, error_if_nonfinite, [])


def _clip_grad_norm(
    parameters: list[torch.Tensor], max_norm: float, p: float, error_if_nonfinite: bool, flags: list[torch.Tensor],
    reuse_logged: bool = False,
) -> torch.Tensor:
    """clip_grad_norm_ on checked arguments. `flags` (0/1 tensors, such as a GradScaler's found_inf
    left unreduced by its unscale_) ride in the norm's one all-reduce when the gradients are
    sharded, and are set in place where any rank set them; with plain gradients they stay as they
    are (nothing to reduce).

    `reuse_logged`: take the norm grad_norm / group_grad_norms computed of exactly these
    gradients, if they did since `forget_logged_norm()` (see _NormMemo). Only the precision plugins
    ask for it, around their own step: between their hooks and their clip nothing but the hook
    runs, while the public clip_grad_norm_ cannot know whether a gradient was written since
    through ``.data`` (which moves no version counter)."""
    grads, group = _sharded_grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    total = _recall_norm(p, grads) if reuse_logged and _last_norm is not None else None
    if total is None:
        total = _total_norm(grads, p)
    if group is not None:  # FSDP2: the eps of the clip coefficient is added once, to the global norm
        global_total, reduced = _packed_all_reduce(total, p, group, flags)
        assert global_total is not None
        total = global_total
        for flag, value in zip(flags, reduced):
            flag.copy_(torch.maximum(flag, value.reshape(flag.shape).to(flag.device, flag.dtype)))
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        _raise_nonfinite(p)
    _clip(grads, max_norm, total)
    return total


@torch.no_grad()  # as torch's own: results never require grad
def clip_grad_value_(parameters: Tensors, clip_value: float, foreach: bool | None = None) -> None:
    r"""Clamp gradients in place to ``[-clip_value, clip_value]`` in one pass (torch makes two).

    Args:
        parameters: a Tensor or an iterable of Tensors whose ``.grad`` is clamped.
        clip_value: a non-negative number (negative or NaN raise). NaN gradients stay NaN.
        foreach: accepted for torch compatibility.
    """
    v = _validate.non_negative(clip_value, "clip_value")
    grads = _grads(parameters)
    if not grads:
        return
    _per_device("clamp_inplace", grads, lambda run, device, group: run(group, v))


@torch.no_grad()  # as torch's own: results never require grad
def scale_grads_(parameters: Tensors, scale: float | torch.Tensor) -> None:
    r"""Multiply gradients in place by ``scale`` (e.g. ``1 / accumulation_steps``).

    Args:
        parameters: a Tensor or an iterable of Tensors whose ``.grad`` is scaled.
        scale: a number, or a one-element float32/float64 tensor (read on the device, no sync).
    """
    if isinstance(scale, torch.Tensor):
        _validate.scale_tensor(scale, "scale_grads_")
    elif float(scale) == 1.0:
        return
    grads = _grads(parameters)
    if not grads:
        return

    def scale_group(run: Callable, device: torch.device, group: list[torch.Tensor]) -> None:
        if isinstance(scale, torch.Tensor):
            factor = scale.to(device)
        else:  # filled on the device: a host-to-device copy of a number would sync
            factor = torch.full((), float(scale), dtype=torch.float64, device=device)
        run(group, factor, None, 0.0, None)

    _per_device("scale_inplace", grads, scale_group)


def zero_grad_(parameters: Tensors, set_to_none: bool = True) -> None:
    r"""Reset gradients, as ``Optimizer.zero_grad`` does.

    Args:
        parameters: a Tensor or an iterable of Tensors.
        set_to_none: set ``.grad`` to None (default, frees the memory); otherwise zero the dense
            gradients with one fused kernel per device (sparse ones with torch's ``zero_``).
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    if set_to_none:
        for p in parameters:
            p.grad = None
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    dense = [g for g in grads if g.layout is torch.strided]
    # The dense kernels run first: they check every tensor before they write, so a rejected call
    # has not yet zeroed a sparse gradient nor cut one out of its graph.
    if dense:
        _per_device("zero_inplace", dense, lambda run, device, group: run(group))
    for g in grads:  # as Optimizer.zero_grad: no gradient stays part of a graph
        if g.grad_fn is not None:
            g.detach_()
        elif g.requires_grad:
            g.requires_grad_(False)
        if g.layout is not torch.strided:
            g.zero_()


@torch.no_grad()  # as torch's own: results never require grad
def unscale_grads_(parameters: Tensors, inv_scale: torch.Tensor, found_inf: torch.Tensor) -> None:
    r"""AMP unscale in place, with ``torch._amp_foreach_non_finite_check_and_unscale_`` semantics.

    Every gradient is multiplied by ``inv_scale``; ``found_inf`` is set to 1 when any gradient
    holds an inf or NaN (it is never cleared).

    Args:
        parameters: a Tensor or an iterable of Tensors whose ``.grad`` is unscaled.
        inv_scale: one-element float32 tensor, ``1 / scale``, on the gradients' device.
        found_inf: one-element float32 tensor on the gradients' device.
    """
    grads = _grads(parameters)
    if not grads:
        return
    device = _single_device(found_inf, inv_scale, "unscale_grads_")
    _amp_call("unscale_inplace", grads, device, found_inf, inv_scale)


@torch.no_grad()  # as torch's own: results never require grad
def unscale_clip_grad_norm_(
    parameters: Tensors,
    max_norm: float,
    inv_scale: torch.Tensor,
    found_inf: torch.Tensor,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    loss: torch.Tensor | None = None,
    group: Any = None,
) -> torch.Tensor:
    r"""AMP unscale + inf/NaN check + clip-by-norm in two passes instead of four.

    Pass 1 reads every gradient once: it sets ``found_inf`` on any inf/NaN and computes the norm
    of the *unscaled* gradients without writing. Pass 2 multiplies the gradients in place by
    ``inv_scale * min(1, max_norm / (norm + 1e-6))``, computed on the device.

    Returns the norm of the unscaled gradients. The gradients end up unscaled and clipped, except
    when ``found_inf`` is set (by this call or before it): then pass 2 is skipped on the device and
    the gradients are left untouched, still scaled — the optimizer step is skipped anyway, as
    GradScaler does. (torch's ``unscale_`` would still unscale them.)

    Sharded gradients (FSDP2's DTensors): each rank reads its own shards, then ONE all-reduce
    carries the partial sum of |g|^p, ``found_inf`` and the loss flag together (see
    ``_packed_all_reduce``); every rank gets the global norm and the same ``found_inf``, so all
    skip the step or none does. Nothing is read on the host (unless ``error_if_nonfinite``).

    Args:
        parameters: a Tensor or an iterable of Tensors whose ``.grad`` is processed.
        max_norm: the largest norm allowed for the unscaled gradients; non-negative.
        inv_scale: one-element float32 tensor, ``1 / scale``, on the gradients' device.
        found_inf: one-element float32 tensor on the gradients' device; set to 1 (never cleared)
            when any rank found an inf/NaN gradient, or a non-finite ``loss``.
        norm_type: p > 0, or ``inf``.
        error_if_nonfinite: raise RuntimeError, leaving the gradients unchanged, when the norm is
            NaN or inf.
        loss: when given, a non-finite value in it (on any rank) sets ``found_inf`` too, so the
            step is skipped: a loss can be inf with finite gradients.
        group: for replicated gradients (DDP), the process group over which ``found_inf`` and the
            loss flag are reduced, in one all-reduce. DDP's gradients are identical on every rank
            after its own all-reduce, so without ``loss`` no reduction is needed (leave it None:
            zero collectives); a loss is per rank, so its flag needs this. Ignored for sharded
            gradients, which are reduced over their mesh.
    """
    max_norm = _validate.non_negative(max_norm, "max_norm")
    p = _validate.norm_type(norm_type)
    parameters = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    grads, sharded = _sharded_grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    device = _single_device(found_inf, inv_scale, "unscale_clip_grad_norm_")
    loss_flag = _nonfinite_flag(loss, device)
    reduce_over = sharded if sharded is not None else group
    if reduce_over is None and loss_flag is None and not error_if_nonfinite:
        # both passes in one op: one list handed to the dispatcher
        return _amp_call("unscale_clip_inplace", grads, device, inv_scale, found_inf, max_norm, p)
    total, _ = _amp_call("unscale_norm", grads, device, inv_scale, found_inf, p, False)
    flags = [found_inf] if loss_flag is None else [found_inf, loss_flag]
    if reduce_over is not None:
        global_total, flags = _packed_all_reduce(total if sharded is not None else None, p, reduce_over, flags)
        if global_total is not None:
            total = global_total
    for flag in flags:
        found_inf.copy_(torch.maximum(found_inf, flag.reshape(found_inf.shape).to(found_inf.dtype)))
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        _raise_nonfinite(p)
    kernel("scale_inplace", device)(grads, inv_scale, total, max_norm, found_inf)
    return total
