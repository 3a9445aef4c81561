from __future__ import annotations

import torch

from mopt_fast import _validate
from mopt_fast.torch_ops.scale import scale_inplace
from mopt_fast.torch_ops.unscale_norm import unscale_norm


@torch.no_grad()
def unscale_clip_inplace(
    tensors: list[torch.Tensor], inv_scale: torch.Tensor, found_inf: torch.Tensor, max_norm: float, norm_type: float
) -> torch.Tensor:
    """unscale_norm, then scale_inplace by inv_scale and the clip coefficient (a no-op when
    found_inf is set): the AMP clip of the compiled backends, as two passes of this backend."""
    _validate.unscale_clip_args(tensors, inv_scale, found_inf, max_norm)
    total, _ = unscale_norm(tensors, inv_scale, found_inf, norm_type, False)
    scale_inplace(tensors, inv_scale, total, max_norm, found_inf)
    return total
