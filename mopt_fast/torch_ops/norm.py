from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch

from mopt_fast import _validate
from mopt_fast._ops import result_dtype


def per_tensor_norms(tensors: list[torch.Tensor], p: float) -> list[torch.Tensor]:
    """Norm of each tensor, accumulated in fp32 (fp64 for fp64 tensors), in list order.

    Zero-size tensors give 0 (torch raises for their inf norm).
    """
    out: list[torch.Tensor | None] = [None] * len(tensors)
    device = tensors[0].device
    zero = {}
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        acc = torch.float64 if t.dtype == torch.float64 else torch.float32
        if t.numel() == 0:
            if acc not in zero:
                zero[acc] = torch.zeros((), dtype=acc, device=device)
            out[i] = zero[acc]
        else:
            by_dtype.setdefault(acc, []).append(i)
    for acc, idx in by_dtype.items():
        group = [tensors[i] for i in idx]
        # dtype=acc: fp16/bf16 accumulate in and return fp32 (a half result overflows at 65504).
        norms: Sequence[torch.Tensor]
        if device.type in ("cpu", "cuda"):
            norms = torch._foreach_norm(group, p, dtype=acc)
        else:
            norms = [torch.linalg.vector_norm(t, p, dtype=acc) for t in group]
        for i, n in zip(idx, norms):
            out[i] = n
    return cast(list[torch.Tensor], out)  # every index was filled above


def combine(norms: list[torch.Tensor], p: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([n.to(dtype) for n in norms]), p)


@torch.no_grad()
def norm(
    tensors: list[torch.Tensor], norm_type: float, per_tensor: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    _validate.check_tensors(tensors, "norm", writes=False)
    p = _validate.norm_type(norm_type)
    dtype = result_dtype(tensors)
    norms = per_tensor_norms(tensors, p)
    per = torch.stack([n.to(dtype) for n in norms]) if per_tensor else norms[0].new_empty(0, dtype=dtype)
    return combine(norms, p, dtype), per
