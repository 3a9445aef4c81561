"""ThroughputMonitor (Lightning 2.6's ``lightning.pytorch.callbacks.ThroughputMonitor``) with its
helpers from ``lightning.fabric.utilities.throughput``: `Throughput` (the rolling rates),
`measure_flops` (a model's FLOPs per batch, by torch's FlopCounterMode) and `get_available_flops`
(a device's theoretical FLOPs, for the model FLOPs utilization).

For each stage (train, validate, test, predict) the callback counts batches and samples (and items
with `length_fn`, FLOPs with the module's ``flops_per_batch``) against the time since the stage
started, and logs `Throughput.compute`'s metrics as ``<stage>/<key>`` at the steps the loggers
write: ``time``, ``batches``, ``samples`` (``lengths``) always; ``device/batches_per_sec``,
``device/samples_per_sec`` (``device/items_per_sec``, ``device/flops_per_sec``, ``device/mfu``)
once `window_size` updates are in, and the global rates when several processes run. Validation
time inside a fit does not count as training time.
"""
from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch

from mopt_fast.callbacks.callback import Callback
from mopt_fast.core.states import RunningStage, TrainerFn

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import MonitorTrainer

__all__ = ["Throughput", "ThroughputMonitor", "get_available_flops", "measure_flops"]

Number = TypeVar("Number", int, float)


class _MonotonicWindow(Generic[Number]):
    """The last `maxlen` values of a count that must grow with every append."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self.values: deque[Number] = deque(maxlen=maxlen)

    def append(self, value: Number) -> None:
        if self.values and self.values[-1] >= value:
            raise ValueError(f"Expected the value to increase, last: {self.values[-1]}, current: {value}")
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> Number:
        return self.values[index]

    def clear(self) -> None:
        self.values.clear()


class Throughput:
    """Rolling throughput over the last `window_size` updates.

    `update` takes running totals (time, batches, samples, lengths) and each batch's FLOPs;
    `compute` gives ``time``, ``batches``, ``samples`` (``lengths``), and once the window is full
    ``device/batches_per_sec``, ``device/samples_per_sec`` (``device/items_per_sec``), and once
    `window_size` FLOPs values are in ``device/flops_per_sec`` (``device/mfu`` against
    `available_flops`); with `world_size` > 1 also the global ``batches_per_sec``,
    ``samples_per_sec``, ``items_per_sec`` and ``flops_per_sec``. `separator` joins the keys.
    """

    def __init__(self, available_flops: float | None = None, world_size: int = 1, window_size: int = 100,
                 separator: str = "/") -> None:
        assert world_size > 0
        assert window_size > 1  # a rate needs two points
        self.available_flops = available_flops
        self.separator = separator
        self.world_size = world_size
        self._time: _MonotonicWindow[float] = _MonotonicWindow(window_size)
        self._batches: _MonotonicWindow[int] = _MonotonicWindow(window_size)
        self._samples: _MonotonicWindow[int] = _MonotonicWindow(window_size)
        self._lengths: _MonotonicWindow[int] = _MonotonicWindow(window_size)
        self._flops: deque[int] = deque(maxlen=window_size)

    def update(self, *, time: float, batches: int, samples: int, lengths: int | None = None,
               flops: int | None = None) -> None:
        """Totals so far on this device (`time` in seconds), and the FLOPs of the batch since the last update."""
        self._time.append(time)
        if samples < batches:
            raise ValueError(f"Expected samples ({samples}) to be greater or equal than batches ({batches})")
        self._batches.append(batches)
        self._samples.append(samples)
        if lengths is not None:
            if lengths < samples:
                raise ValueError(f"Expected lengths ({lengths}) to be greater or equal than samples ({samples})")
            self._lengths.append(lengths)
            if len(self._samples) != len(self._lengths):
                raise RuntimeError(
                    f"If lengths are passed ({len(self._lengths)}), there needs to be the same number of samples"
                    f" ({len(self._samples)})"
                )
        if flops is not None:
            self._flops.append(flops * self.world_size)  # every device runs the batch's FLOPs

    def compute(self) -> dict[str, int | float]:
        sep = self.separator
        metrics: dict[str, int | float] = {"time": self._time[-1], "batches": self._batches[-1],
                                           "samples": self._samples[-1]}
        if self._lengths:
            metrics["lengths"] = self._lengths[-1]
        several = self.world_size > 1
        if len(self._time) == self._time.maxlen:
            elapsed = self._time[-1] - self._time[0]
            batches_per_sec = (self._batches[-1] - self._batches[0]) / elapsed
            samples_per_sec = (self._samples[-1] - self._samples[0]) / elapsed
            metrics[f"device{sep}batches_per_sec"] = batches_per_sec
            metrics[f"device{sep}samples_per_sec"] = samples_per_sec
            if several:
                metrics["batches_per_sec"] = batches_per_sec * self.world_size
                metrics["samples_per_sec"] = samples_per_sec * self.world_size
            if len(self._lengths) == self._lengths.maxlen:
                items_per_sec = (self._lengths[-1] - self._lengths[0]) / elapsed
                metrics[f"device{sep}items_per_sec"] = items_per_sec
                if several:
                    metrics["items_per_sec"] = items_per_sec * self.world_size
        if len(self._flops) == self._flops.maxlen:
            # The first update's FLOPs were spent before the window's first time point.
            flops_per_sec = (sum(self._flops) - self._flops[0]) / (self._time[-1] - self._time[0])
            device_flops_per_sec = flops_per_sec / self.world_size
            if several:
                metrics["flops_per_sec"] = flops_per_sec
            metrics[f"device{sep}flops_per_sec"] = device_flops_per_sec
            if self.available_flops:
                metrics[f"device{sep}mfu"] = device_flops_per_sec / self.available_flops
        return metrics

    def reset(self) -> None:
        for window in (self._time, self._batches, self._samples, self._lengths, self._flops):
            window.clear()


def measure_flops(model: torch.nn.Module, forward_fn: Callable[[], torch.Tensor],
                  loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> int:
    """The FLOPs of `forward_fn()` (with `loss_fn`: of the forward, the loss and its backward),
    counted by torch's FlopCounterMode; a model on the meta device costs no compute."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        if loss_fn is None:
            forward_fn()
        else:
            loss_fn(forward_fn()).backward()
    return counter.get_total_flops()


