"""ModelSummary: the table of the module's layers and parameter counts at the start of fit."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mopt_fast.callbacks.callback import Callback

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import CallbackTrainer

__all__ = ["ModelSummary"]


def _human(n: float) -> str:
    for unit in ("", " K", " M", " B", " T"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else str(n)
        n /= 1000
    return f"{n:.1f} P"


class ModelSummary(Callback):
    """Prints a table of the module's direct children (name, type, parameters, mode) and the
    trainable / total parameter counts when fitting starts."""

    def __init__(self, max_depth: int = 1) -> None:
        self.max_depth = max_depth

    @staticmethod
    def summarize(module: torch.nn.Module, max_depth: int = 1) -> str:
        rows: list[tuple[str, str, str, str, str]] = []
        for name, child in module.named_modules():
            depth = name.count(".") + 1 if name else 0
            if depth == 0 or depth > max_depth:
                continue
            n = sum(p.numel() for p in child.parameters())
            rows.append((str(len(rows)), name, type(child).__name__, _human(n), "train" if child.training else "eval"))
        header = ("", "Name", "Type", "Params", "Mode")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
        line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
        sep = "-" * len(line(header))
        params = list(module.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        size_mb = sum(p.numel() * p.element_size() for p in params) / 1e6
        out = [sep, line(header), sep, *map(line, rows), sep,
               f"{_human(trainable):<10} Trainable params",
               f"{_human(total - trainable):<10} Non-trainable params",
               f"{_human(total):<10} Total params",
               f"{size_mb:<10.3f} Total estimated model params size (MB)"]
        return "\n".join(out)

    def on_fit_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            print(self.summarize(pl_module, self.max_depth))

