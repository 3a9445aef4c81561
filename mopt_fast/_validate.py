"""Argument checks shared by the functional API and the pure-torch backend.

The compiled kernels make the same per-tensor checks in C++ before writing anything; these Python
versions serve the torch backend and calls that span several devices, where every group must be
checked before the first one is modified.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from mopt_fast._ops import ONE_DEVICE

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def one_device_refused(error: ValueError) -> bool:
    """Whether a kernel refused a list for spanning devices (it does so before writing)."""
    return ONE_DEVICE in str(error)


def check_tensors(tensors: list[torch.Tensor], op: str, writes: bool = True, one_device: bool = True) -> None:
    """Every item a dense floating-point Tensor, all on tensors[0]'s device unless not
    `one_device`. An op that `writes` also refuses a tensor whose elements share memory (an
    expanded one): its results could not be written back. Read-only ops read such a tensor as it
    is."""
    first = tensors[0].device if one_device and tensors and isinstance(tensors[0], torch.Tensor) else None
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"mopt_fast.{op}: item {i} is {type(t).__name__}, not a Tensor")
        if first is not None and t.device != first:
            raise ValueError(f"mopt_fast.{op}: tensor {i} is on {t.device} but tensor 0 is on {first}; {ONE_DEVICE}")
        if t.layout is not torch.strided:
            raise ValueError(
                f"mopt_fast.{op}: tensor {i} has layout {t.layout}; only dense (strided) "
                "gradients are supported, not sparse ones"
            )
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"mopt_fast.{op}: tensor {i} has dtype {t.dtype}; supported dtypes are "
                "float32, float64, float16 and bfloat16"
            )
        if writes and not t.is_contiguous() and torch._debug_has_internal_overlap(t) == 1:
            raise ValueError(
                f"mopt_fast.{op}: tensor {i} has elements that share memory (e.g. an expanded "
                "tensor); give it its own memory first (.contiguous())"
            )


def norm_type(value: float | int | str) -> float:
    p = float(value)
    if not p > 0.0:  # also rejects NaN
        raise ValueError(f"mopt_fast: norm_type must be > 0 or inf, got {value!r}")
    return p


def non_negative(value: float | torch.Tensor, name: str) -> float:
    """A number >= 0 (NaN rejected). Like torch's clipping functions, a one-element tensor is
    taken as float(value), which reads a device tensor back to the host."""
    v = float(value)
    if not v >= 0.0:  # also rejects NaN
        raise ValueError(f"mopt_fast: {name} must be a non-negative number, got {value!r}")
    return v


def amp_scalar(t: torch.Tensor, name: str, device: torch.device, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"mopt_fast.{op}: {name} must be a Tensor, got {type(t).__name__}")
    if t.numel() != 1 or t.dtype != torch.float32:
        raise ValueError(
            f"mopt_fast.{op}: {name} must be a one-element float32 tensor, got {t.dtype} of "
            f"shape {tuple(t.shape)}"
        )
    if t.device != device:
        raise ValueError(
            f"mopt_fast.{op}: {name} is on {t.device} but the gradients are on {device}; "
            "gradients on several devices need one found_inf/inv_scale per device"
        )


def scale_tensor(t: torch.Tensor, op: str, device: torch.device | None = None) -> None:
    """A scale or norm tensor: one element, float32 or float64 (on `device` when given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"mopt_fast.{op}: expected a Tensor, got {type(t).__name__}")
    if device is not None and t.device != device:
        raise ValueError(f"mopt_fast.{op}: a scale/norm on {t.device} for tensors on {device}")
    if t.numel() != 1 or t.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"mopt_fast.{op}: the scale/norm must be a number or a one-element float32 or "
            f"float64 tensor, got {t.dtype} of shape {tuple(t.shape)}"
        )


def norm_tensor(t: torch.Tensor, op: str) -> None:
    """A total norm given to clip with: a one-element floating-point tensor (fp16/bf16 too, as
    torch's clip_grads_with_norm_ takes them)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"mopt_fast.{op}: total_norm must be a Tensor, got {type(t).__name__}")
    if t.numel() != 1 or t.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"mopt_fast.{op}: total_norm must be a one-element float32, float64, float16 or "
            f"bfloat16 tensor, got {t.dtype} of shape {tuple(t.shape)}"
        )


def tensor_list(tensors: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        return [tensors]
    return list(tensors)


def unscale_clip_args(tensors: list[torch.Tensor], inv_scale, found_inf, max_norm: float) -> None:
    """The arguments of the unscale_clip_inplace op (see mopt_fast/ops.h), checked as the C++ kernels do."""
    check_tensors(tensors, "unscale_clip")
    device = tensors[0].device
    amp_scalar(inv_scale, "inv_scale", device, "unscale_clip")
    amp_scalar(found_inf, "found_inf", device, "unscale_clip")
    non_negative(max_norm, "max_norm")


def scale_args(tensors: list[torch.Tensor], scale, total_norm, max_norm: float, found_inf) -> None:
    """The arguments of the scale_inplace op (see mopt_fast/ops.h), checked as the C++ kernels do."""
    check_tensors(tensors, "scale")
    device = tensors[0].device
    for t in (scale, total_norm):
        if t is not None:
            scale_tensor(t, "scale", device)
    if found_inf is not None:
        amp_scalar(found_inf, "found_inf", device, "scale")
    if total_norm is not None:
        non_negative(max_norm, "max_norm")


def byte_range(t: torch.Tensor) -> tuple[int, int]:
    """The bytes [first, end) a tensor's elements can touch; (0, 0) for a zero-size tensor."""
    if t.numel() == 0:
        return 0, 0
    first = t.data_ptr()
    if t.is_contiguous():  # the usual gradient: no walk over its strides
        return first, first + t.nbytes
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return first, first + (last + 1) * t.element_size()


def spans_overlap(spans: list[tuple[int, int]]) -> bool:
    """Whether any two non-empty byte spans [first, end) intersect (one sort and one sweep)."""
    reach = 0
    for first, end in sorted(span for span in spans if span[0] != span[1]):
        if first < reach:
            return True
        reach = max(reach, end)
    return False


def disjoint_rounds(tensors: list[torch.Tensor]) -> list[list[int]] | None:
    """A list that names one tensor twice, or two views of shared memory, must be written one entry
    after another, as torch's foreach ops do on the CPU (scale_grads_([p, p], 0.5) quarters p): a
    multi-tensor kernel would otherwise race on that memory. Returns the positions of the list
    split into rounds, in list order, so that no two tensors of one round share bytes and a
    tensor comes after every earlier tensor it shares bytes with; None when no two tensors share
    bytes (the usual case). The C++ twin is disjoint_rounds in csrc/checks.h."""
    ranges = [byte_range(t) for t in tensors]
    if not spans_overlap(ranges):
        return None
    # Rare: quadratic, but only over lists that do share memory.
    round_of: list[int] = []
    rounds: list[list[int]] = []
    for i, (first, end) in enumerate(ranges):
        r = 0
        for j in range(i):
            if first < ranges[j][1] and ranges[j][0] < end:
                r = max(r, round_of[j] + 1)
        round_of.append(r)
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(i)
    return rounds
