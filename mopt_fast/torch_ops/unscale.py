from __future__ import annotations

import torch

from mopt_fast import _validate


@torch.no_grad()
def unscale_inplace(
    tensors: list[torch.Tensor], found_inf: torch.Tensor, inv_scale: torch.Tensor
) -> None:
    """torch._amp_foreach_non_finite_check_and_unscale_ itself: the semantics we promise."""
    _validate.check_tensors(tensors, "unscale")
    device = tensors[0].device
    _validate.amp_scalar(found_inf, "found_inf", device, "unscale")
    _validate.amp_scalar(inv_scale, "inv_scale", device, "unscale")
    torch._amp_foreach_non_finite_check_and_unscale_(tensors, found_inf, inv_scale)
