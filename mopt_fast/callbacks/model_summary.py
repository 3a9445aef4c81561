"""ModelSummary: Lightning 2.6's table of the module's layers at the start of fit, column for column.

Name, type, parameter count, mode (train / eval) and FLOPs of each layer down to `max_depth` (-1:
all), plus the input and output sizes of each when the module sets ``example_input_array`` (it is
run once through the module, moved as a batch is, under the precision's forward context, with
``torch.utils.flop_counter`` counting), and the totals: trainable / non-trainable / total
parameters, the parameters' size in MB at the Trainer's precision (32 bits for a mixed one, with
Lightning's warning), modules in train / eval mode and total FLOPs. The table goes to the
``mopt_fast`` INFO log (stderr unless logging is configured), as Lightning's goes to its own.

A subclass that overrides `summarize` gets Lightning's arguments: ``(summary_data,
total_parameters, trainable_parameters, model_size, total_training_modes, total_flops=...,
**summarize_kwargs)``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mopt_fast.callbacks.callback import Callback

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import CallbackTrainer

__all__ = ["ModelSummary", "Summary", "format_summary_table", "get_human_readable_count"]

log = logging.getLogger("mopt_fast.trainer.model_summary")  # under the Trainer's INFO logger (callback.py)

PARAMETER_NUM_UNITS = [" ", "K", "M", "B", "T"]
UNKNOWN_SIZE = "?"
LEFTOVER_PARAMS_NAME = "other params"
NOT_APPLICABLE = "n/a"
# Bits per parameter for the size estimate, by Trainer precision (Lightning's table; others: 32).
PRECISION_TO_BITS = {"64": 64, "32": 32, "16": 16, "bf16": 16, "16-true": 16, "bf16-true": 16, "32-true": 32,
                     "64-true": 64}
_warned_uninitialized = False


def get_human_readable_count(number: int | float) -> str:
    """`number` with K, M, B, T for thousands, millions, billions, trillions (Lightning's format:
    ``123  ``, ``1.2 K``, ``400 T``, ``5,000 T``)."""
    assert number >= 0
    labels = PARAMETER_NUM_UNITS
    num_digits = int(math.floor(math.log10(number)) + 1 if number > 0 else 1)
    num_groups = min(int(math.ceil(num_digits / 3)), len(labels))  # no abbreviation beyond trillions
    number = number * (10 ** (-3 * (num_groups - 1)))
    index = num_groups - 1
    if index < 1 or number >= 100:
        return f"{int(number):,d} {labels[index]}"
    return f"{number:,.1f} {labels[index]}"


def _counted(p: torch.Tensor) -> int:
    """A parameter's element count; 0 for an uninitialized (lazy) one, with Lightning's warning once."""
    global _warned_uninitialized
    if isinstance(p, torch.nn.parameter.UninitializedParameter) and not _is_dtensor(p):
        if not _warned_uninitialized:
            _warned_uninitialized = True
            warnings.warn(
                "The total number of parameters detected may be inaccurate because the model contains an instance of "
                "`UninitializedParameter`. To get an accurate number, set `self.example_input_array` in your "
                "LightningModule.",
                stacklevel=3,
            )
        return 0
    return p.numel()


def _is_dtensor(p: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(p, DTensor)


def _batch_shape(batch: Any) -> str | list:
    if hasattr(batch, "shape"):
        return list(batch.shape)
    if isinstance(batch, (list, tuple)):
        return [_batch_shape(el) for el in batch]
    return UNKNOWN_SIZE


class _LayerSummary:
    """One layer's row: type, parameters, mode, and the input / output sizes its first forward saw."""

    def __init__(self, module: torch.nn.Module) -> None:
        self._module = module
        self._in_size: str | list | None = None
        self._out_size: str | list | None = None
        self._handle: Any = None
        if not isinstance(module, torch.jit.ScriptModule):  # no hooks on a ScriptModule
            self._handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, _: torch.nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        inp = (*args, *kwargs.values()) if kwargs is not None else args
        if len(inp) == 1:
            inp = inp[0]
        self._in_size = _batch_shape(inp)
        self._out_size = _batch_shape(out)
        self.detach_hook()  # a module called again (recursion, reuse) keeps its first sizes

    def detach_hook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def in_size(self) -> str | list:
        return self._in_size or UNKNOWN_SIZE

    @property
    def out_size(self) -> str | list:
        return self._out_size or UNKNOWN_SIZE

    @property
    def layer_type(self) -> str:
        return type(self._module).__name__

    @property
    def num_parameters(self) -> int:
        return sum(_counted(p) for p in self._module.parameters())

    @property
    def training(self) -> bool:
        return self._module.training


