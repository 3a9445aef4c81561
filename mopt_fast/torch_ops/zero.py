from __future__ import annotations

import torch

from mopt_fast import _validate


@torch.no_grad()
def zero_inplace(tensors: list[torch.Tensor]) -> None:
    _validate.check_tensors(tensors, "zero")
    torch._foreach_zero_(tensors)
