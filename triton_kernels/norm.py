"""Read-only reductions: the total p-norm, and the AMP read pass (unscale + inf/NaN check + norm).

Each program writes one fp64 partial per chunk; partials are combined per tensor, then over the
list, by one program per segment that walks its partials in order: deterministic, no atomics.
Squares are accumulated in fp64, so huge finite values do not overflow.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mopt_fast import _validate
from mopt_fast._ops import NormKind, norm_kind, result_dtype
from mopt_fast.triton_kernels._apply import BLOCK, CHUNK, acc_dtype, chunk_of, make_plan

# The norm kinds of mopt_fast._ops (csrc/common.h), as constexprs the kernels can name.
L2 = tl.constexpr(int(NormKind.L2))
L1 = tl.constexpr(int(NormKind.L1))
LINF = tl.constexpr(int(NormKind.LINF))
LP = tl.constexpr(int(NormKind.LP))


@triton.jit
def _reduce_block(acc, KIND: tl.constexpr):
    """Sum of the lanes, or for the inf norm their max, NaN if any lane is NaN (tl.max alone may
    drop NaN)."""
    if KIND == LINF:
        has_nan = tl.sum((acc != acc).to(tl.int32), axis=0) > 0
        return tl.where(has_nan, float("nan"), tl.max(acc, axis=0))
    return tl.sum(acc, axis=0)


@triton.jit
def _norm_partials(table, n_tensors, n_chunks, partials, found_ptr, inv_scale_ptr, p_ptr,
                   HAS_SCALE: tl.constexpr, HAS_FOUND: tl.constexpr, KIND: tl.constexpr, DTYPE: tl.constexpr,
                   ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    base, start, end = chunk_of(table, n_tensors, n_chunks, DTYPE, CHUNK)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    check = tl.zeros([BLOCK], dtype=ACC)
    if HAS_SCALE:
        s = tl.load(inv_scale_ptr).to(ACC)
    if KIND == LP:
        p = tl.load(p_ptr)  # fp64: float arguments would reach the kernel as fp32
    for off in range(0, CHUNK, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        x = tl.load(base + idx, mask=idx < end, other=0.0).to(ACC)
        check += x * 0.0  # NaN exactly when x is inf or NaN
        if HAS_SCALE:
            x = x * s
        v = tl.abs(x.to(tl.float64))
        if KIND == L2:
            acc += v * v
        elif KIND == L1:
            acc += v
        elif KIND == LINF:
            acc = tl.maximum(acc, v, propagate_nan=tl.PropagateNan.ALL)
        else:
            acc += tl.where(v == 0, 0.0, tl.exp2(p * tl.log2(v)))  # NaN and inf carry through
    tl.store(partials + pid, _reduce_block(acc, KIND))
    if HAS_FOUND:
        bad = tl.sum(check, axis=0)
        # Every program that sees an inf/NaN stores the same 1.0: no atomics, same result.
        tl.store(found_ptr, 1.0, mask=bad != bad)


@triton.jit
def _segment_reduce(values, seg_start, seg_end, out, LONGEST: tl.constexpr, KIND: tl.constexpr,
                    BLOCK: tl.constexpr):
    """out[i] = sum (or NaN-propagating max) of values[seg_start[i] : seg_end[i]], in order.
    LONGEST (the longest segment, known on the host) bounds the loop. A constexpr, because
    Triton's interpreter cannot loop to a runtime bound; it is fixed for a given model, so this
    compiles once per model."""
    pid = tl.program_id(0)
    lo = tl.load(seg_start + pid)
    hi = tl.load(seg_end + pid)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for off in range(0, LONGEST, BLOCK):
        idx = lo + off + tl.arange(0, BLOCK)
        v = tl.load(values + idx, mask=idx < hi, other=0.0)
        if KIND == LINF:
            acc = tl.maximum(acc, v, propagate_nan=tl.PropagateNan.ALL)
        else:
            acc += v
    tl.store(out + pid, _reduce_block(acc, KIND))


def _finish(kind: NormKind, value: torch.Tensor, p: float) -> torch.Tensor:
    if kind == NormKind.L2:
        return value.sqrt()
    if kind == NormKind.LP:
        return value.pow(1.0 / p)
    return value


def _reduce(tensors, p, per_tensor, inv_scale, found_inf):
    kind = norm_kind(p)
    device = tensors[0].device
    n = len(tensors)
    plan = make_plan(tensors)
    per_sum = torch.empty(n, dtype=torch.float64, device=device)
    p_dev = torch.full((), p, dtype=torch.float64, device=device)
    for g in plan.groups:
        partials = torch.empty(max(g.n_chunks, 1), dtype=torch.float64, device=device)
        if g.n_chunks:
            _norm_partials[(g.n_chunks,)](
                g.table, g.n_tensors, g.n_chunks, partials,
                found_inf if found_inf is not None else partials,
                inv_scale if inv_scale is not None else partials, p_dev,
                HAS_SCALE=inv_scale is not None, HAS_FOUND=found_inf is not None, KIND=int(kind), DTYPE=g.tl_dtype, ACC=acc_dtype(g.dtype),
                CHUNK=CHUNK, BLOCK=BLOCK)
        group_sum = torch.empty(g.n_tensors, dtype=torch.float64, device=device)
        _segment_reduce[(g.n_tensors,)](partials, g.first_chunk, g.end_chunk, group_sum,
                                        LONGEST=g.max_chunks, KIND=int(kind), BLOCK=BLOCK)
        per_sum[g.index] = group_sum
    total_sum = torch.empty(1, dtype=torch.float64, device=device)
    zero = torch.zeros(1, dtype=torch.int64, device=device)
    _segment_reduce[(1,)](per_sum, zero, zero + n, total_sum, LONGEST=n, KIND=int(kind), BLOCK=BLOCK)
    dtype = result_dtype(tensors)
    total = _finish(kind, total_sum.reshape(()), p).to(dtype)
    per = _finish(kind, per_sum, p).to(dtype) if per_tensor else per_sum.new_empty(0, dtype=dtype)
    return total, per


def norm(tensors: list[torch.Tensor], norm_type: float, per_tensor: bool):
    _validate.check_tensors(tensors, "norm", writes=False)
    return _reduce(tensors, _validate.norm_type(norm_type), per_tensor, None, None)


def unscale_norm(tensors, inv_scale, found_inf, norm_type: float, per_tensor: bool):
    _validate.check_tensors(tensors, "unscale_norm", writes=False)
    device = tensors[0].device
    _validate.amp_scalar(inv_scale, "inv_scale", device, "unscale_norm")
    _validate.amp_scalar(found_inf, "found_inf", device, "unscale_norm")
    return _reduce(tensors, _validate.norm_type(norm_type), per_tensor, inv_scale, found_inf)