class Summary:
    """The numbers of the table for `model` down to `max_depth` (Lightning's
    ``lightning.pytorch.utilities.model_summary.ModelSummary``; ``str(summary)`` is the table)."""

    def __init__(self, model: torch.nn.Module, max_depth: int = 1) -> None:
        if not isinstance(max_depth, int) or max_depth < -1:
            raise ValueError(f"`max_depth` can be -1, 0 or > 0, got {max_depth}.")
        self._model = model
        self._max_depth = max_depth
        self._flop_counter = FlopCounterMode(display=False, depth=max_depth + 1)  # the root is depth 0
        self._layer_summary = self._summarize()
        trainer = getattr(model, "_trainer", None)
        precision = getattr(trainer, "precision", None) if trainer is not None else None
        if trainer is not None and precision not in PRECISION_TO_BITS:
            warnings.warn(
                f"Precision {precision} is not supported by the model summary.  Estimated model size in MB will not be "
                "accurate. Using 32 bits instead.",
                UserWarning,
                stacklevel=2,
            )
        bits = PRECISION_TO_BITS.get(precision, 32) if trainer is not None else 32  # type: ignore[arg-type]
        self._precision_megabytes = (bits / 8.0) * 1e-6

    def _named_modules(self) -> list[tuple[str, torch.nn.Module]]:
        if self._max_depth == 0:
            return []
        if self._max_depth == 1:
            return list(self._model.named_children())
        return list(self._model.named_modules())[1:]  # without the root

    def _summarize(self) -> OrderedDict[str, _LayerSummary]:
        summary = OrderedDict((name, _LayerSummary(module)) for name, module in self._named_modules())
        if getattr(self._model, "example_input_array", None) is not None:
            self._forward_example_input()
        for layer in summary.values():
            layer.detach_hook()
        if self._max_depth >= 1:
            for name in [k for k in summary if k.count(".") >= self._max_depth]:
                del summary[name]
        return summary

    def _forward_example_input(self) -> None:
        """The example input through the module, moved as the loops move a batch (the batch-transfer
        hooks), in eval mode and without gradients, each module's mode restored after."""
        model: Any = self._model
        trainer = getattr(model, "_trainer", None)
        batch = model._on_before_batch_transfer(model.example_input_array)
        batch = model._apply_batch_transfer_handler(batch)
        modes = {m: m.training for m in model.modules()}
        model.eval()
        forward_context = (contextlib.nullcontext() if trainer is None
                           else trainer.precision_plugin.forward_context())
        try:
            with torch.no_grad(), forward_context, self._flop_counter:
                if isinstance(batch, (list, tuple)):
                    model(*batch)
                elif isinstance(batch, dict):
                    model(**batch)
                else:
                    model(batch)
        finally:
            for module, training in modes.items():
                module.training = training

    # -- the columns -------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return list(self._layer_summary)

    @property
    def layer_types(self) -> list[str]:
        return [layer.layer_type for layer in self._layer_summary.values()]

    @property
    def in_sizes(self) -> list:
        return [layer.in_size for layer in self._layer_summary.values()]

    @property
    def out_sizes(self) -> list:
        return [layer.out_size for layer in self._layer_summary.values()]

    @property
    def param_nums(self) -> list[int]:
        return [layer.num_parameters for layer in self._layer_summary.values()]

    @property
    def training_modes(self) -> list[bool]:
        return [layer.training for layer in self._layer_summary.values()]

    @property
    def flop_counts(self) -> dict[str, dict[Any, int]]:
        counts = self._flop_counter.get_flop_counts()
        return {name: counts.get(f"{type(self._model).__name__}.{name}", {}) for name in self.layer_names}

    # -- the totals --------------------------------------------------------------------------------
    @property
    def total_training_modes(self) -> dict[str, int]:
        modes = [m.training for m in self._model.modules()][1:]  # without the root
        return {"train": modes.count(True), "eval": modes.count(False)}

    @property
    def total_parameters(self) -> int:
        return sum(_counted(p) for p in self._model.parameters())

    @property
    def trainable_parameters(self) -> int:
        return sum(_counted(p) for p in self._model.parameters() if p.requires_grad)

    @property
    def total_layer_params(self) -> int:
        return sum(self.param_nums)

    @property
    def model_size(self) -> float:
        return self.total_parameters * self._precision_megabytes

    @property
    def total_flops(self) -> int:
        return self._flop_counter.get_total_flops()

    def get_summary_data(self) -> list[tuple[str, list[str]]]:
        """The table's columns, each ``(header, cells)``; the parameters no layer shown holds as an
        "other params" row (Lightning's `_get_summary_data`)."""
        arrays = [
            (" ", [str(i) for i in range(len(self._layer_summary))]),
            ("Name", self.layer_names),
            ("Type", self.layer_types),
            ("Params", [get_human_readable_count(n) for n in self.param_nums]),
            ("Mode", ["train" if mode else "eval" for mode in self.training_modes]),
            ("FLOPs", [get_human_readable_count(sum(c.values())) for c in self.flop_counts.values()]),
        ]
        if getattr(self._model, "example_input_array", None) is not None:
            arrays.append(("In sizes", [str(x) for x in self.in_sizes]))
            arrays.append(("Out sizes", [str(x) for x in self.out_sizes]))
        leftover = self.total_parameters - self.total_layer_params
        if leftover > 0:
            columns = dict(arrays)
            for header, cell in ((" ", " "), ("Name", LEFTOVER_PARAMS_NAME), ("Type", NOT_APPLICABLE),
                                 ("Params", get_human_readable_count(leftover)), ("Mode", NOT_APPLICABLE),
                                 ("FLOPs", NOT_APPLICABLE), ("In sizes", NOT_APPLICABLE),
                                 ("Out sizes", NOT_APPLICABLE)):
                if header in columns:
                    columns[header].append(cell)
        return arrays

    _get_summary_data = get_summary_data  # Lightning's name

    def __str__(self) -> str:
        return format_summary_table(self.total_parameters, self.trainable_parameters, self.model_size,
                                    self.total_training_modes, self.total_flops, *self.get_summary_data())

    def __repr__(self) -> str:
        return str(self)


