"""`PyTorchProfiler`: ``torch.profiler`` over the run. Every action is a ``record_function``
range (``[pl][profile]<action>``), every submodule's forward a ``[pl][module]...`` range; the
profiler steps at each training / validation / test / predict step, on a schedule (by default
wait 1, warm up 1, record 3 steps) kept per kind of step. Each recorded window is written as a
Chrome trace to ``dirpath`` (``<stage>-<filename>-<action>.<...>.pt.trace.json``); the report is
the operator table (``key_averages().table``)."""
from __future__ import annotations

import inspect
import logging
import os
import warnings
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.autograd.profiler import EventList, record_function
from torch.profiler import ProfilerAction, ProfilerActivity, tensorboard_trace_handler

from mopt_fast.exceptions import MisconfigurationException, not_built
from mopt_fast.profilers.profiler import Profiler

__all__ = ["PyTorchProfiler", "RegisterRecordFunction", "ScheduleWrapper"]

log = logging.getLogger(__name__)

_STEP_KINDS = ("training_step", "validation_step", "test_step", "predict_step")


class RegisterRecordFunction:
    """While entered, each named submodule's forward is a ``[pl][module]<class>: <name>`` range."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._records: dict[str, record_function] = {}
        self._handles: list[Any] = []

    def _start(self, _: nn.Module, inputs: Any, record_name: str) -> Any:
        record = record_function("[pl][module]" + record_name)
        record.__enter__()
        self._records[record_name] = record
        return inputs

    def _stop(self, _: nn.Module, __: Any, output: Any, record_name: str) -> Any:
        self._records[record_name].__exit__(None, None, None)
        return output

    def __enter__(self) -> None:
        for name, module in self._model.named_modules():
            if name:
                record_name = f"{type(module).__module__}.{type(module).__name__}: {name}"
                self._handles += [module.register_forward_pre_hook(partial(self._start, record_name=record_name)),
                                  module.register_forward_hook(partial(self._stop, record_name=record_name))]

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class ScheduleWrapper:
    """The user's (or the default) schedule, counted per kind of step (training, validation, test,
    predict), each kind recording its own window once."""

    def __init__(self, schedule: Callable[[int], ProfilerAction]) -> None:
        self._schedule = schedule
        self.reset()

    def reset(self) -> None:
        self._steps = dict.fromkeys(_STEP_KINDS, 0)
        self._ended = dict.fromkeys(_STEP_KINDS, False)
        self._current_action: str | None = None
        self._prev_schedule_action: ProfilerAction | None = None
        self._start_action_name: str | None = None

    def setup(self, start_action_name: str) -> None:
        self._start_action_name = start_action_name

    def pre_step(self, current_action: str) -> None:
        self._current_action = current_action

    @property
    def kind(self) -> str | None:
        action = self._current_action
        return next((k for k in _STEP_KINDS if action is not None and action.endswith(k)), None)

    @property
    def num_step(self) -> int:
        kind = self.kind
        return self._steps[kind] if kind is not None else 0

    def _count(self, kind: str) -> None:
        start = self._start_action_name
        # In a fit, the sanity check's validation steps do not count (no training step yet).
        if kind == "validation_step" and start is not None and start.endswith("on_fit_start"):
            if self._steps["training_step"] > 0:
                self._steps[kind] += 1
        else:
            self._steps[kind] += 1

    def __call__(self, num_step: int) -> ProfilerAction:
        kind = self.kind
        if kind is None or self._ended[kind]:
            return ProfilerAction.NONE
        self._count(kind)
        action = self._schedule(max(self._steps[kind], 0))
        if self._prev_schedule_action == ProfilerAction.RECORD and action == ProfilerAction.WARMUP:
            action = ProfilerAction.RECORD  # a window already recording goes on recording
        if action == ProfilerAction.RECORD_AND_SAVE:
            self._ended[kind] = True
        self._prev_schedule_action = action
        return action


@lru_cache(1)
def _default_schedule() -> Callable[[int], ProfilerAction]:
    return torch.profiler.schedule(wait=1, warmup=1, active=3)


class PyTorchProfiler(Profiler):
    """``torch.profiler`` around the run (Lightning's arguments and defaults).

    `group_by_input_shapes` (with ``record_shapes=True``), `emit_nvtx` (NVTX ranges for nvprof /
    Nsight instead of a trace), `export_to_chrome`, `row_limit` / `sort_by_key` / `table_kwargs`
    (the report table), `record_module_names` (a range per submodule forward); the other keyword
    arguments go to ``torch.profiler.profile`` (``schedule``, ``activities``, ``record_shapes``,
    ``profile_memory``, ``with_stack``, ``on_trace_ready``, ...)."""

    STEP_FUNCTIONS = set(_STEP_KINDS)
    AVAILABLE_SORT_KEYS = {
        "cpu_time", "cuda_time", "cpu_time_total", "cuda_time_total", "cpu_memory_usage", "cuda_memory_usage",
        "self_cpu_memory_usage", "self_cuda_memory_usage", "count",
    }

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None,
                 group_by_input_shapes: bool = False, emit_nvtx: bool = False, export_to_chrome: bool = True,
                 row_limit: int = 20, sort_by_key: str | None = None, record_module_names: bool = True,
                 table_kwargs: dict[str, Any] | None = None, **profiler_kwargs: Any) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        if not torch.profiler.kineto_available():
            raise not_built("PyTorchProfiler without Kineto", "use a PyTorch build with Kineto")
        self._group_by_input_shapes = group_by_input_shapes and profiler_kwargs.get("record_shapes", False)
        self._emit_nvtx = emit_nvtx
        self._export_to_chrome = export_to_chrome
        self._row_limit = row_limit
        self._sort_by_key = sort_by_key or _default_sort_by_key(profiler_kwargs)
        self._record_module_names = record_module_names
        self._profiler_kwargs = profiler_kwargs
        self._table_kwargs = table_kwargs if table_kwargs is not None else {}
        self.profiler: Any = None
        self.function_events: EventList | None = None
        self._lightning_module: Any = None  # set by the Trainer at the start of a stage
        self._register: RegisterRecordFunction | None = None
        self._parent_profiler: Any = None
        self._recording_map: dict[str, record_function] = {}
        self._schedule: ScheduleWrapper | None = None
        self._init_kineto(profiler_kwargs)
        if self._sort_by_key not in self.AVAILABLE_SORT_KEYS:
            raise MisconfigurationException(
                f"Found sort_by_key: {self._sort_by_key}. Should be within {self.AVAILABLE_SORT_KEYS}. ")
        valid_table_keys = set(inspect.signature(EventList.table).parameters) - {"self", "sort_by", "row_limit"}
        for key in self._table_kwargs:
            if key in {"sort_by", "row_limit"}:
                raise KeyError(f"Found invalid table_kwargs key: {key}. This is already a positional argument of the "
                               "Profiler.")
            if key not in valid_table_keys:
                raise KeyError(f"Found invalid table_kwargs key: {key}. Should be within {valid_table_keys}.")

    def _init_kineto(self, kwargs: dict[str, Any]) -> None:
        self._has_on_trace_ready = "on_trace_ready" in kwargs
        schedule = kwargs.get("schedule")
        if schedule is not None:
            if not callable(schedule):
                raise MisconfigurationException(f"Schedule should be a callable. Found: {schedule}")
            action = schedule(0)
            if not isinstance(action, ProfilerAction):
                raise MisconfigurationException(
                    f"Schedule should return a `torch.profiler.ProfilerAction`. Found: {action}")
        schedule = schedule if "schedule" in kwargs else _default_schedule()
        self._schedule = ScheduleWrapper(schedule) if schedule is not None else None
        kwargs["schedule"] = self._schedule
        kwargs["activities"] = kwargs.get("activities") or self._default_activities()
        self._export_to_flame_graph = kwargs.get("export_to_flame_graph", False)
        self._metric = kwargs.get("metric", "self_cpu_time_total")
        kwargs["with_stack"] = kwargs.get("with_stack", False) or self._export_to_flame_graph

    @staticmethod
    def _default_activities() -> list[ProfilerActivity]:
        return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])

    @property
    def _total_steps(self) -> int | float:
        """The steps of the current kind in this stage (the sanity check's validation included)."""
        assert self._schedule is not None and self._lightning_module is not None
        trainer = self._lightning_module.trainer
        kind = self._schedule.kind
        if kind == "training_step":
            return trainer.num_training_batches
        if kind == "validation_step":
            return sum(trainer.num_val_batches) + sum(trainer.num_sanity_val_batches)
        if kind == "test_step":
            return sum(trainer.num_test_batches)
        if kind == "predict_step":
            return sum(trainer.num_predict_batches)
        raise NotImplementedError("Unsupported schedule")

    def _should_override_schedule(self) -> bool:
        return (self._lightning_module is not None and self._schedule is not None and self._total_steps < 5
                and self._schedule._schedule == _default_schedule())

    def start(self, action_name: str) -> None:
        if self.profiler is None:
            if torch.autograd._profiler_enabled():
                torch.autograd._disable_profiler()
            if self._schedule is not None:
                self._schedule.setup(action_name)
            profiler = self._create_profilers()
            entered = profiler.__enter__()
            if entered is not None:
                self.profiler = entered
            if self._parent_profiler is not None:
                self._parent_profiler.__enter__()
        if self._lightning_module is not None and self._register is None and self._record_module_names:
            self._register = RegisterRecordFunction(self._lightning_module)
            self._register.__enter__()
        if self.profiler is not None and action_name not in self._recording_map:
            recording = record_function("[pl][profile]" + action_name)
            recording.__enter__()
            self._recording_map[action_name] = recording

    def stop(self, action_name: str) -> None:
        if action_name in self._recording_map:
            self._recording_map.pop(action_name).__exit__(None, None, None)
        if self._emit_nvtx or self.profiler is None or not action_name.endswith(_STEP_KINDS):
            return
        if self._schedule is not None:
            self._schedule.pre_step(action_name)
        if self._should_override_schedule():
            warnings.warn("The PyTorch Profiler default schedule will be overridden as there is not enough "
                          "steps to properly record traces.", stacklevel=2)
            self._schedule = None
            self.profiler.schedule = torch.profiler.profiler._default_schedule_fn
        if not self._has_on_trace_ready:
            self.profiler.on_trace_ready = partial(self._on_trace_ready, action_name)
        if self._schedule is not None:
            self.profiler.step_num = self._schedule.num_step
        self.profiler.step()
        self.profiler.add_metadata("Framework", "pytorch-lightning")

    def _on_trace_ready(self, action_name: str, profiler: Any) -> None:
        if self.dirpath is None:
            warnings.warn("The PyTorchProfiler failed to export trace as `dirpath` is None", stacklevel=2)
            return
        if self._export_to_chrome:
            handler = tensorboard_trace_handler(str(self.dirpath),
                                                self._prepare_filename(action_name=action_name, extension=""))
            handler(profiler)
        if self._export_to_flame_graph:
            path = os.path.join(self.dirpath, self._prepare_filename(action_name=action_name, extension=".stack"))
            profiler.export_stacks(path, metric=self._metric)

    def summary(self) -> str:
        if not self._profiler_kwargs.get("enabled", True) or self._emit_nvtx:
            return ""
        self._delete_profilers()
        if not self.function_events:
            return ""
        data = self.function_events.key_averages(group_by_input_shapes=self._group_by_input_shapes)
        table = data.table(sort_by=self._sort_by_key, row_limit=self._row_limit, **self._table_kwargs)
        return self._stats_to_str({"records": table})

    def _create_profilers(self) -> Any:
        if self.profiler is not None:
            return self.profiler
        if self._emit_nvtx:
            if self._parent_profiler is None:
                self._parent_profiler = torch.cuda.profiler.profile()
            self.profiler = self._create_profiler(torch.autograd.profiler.emit_nvtx)
        else:
            self._parent_profiler = None
            self.profiler = self._create_profiler(torch.profiler.profile)
        return self.profiler

    def _create_profiler(self, profiler: type) -> Any:
        accepted = inspect.signature(profiler).parameters
        return profiler(**{k: v for k, v in self._profiler_kwargs.items() if k in accepted})

    def _delete_profilers(self) -> None:
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            if not self._emit_nvtx:
                self.function_events = self.profiler.events()
            self.profiler = None
        if self._schedule is not None:
            self._schedule.reset()
        if self._parent_profiler is not None:
            self._parent_profiler.__exit__(None, None, None)
            self._parent_profiler = None
        if self._register is not None:
            self._register.__exit__(None, None, None)
            self._register = None

    def teardown(self, stage: str | None) -> None:
        self._delete_profilers()
        for action in list(self._recording_map):
            self.stop(action)
        self._recording_map = {}
        super().teardown(stage=stage)


def _default_sort_by_key(profiler_kwargs: dict[str, Any]) -> str:
    activities = profiler_kwargs.get("activities") or []
    cuda = (profiler_kwargs.get("use_cuda", False) or ProfilerActivity.CUDA in activities
            or (not activities and torch.cuda.is_available()))
    return f"{'cuda' if cuda else 'cpu'}_time_total"
