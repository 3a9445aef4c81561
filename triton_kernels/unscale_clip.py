"""AMP unscale + inf/NaN check + clip-by-norm in one op: the read pass of norm.py, then the
scaling pass of scale.py by inv_scale and the clip coefficient, masked off on the device when
found_inf is set. No host sync."""
from __future__ import annotations

import torch

from mopt_fast import _validate
from mopt_fast.triton_kernels.norm import unscale_norm
from mopt_fast.triton_kernels.scale import scale_inplace


def unscale_clip_inplace(tensors, inv_scale, found_inf, max_norm: float, norm_type: float) -> torch.Tensor:
    _validate.unscale_clip_args(tensors, inv_scale, found_inf, max_norm)
    total, _ = unscale_norm(tensors, inv_scale, found_inf, norm_type, False)
    scale_inplace(tensors, inv_scale, total, max_norm, found_inf)
    return total