# Theoretical FLOPs per second of CUDA chips by dtype ("tfloat32": float32 matmuls on TF32 cores),
# the figures Lightning uses.
f64, f32, bf16, f16, i8 = torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.int8
_CUDA_FLOPS: dict[str, dict[torch.dtype | str, float]] = {
    "h200 sxm1": {f64: 34e12, f32: 67e12, "tfloat32": 990e12, bf16: 2000e12, f16: 2000e12, i8: 4000e12},
    "h200 nvl1": {f64: 30e12, f32: 60e12, "tfloat32": 840e12, bf16: 1700e12, f16: 1700e12, i8: 3300e12},
    "h100 nvl": {f64: 67e12, f32: 133.8e12, "tfloat32": 989.4e12, bf16: 1978.8e12, f16: 1978.8e12, i8: 3957.8e12},
    "h100 sxm": {f64: 33.5e12, f32: 66.9e12, "tfloat32": 494.7e12, bf16: 989.4e12, f16: 989.4e12, i8: 1978.9e12},
    "h100 pcie": {f64: 25.6e12, f32: 51.2e12, "tfloat32": 378e12, bf16: 756e12, f16: 756e12, i8: 1513e12},
    "rtx 4090": {f32: 82.6e12, "tfloat32": 82.6e12, bf16: 82.6e12, f16: 82.6e12, i8: 660.6e12, "int4": 1321.2e12},
    "rtx 4080": {f32: 48.7e12, "tfloat32": 48.7e12, bf16: 48.7e12, f16: 48.7e12, i8: 389.9e12, "int4": 779.8e12},
    "rtx 4080 super": {f32: 52.2e12, "tfloat32": 52.2e12, bf16: 52.2e12, f16: 52.2e12, i8: 417.6e12, "int4": 835.2e12},
    "l4": {f32: 30.3e12, "tfloat32": 60e12, bf16: 121e12, f16: 121e12, i8: 242e12, "int4": 484e12},
    "l40": {f32: 90.5e12, "tfloat32": 90.5e12, bf16: 181e12, f16: 181e12, i8: 362e12, "int4": 724e12},
    "a100": {f64: 9.7e12, f32: 19.5e12, "tfloat32": 156e12, bf16: 312e12, f16: 312e12, i8: 624e12},
    "a6000": {f32: 38.7e12, "tfloat32": 77.4e12, bf16: 38.7e12, f16: 38.7e12, i8: 309.7e12, "int4": 619.3e12},
    "a40": {f32: 37.4e12, "tfloat32": 74.8e12, bf16: 37.4e12, f16: 37.4e12, i8: 299.3e12, "int4": 598.7e12},
    "a10g": {f32: 31.2e12, "tfloat32": 62.5e12, bf16: 125e12, f16: 125e12, i8: 250e12, "int4": 500e12},
    "rtx 3090 ti": {f32: 40e12, "tfloat32": 40e12, bf16: 40e12, f16: 40e12, i8: 320e12, "int4": 640e12},
    "rtx 3090": {f32: 35.6e12, "tfloat32": 35.6e12, bf16: 35.6e12, f16: 35.6e12, i8: 284e12, "int4": 568e12},
    "rtx 3080 ti": {f32: 34.1e12, "tfloat32": 34.1e12, bf16: 34.1e12, f16: 34.1e12, i8: 272.8e12, "int4": 546.6e12},
    "rtx 3080": {f32: 29.8e12, "tfloat32": 29.8e12, bf16: 29.8e12, f16: 29.8e12, i8: 238e12, "int4": 476e12},
    "rtx 3070": {f32: 20.3e12, "tfloat32": 20.3e12, bf16: 20.3e12, f16: 20.3e12, i8: 162.6e12, "int4": 325.2e12},
    "t4": {f32: 8.1e12, f16: 65e12, i8: 130e12, "int4": 260e12},
    "quadro rtx 5000": {f32: 11.2e12, f16: 89.2e12},
    "rtx 2080 super": {f32: 11.2e12, f16: 22.3e12, i8: 178.4e12, "int4": 356.8e12},
    "rtx 2080 ti": {f32: 14.2e12, f16: 28.5e12, i8: 227.7e12, "int4": 455.4e12},
    "rtx 2080": {f32: 10.6e12, f16: 21.2e12, i8: 169.6e12, "int4": 339.1e12},
    "rtx 2070 super": {f32: 9.1e12, f16: 18.1e12, i8: 145e12, "int4": 290e12},
    "titan rtx": {f32: 16.3e12, f16: 32.6e12, i8: 261e12, "int4": 522e12},
    "v100 sxm": {f64: 7.8e12, f32: 15.7e12, f16: 125e12},
    "v100 pcie": {f64: 7e12, f32: 14e12, f16: 112e12},
    "v100s pcie": {f64: 8.2e12, f32: 16.4e12, f16: 130e12},
}
del f64, f32, bf16, f16, i8


