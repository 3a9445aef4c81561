from __future__ import annotations

import torch

from mopt_fast import _validate
from mopt_fast.torch_ops._rounds import write_in_rounds


@torch.no_grad()
def scale_inplace(
    tensors: list[torch.Tensor],
    scale: torch.Tensor | None,
    total_norm: torch.Tensor | None,
    max_norm: float,
    found_inf: torch.Tensor | None,
) -> None:
    """tensors *= scale * min(1, max_norm / (total_norm + 1e-6)), unless found_inf is set.

    Without a host sync the pass cannot be skipped here, so a set found_inf turns the factor into
    exactly 1 (x * 1 == x bit for bit).
    """
    _validate.scale_args(tensors, scale, total_norm, max_norm, found_inf)
    device = tensors[0].device
    factor = scale.reshape(()) if scale is not None else None
    if total_norm is not None:
        coef = torch.clamp(max_norm / (total_norm.reshape(()) + 1e-6), max=1.0)
        factor = coef if factor is None else factor.to(coef.dtype) * coef
    if factor is None:
        return
    if found_inf is not None:
        factor = torch.where(found_inf.reshape(()) != 0, torch.ones_like(factor), factor)
    factor = factor.to(device)

    def write(group: list[torch.Tensor]) -> None:
        if device.type in ("cpu", "cuda"):
            torch._foreach_mul_(group, factor)
        else:
            for t in group:
                t.mul_(factor)

    write_in_rounds(write, tensors)