def format_summary_table(total_parameters: int, trainable_parameters: int, model_size: float,
                         total_training_modes: dict[str, int], total_flops: int, *cols: tuple[str, list[str]]) -> str:
    """The columns as Lightning's table (`_format_summary_table`), the totals below it."""
    n_rows = len(cols[0][1])
    widths = [max(max((len(str(a)) for a in c[1]), default=0) if n_rows else 0, len(c[0])) for c in cols]
    total_width = sum(widths) + 3 * (1 + len(cols))
    cell = "{:<{}}"
    summary = " | ".join(cell.format(c[0], w) for c, w in zip(cols, widths)) + "\n" + "-" * total_width
    for i in range(n_rows):
        summary += "\n" + " | ".join(cell.format(str(c[1][i]), w) for c, w in zip(cols, widths))
    summary += "\n" + "-" * total_width
    for value, label in ((get_human_readable_count(trainable_parameters), "Trainable params"),
                         (get_human_readable_count(total_parameters - trainable_parameters), "Non-trainable params"),
                         (get_human_readable_count(total_parameters), "Total params"),
                         (f"{model_size:,.3f}", "Total estimated model params size (MB)"),
                         (total_training_modes["train"], "Modules in train mode"),
                         (total_training_modes["eval"], "Modules in eval mode"),
                         (get_human_readable_count(total_flops), "Total Flops")):
        summary += "\n" + cell.format(value, 10) + label
    return summary


class ModelSummary(Callback):
    """Logs the table of the module's layers when fit starts (on global rank 0); see the module
    docstring. `max_depth`: the deepest layers shown (0: no table, -1: all); `summarize_kwargs`:
    passed on to `summarize` (for a subclass that overrides it)."""

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        self._max_depth: int = max_depth
        self._summarize_kwargs: dict[str, Any] = summarize_kwargs

    @property
    def max_depth(self) -> int:
        return self._max_depth

    @max_depth.setter
    def max_depth(self, value: int) -> None:
        self._max_depth = value

    def on_fit_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if not self._max_depth:
            return
        summary = Summary(pl_module, max_depth=self._max_depth)
        summary_data = summary.get_summary_data()
        if trainer.is_global_zero:
            self.summarize(summary_data, summary.total_parameters, summary.trainable_parameters, summary.model_size,
                           summary.total_training_modes, total_flops=summary.total_flops, **self._summarize_kwargs)

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        """Logs the table (INFO). Override it to show the numbers another way."""
        log.info("\n" + format_summary_table(total_parameters, trainable_parameters, model_size,
                                             total_training_modes, total_flops, *summary_data))