def _chip_name(device_name: str) -> str | None:
    """The `_CUDA_FLOPS` key of a CUDA device name (None: not a chip Lightning knows)."""
    chip = device_name.lower()
    if "h200" in chip:
        return "h200 sxm1" if "sxm1" in chip else "h200 nvl1" if "nvl1" in chip else chip
    if "h100" in chip:
        if "hbm3" in chip:
            return "h100 sxm"
        if "nvl" in chip:
            return "h100 nvl"
        return "h100 pcie" if "pcie" in chip or "hbm2e" in chip else chip
    if "l4" in chip:
        return "l40" if "tesla" in chip else "l4"
    if "geforce rtx" in chip:
        extra = " super" if "super" in chip else " ti" if "ti" in chip else ""
        return f"rtx {chip.split(' ')[3]}{extra}"
    for known, name in (("a6000", "a6000"), ("a100", "a100"), ("a40", "a40"), ("a10g", "a10g"), ("t4", "t4"),
                        ("quadro rtx 5000", "quadro rtx 5000"), ("titan rtx", "titan rtx"),
                        ("v100-sxm", "v100 sxm"), ("v100-pcie", "v100 pcie"), ("v100s-pcie", "v100s pcie")):
        if known in chip:
            return name
    return None


def get_available_flops(device: torch.device, dtype: torch.dtype | str) -> int | None:
    """The device's theoretical FLOPs per second for `dtype` (an optimistic upper limit); None for
    a CPU or a chip without figures (with a warning)."""
    if device.type != "cuda":
        return None  # Lightning has figures for CUDA chips and TPUs only
    device_name = torch.cuda.get_device_name(device)
    chip = _chip_name(device_name)
    if chip is None:
        warnings.warn(f"FLOPs not found for {device_name!r}", stacklevel=2)
        return None
    if chip not in _CUDA_FLOPS:
        warnings.warn(f"FLOPs not found for {device_name!r}, chip is {chip!r}", stacklevel=2)
        return None
    figures = _CUDA_FLOPS[chip]
    if dtype is torch.float32 and torch.cuda.get_device_capability()[0] >= 8 and (
            torch.get_float32_matmul_precision() != "highest"):
        dtype = "tfloat32"  # float32 matmuls run on the TF32 cores
    if dtype not in figures:
        warnings.warn(f"{device_name!r} does not support {dtype}", stacklevel=2)
        return None
    return int(figures[dtype])


