from __future__ import annotations

import torch

from mopt_fast import _validate
from mopt_fast.torch_ops._rounds import write_in_rounds


@torch.no_grad()
def zero_inplace(tensors: list[torch.Tensor]) -> None:
    _validate.check_tensors(tensors, "zero")
    write_in_rounds(torch._foreach_zero_, tensors)