def _compute_dtype(precision_plugin: Any) -> torch.dtype:
    """The dtype the module computes in: the mixed-precision plugin's autocast dtype, else float32."""
    dtype = getattr(precision_plugin, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


class ThroughputMonitor(Callback):
    """Logs the throughput of training, validation, testing and prediction (process 0 only).

    Args:
        batch_size_fn: the number of samples in a batch.
        length_fn: the number of items (e.g. tokens) in a batch, if counted.
        kwargs: `Throughput`'s ``window_size`` and ``separator``.

    The module's ``flops_per_batch`` attribute (see `measure_flops`), read at every batch, gives
    the FLOPs metrics; without it a warning says so once.
    """

    def __init__(self, batch_size_fn: Callable[[Any], int], length_fn: Callable[[Any], int] | None = None,
                 **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs
        self.batch_size_fn = batch_size_fn
        self.length_fn = length_fn
        self.available_flops: int | None = None
        self._throughputs: dict[RunningStage, Throughput] = {}
        self._t0s: dict[RunningStage, float] = {}
        self._lengths: dict[RunningStage, int] = {}
        self._samples: dict[RunningStage, int] = {}
        self._batches: dict[RunningStage, int] = {}
        self._module_has_flops: bool | None = None

    def _new_throughput(self, trainer: MonitorTrainer) -> Throughput:
        return Throughput(available_flops=self.available_flops, world_size=trainer.world_size, **self.kwargs)

    def setup(self, trainer: MonitorTrainer, pl_module: LightningModule, stage: str) -> None:
        self.available_flops = get_available_flops(trainer.strategy.root_device,
                                                   _compute_dtype(trainer.precision_plugin))
        if stage == TrainerFn.FITTING and trainer.enable_validation:
            self._throughputs[RunningStage.VALIDATING] = self._new_throughput(trainer)
        running = trainer.state.stage
        assert running is not None
        self._throughputs[RunningStage(running)] = self._new_throughput(trainer)

    def _start(self, trainer: MonitorTrainer) -> None:
        stage = RunningStage(trainer.state.stage)
        # A fit starts its counts afresh at every validation; other runs only the first time.
        if trainer.state.fn == TrainerFn.FITTING or stage not in self._samples:
            self._throughputs[stage].reset()
            self._lengths[stage] = self._samples[stage] = self._batches[stage] = 0
        self._t0s[stage] = time.perf_counter()

    @torch.inference_mode()  # batch_size_fn / length_fn may compute on tensors
    def _update(self, trainer: MonitorTrainer, pl_module: LightningModule, batch: Any) -> None:
        stage = RunningStage(trainer.state.stage)
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the batch's kernels done before the clock is read
        elapsed = time.perf_counter() - self._t0s[stage]
        if self.length_fn is not None:
            self._lengths[stage] += self.length_fn(batch)
        if self._module_has_flops is None:
            self._module_has_flops = hasattr(pl_module, "flops_per_batch")
            if not self._module_has_flops:
                warnings.warn(
                    "When using the `ThroughputMonitor`, you need to define a `flops_per_batch` attribute or property"
                    f" in {type(pl_module).__name__} to compute the FLOPs.",
                    stacklevel=2,
                )
        flops = getattr(pl_module, "flops_per_batch") if self._module_has_flops else None  # noqa: B009
        self._samples[stage] += self.batch_size_fn(batch)
        self._batches[stage] += 1
        self._throughputs[stage].update(time=elapsed, batches=self._batches[stage], samples=self._samples[stage],
                                        lengths=None if self.length_fn is None else self._lengths[stage], flops=flops)

    def _compute(self, trainer: MonitorTrainer, iter_num: int | None = None) -> None:
        if not trainer.should_update_logs:
            return
        stage = RunningStage(trainer.state.stage)
        throughput = self._throughputs[stage]
        metrics = {f"{stage.value}{throughput.separator}{k}": v for k, v in throughput.compute().items()}
        trainer.log_metrics(metrics, step=iter_num)

    def on_train_start(self, trainer: MonitorTrainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self._start(trainer)

    def on_train_batch_end(self, trainer: MonitorTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        self._update(trainer, pl_module, batch)
        if not trainer.fit_loop.should_accumulate():  # logged on the batches that step
            self._compute(trainer)

    def on_validation_start(self, trainer: MonitorTrainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self._start(trainer)

    def on_validation_batch_end(self, trainer: MonitorTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self._evaluation_batch_end(trainer, pl_module, batch, trainer.evaluation_loop)

    def on_validation_end(self, trainer: MonitorTrainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        # The training clock skips the validation run: from the last training update to the end
        # of validation.
        train_times = self._throughputs[RunningStage.TRAINING]._time
        val_times = self._throughputs[RunningStage.VALIDATING]._time
        training_finished = self._t0s[RunningStage.TRAINING] + (train_times[-1] if len(train_times) else 0.0)
        paused = self._t0s[RunningStage.VALIDATING] - training_finished
        self._t0s[RunningStage.TRAINING] += paused + (val_times[-1] if len(val_times) else 0.0)

    def on_test_start(self, trainer: MonitorTrainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self._start(trainer)

    def on_test_batch_end(self, trainer: MonitorTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.is_global_zero:
            self._evaluation_batch_end(trainer, pl_module, batch, trainer.evaluation_loop)

    def on_predict_start(self, trainer: MonitorTrainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self._start(trainer)

    def on_predict_batch_end(self, trainer: MonitorTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.is_global_zero:
            self._evaluation_batch_end(trainer, pl_module, batch, trainer.predict_loop)

    def _evaluation_batch_end(self, trainer: MonitorTrainer, pl_module: LightningModule, batch: Any,
                              loop: Any) -> None:
        """Outside training the step is the loop's count of batches (across its runs)."""
        self._update(trainer, pl_module, batch)
        self._compute(trainer, loop.batch_progress.total.ready)
