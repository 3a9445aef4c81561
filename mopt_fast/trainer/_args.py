"""The Trainer's arguments: checked, given their defaults and turned into the values the Trainer
and its loops keep, loggers and callbacks, as Lightning 2.6's Trainer.__init__ and its connectors
do. Each function takes the arguments it reads by name; Trainer.__init__ says where each goes."""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import inspect
import os
import re
import warnings
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar, cast

import torch

from mopt_fast.callbacks.callback import rank_zero_info, validate_callbacks_list
from mopt_fast.callbacks.checkpoint import Checkpoint
from mopt_fast.callbacks.model_checkpoint import ModelCheckpoint
from mopt_fast.callbacks.model_summary import ModelSummary
from mopt_fast.callbacks.progress.progress_bar import ProgressBar
from mopt_fast.callbacks.progress.tqdm_progress import TQDMProgressBar
from mopt_fast.callbacks.timer import Timer, parse_duration
from mopt_fast.exceptions import MisconfigurationException, PossibleUserWarning, not_built
from mopt_fast.loggers.csv_logs import CSVLogger
from mopt_fast.loggers.logger import Logger, _DummyExperiment
from mopt_fast.loggers.tensorboard import TensorBoardLogger
from mopt_fast.precision import Precision, make_precision, normalize_precision
from mopt_fast.seed import _env_rank
from mopt_fast.trainer._lightning_surface import kind_of
from mopt_fast.trainer._warn import warn
from mopt_fast.trainer.strategies import Strategy

__all__ = ["UNSUPPORTED", "DebuggingFlags", "callbacks_list", "check_limit", "debugging_flags", "defaults_from_env_vars",
           "env_defaults", "expand_local_path", "info", "log_device_info", "loggers", "parse_devices",
           "precision_plugin", "set_torch_flags", "val_check_seconds"]

F = TypeVar("F", bound=Callable[..., Any])

# Lightning Trainer arguments this Trainer does not implement, with the value that means "off":
# accepted at that value, a NotBuiltError naming the feature at any other (only the hosted model
# registry is left).
UNSUPPORTED = {
    "model_registry": None,
}


def parse_devices(accelerator: str, devices: Any) -> tuple[str, int, int | None]:
    """(accelerator type, processes per node, the one CUDA index asked for or None)."""
    if devices in ([], 0, "0"):  # Lightning's accelerator connector, naming the accelerator as given
        raise MisconfigurationException(
            f"`Trainer(devices={devices!r})` value is not a valid input using {accelerator} accelerator."
        )
    acc = (accelerator or "auto").lower()
    if acc == "auto":
        acc = "cuda" if torch.cuda.is_available() else "cpu"
    if acc == "gpu":
        acc = "cuda"
    if acc not in ("cpu", "cuda"):
        raise MisconfigurationException(f"accelerator={accelerator!r} is not supported; use 'cpu', 'cuda' or 'auto'")
    if acc == "cuda" and not torch.cuda.is_available():
        raise MisconfigurationException("accelerator='cuda' but CUDA is not available")
    if devices in ("auto", None):
        return acc, 1, None
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if devices == -1 and acc == "cuda":
        return acc, torch.cuda.device_count(), None
    if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        return acc, devices, None
    if isinstance(devices, (list, tuple)) and devices and all(isinstance(d, int) for d in devices):
        if acc == "cpu" and len(devices) == 1:
            return acc, 1, None
        return acc, len(devices), int(devices[0]) if len(devices) == 1 else None
    raise MisconfigurationException(f"devices={devices!r} is not understood; use 'auto', an int >= 1 or a list")


def check_limit(name: str, value: Any) -> int | float:
    """A `limit_*_batches` / `overfit_batches` / `val_check_interval` value as Lightning's
    `_determine_batch_limits` takes it: None is 1.0; a fraction in [0, 1] or a whole number (2.0 is 2
    batches), else its MisconfigurationException (a value that is no number fails comparing, with
    the same TypeError); 1 and 1.0 are said in an INFO line."""
    if value is None:
        return 1.0
    if isinstance(value, int) and value == 1:
        if name == "limit_train_batches":
            message = "1 batch per epoch will be used."
        elif name == "val_check_interval":
            message = "validation will run after every batch."
        else:
            message = "1 batch will be used."
        info(f"`Trainer({name}=1)` was configured so {message}")
    elif isinstance(value, float) and value == 1.0:
        if name == "limit_train_batches":
            message = "100% of the batches per epoch will be used."
        elif name == "val_check_interval":
            message = "validation will run at the end of the training epoch."
        else:
            message = "100% of the batches will be used."
        info(f"`Trainer({name}=1.0)` was configured so {message}.")
    if 0 <= value <= 1:
        return value
    if value > 1 and value % 1.0 == 0:
        return int(value)
    raise MisconfigurationException(
        f"You have passed invalid value {value} for {name}, it has to be in [0.0, 1.0] or an int."
    )


def info(message: str) -> None:
    """Lightning's `rank_zero_info` while the Trainer is made: the rank from the launcher's environment."""
    if (_env_rank() or 0) == 0:
        rank_zero_info(None, message)


def log_device_info(accelerator: str) -> None:
    """The lines Lightning's Trainer logs when it is made (`_log_device_info`), and its warning for
    a GPU left unused. mopt_fast runs on no TPU: that line always says so, as Lightning's does on a
    machine without one."""
    mps = getattr(torch.backends, "mps", None)
    mps_available = bool(mps is not None and mps.is_available())
    cuda_available = torch.cuda.is_available()
    kind = " (cuda)" if cuda_available else " (mps)" if mps_available else ""
    info(f"GPU available: {cuda_available or mps_available}{kind}, used: {accelerator == 'cuda'}")
    info("TPU available: False, using: 0 TPU cores")
    if (cuda_available or mps_available) and accelerator != "cuda" and (_env_rank() or 0) == 0:
        warn("GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.", PossibleUserWarning)


def env_defaults(cls: type) -> dict[str, Any]:
    """Lightning's `_parse_env_variables`: for each argument of `cls` (a Trainer class), the value
    of ``PL_<CLASS NAME>_<ARGUMENT>`` (``PL_TRAINER_MAX_EPOCHS=3``) when set and not empty, read as
    a Python literal where it is one ("3" → 3, "True" → True, "[0, 1]" → [0, 1]), else as the string."""
    found: dict[str, Any] = {}
    for name in inspect.signature(cls).parameters:
        value: Any = os.environ.get(f"PL_{cls.__name__.upper()}_{name.upper()}")
        if value is None or value == "":
            continue
        with contextlib.suppress(Exception):
            value = ast.literal_eval(value)
        found[name] = value
    return found


def defaults_from_env_vars(init: F) -> F:
    """Wraps a Trainer's ``__init__`` as Lightning's `_defaults_from_env_vars`: the ``PL_TRAINER_*``
    environment variables give the arguments not passed (an argument passed wins)."""

    @functools.wraps(init)
    def insert_env_defaults(self: Any, *args: Any, **kwargs: Any) -> Any:
        return init(self, *args, **{**env_defaults(type(self)), **kwargs})

    return cast(F, insert_env_defaults)


def expand_local_path(path: str) -> str:
    """`path` with ``~`` expanded and normalized when it is local (no "proto://" or "proto::"
    prefix other than file, as fsspec's `get_protocol` reads it), else as given (Lightning's
    `default_root_dir`)."""
    parts = re.split(r"(\:\:|\://)", path, maxsplit=1)
    if len(parts) > 1 and parts[0] != "file":
        return path
    return os.path.normpath(os.path.expanduser(path))


def check_unsupported(**args: Any) -> None:
    """A NotImplementedError naming each Lightning Trainer argument in `UNSUPPORTED` set to anything
    but its "off" value (after Lightning's own check of the value, where it has one)."""
    reload_every = args["reload_dataloaders_every_n_epochs"]
    if not isinstance(reload_every, int) or reload_every < 0:
        raise MisconfigurationException(
            f"`reload_dataloaders_every_n_epochs` should be an int >= 0, got {reload_every}."
        )
    for name, off in UNSUPPORTED.items():
        if args[name] != off:
            raise not_built(f"`Trainer({name}={args[name]!r})` (Lightning's hosted model registry)",
                            "save checkpoints with ModelCheckpoint and upload them yourself")


def _set(value: Any) -> bool:
    return bool(value)


def _nonzero(value: Any) -> bool:
    return value is not None and value != 0


# Lightning's barebones checks, in its order: (argument, whether the value given is refused, what
# it costs). The first six are opt-outs barebones switches off (to `_BAREBONES_OFF`); the last
# three are opt-ins it only refuses.
_BAREBONES_CHECKS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("enable_checkpointing", _set, "Checkpointing can impact raw speed so it is disabled in barebones mode."),
    ("logger", lambda value: value is not None and value is not False, "Logging can impact raw speed so it is disabled in barebones mode."),
    ("enable_progress_bar", _set, "The progress bar can impact raw speed so it is disabled in barebones mode."),
    ("log_every_n_steps", _nonzero, "Logging can impact raw speed so it is disabled in barebones mode."),
    ("enable_model_summary", _set, "Model summary can impact raw speed so it is disabled in barebones mode."),
    ("num_sanity_val_steps", _nonzero,
     "Sanity checking can impact raw speed so it is disabled in barebones mode."),
    ("fast_dev_run", lambda value: value is not False and value != 0,
     "Development run is not meant for raw speed evaluation so it is disabled in barebones mode."),
    ("detect_anomaly", _set, "Anomaly detection can impact raw speed so it is disabled in barebones mode."),
    ("profiler", lambda value: value is not None, "Profiling can impact raw speed so it is disabled in barebones mode."),
)
_BAREBONES_OFF = {"enable_checkpointing": False, "logger": False, "enable_progress_bar": False,
                  "log_every_n_steps": 0, "enable_model_summary": False, "num_sanity_val_steps": 0}
_BAREBONES_DEACTIVATED = (
    " - Checkpointing: `Trainer(enable_checkpointing=True)`",
    " - Progress bar: `Trainer(enable_progress_bar=True)`",
    " - Model summary: `Trainer(enable_model_summary=True)`",
    " - Logging: `Trainer(logger=True)`, `Trainer(log_every_n_steps>0)`,"
    " `LightningModule.log(...)`, `LightningModule.log_dict(...)`",
    " - Sanity checking: `Trainer(num_sanity_val_steps>0)`",
    " - Development run: `Trainer(fast_dev_run=True)`",
    " - Anomaly detection: `Trainer(detect_anomaly=True)`",
    " - Profiling: `Trainer(profiler=...)`",
)


def barebones_args(args: dict[str, Any]) -> dict[str, Any]:
    """`Trainer(barebones=True)`: Lightning's ValueError for an argument in `args` that the mode
    turns off or refuses, then its INFO line listing what is off; returns the opt-out arguments
    switched off. Everything the mode turns off is an argument, so the loops need no check of
    their own (`LightningModule.log` is the one that looks: it warns and drops the value)."""
    for name, refused, why in _BAREBONES_CHECKS:
        if refused(args[name]):
            raise ValueError(f"`Trainer(barebones=True, {name}={args[name]!r})` was passed. {why}")
    info("You are running in `Trainer(barebones=True)` mode. All features that may impact raw speed have been"
         " disabled to facilitate analyzing the Trainer overhead. Specifically, the following features are"
         f" deactivated:{os.linesep}{os.linesep.join(_BAREBONES_DEACTIVATED)}")
    return dict(_BAREBONES_OFF)


def check_num_nodes(num_nodes: Any) -> int:
    if not isinstance(num_nodes, int) or num_nodes < 1:  # Lightning's ValueError
        raise ValueError(f"`num_nodes` must be a positive integer, but got {num_nodes}.")
    return num_nodes


def precision_plugin(precision: str | int | None, accelerator: str) -> Precision:
    """The precision plugin of ``Trainer(precision=...)`` (None: "32-true"), as Lightning names it."""
    return make_precision(normalize_precision("32-true" if precision is None else precision), accelerator)


def check_accumulate(accumulate: Any) -> int:
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        raise MisconfigurationException(f"`accumulate_grad_batches` should be an int >= 1, got {accumulate!r}")
    return accumulate


def check_max_limits(max_epochs: Any, max_steps: Any) -> tuple[int | None, int]:
    """max_epochs (None: Lightning's _parse_loop_limits sets it, 1000 or -1 with max_steps or a
    Timer, at fit) and max_steps, with the errors of Lightning's loops for values below -1."""
    if isinstance(max_epochs, int) and max_epochs < -1:
        raise MisconfigurationException(
            f"`max_epochs` must be a non-negative integer or -1. You passed in {max_epochs}."
        )
    if max_steps < -1:
        raise MisconfigurationException(
            f"`max_steps` must be a non-negative integer or -1 (infinite steps). You passed in {max_steps}."
        )
    return max_epochs, max_steps


def check_min_limits(min_epochs: Any, min_steps: Any) -> tuple[int, int | None]:
    """min_epochs (min_steps alone means at least one epoch, as Lightning's _parse_loop_limits)
    and min_steps."""
    for name, value in (("min_epochs", min_epochs), ("min_steps", min_steps)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise MisconfigurationException(f"`{name}` must be an int >= 0 or None, got {value!r}")
    return (min_epochs if min_epochs is not None else (1 if min_steps is not None else 0)), min_steps


def check_val_every_n_epoch_arg(check_val_every_n_epoch: Any, val_check_interval: Any) -> int | None:
    if check_val_every_n_epoch is not None and not isinstance(check_val_every_n_epoch, int):
        raise MisconfigurationException(
            f"`check_val_every_n_epoch` should be an integer, found {check_val_every_n_epoch!r}."
        )
    if check_val_every_n_epoch is None and isinstance(val_check_interval, float):
        raise MisconfigurationException(
            "`val_check_interval` should be an integer or a time-based duration (str 'DD:HH:MM:SS', "
            "datetime.timedelta, or dict kwargs for timedelta) when `check_val_every_n_epoch=None`."
        )
    return check_val_every_n_epoch


def check_log_every_n_steps(log_every_n_steps: int | None) -> int:
    every = 50 if log_every_n_steps is None else log_every_n_steps
    if every < 0:
        raise MisconfigurationException("`log_every_n_steps` must be >= 0")
    return every


def val_check_seconds(value: str | dict[str, Any] | timedelta) -> float:
    """A time-based `val_check_interval` in seconds, with Lightning's errors
    (`_parse_time_interval_seconds`): a timedelta, timedelta's keyword arguments, or "DD:HH:MM:SS"."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return timedelta(**value).total_seconds()
    parts = value.split(":")
    if len(parts) != 4:
        raise MisconfigurationException(f"Invalid time format for `val_check_interval`: {value!r}. Expected 'DD:HH:MM:SS'.")
    try:
        days, hours, minutes, seconds = (int(p) for p in parts)
    except ValueError:
        raise MisconfigurationException(
            f"Non-integer component in `val_check_interval` string: {value!r}. Use 'DD:HH:MM:SS'."
        ) from None
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()


@dataclasses.dataclass
class DebuggingFlags:
    """What limit_*_batches, fast_dev_run, overfit_batches, val_check_interval and
    num_sanity_val_steps come to (Lightning's `_init_debugging_flags`); `max_steps`,
    `max_epochs` and `check_val_every_n_epoch` are set only under fast_dev_run."""

    fast_dev_run: bool | int
    overfit_batches: int | float
    limit_train_batches: int | float
    limit_val_batches: int | float
    limit_test_batches: int | float
    limit_predict_batches: int | float
    num_sanity_val_steps: int | float
    val_check_interval: int | float
    val_check_time_interval: float | None  # seconds, for a time-based val_check_interval
    max_steps: int | None = None
    max_epochs: int | None = None
    check_val_every_n_epoch: int | None = None


def debugging_flags(fast_dev_run: int | bool, overfit_batches: Any, limit_train_batches: Any,
                    limit_val_batches: Any, limit_test_batches: Any, limit_predict_batches: Any,
                    val_check_interval: Any, num_sanity_val_steps: int | None) -> DebuggingFlags:
    if isinstance(fast_dev_run, int) and fast_dev_run < 0:
        raise MisconfigurationException(f"fast_dev_run={fast_dev_run!r} is not a valid configuration. It should be >= 0.")
    overfit = check_limit("overfit_batches", overfit_batches)
    if fast_dev_run:
        n = int(fast_dev_run)
        flags = DebuggingFlags(
            fast_dev_run=True if fast_dev_run == 1 else fast_dev_run, overfit_batches=overfit,
            limit_train_batches=n, limit_val_batches=n, limit_test_batches=n, limit_predict_batches=n,
            num_sanity_val_steps=0, val_check_interval=1.0, val_check_time_interval=None, max_steps=n, max_epochs=1,
            check_val_every_n_epoch=1,
        )
        info(f"Running in `fast_dev_run` mode: will run the requested loop using {n} batch(es). "
             "Logging and checkpointing is suppressed.")
    else:
        sanity = 2 if num_sanity_val_steps is None else num_sanity_val_steps
        time_interval = None
        if isinstance(val_check_interval, (str, dict, timedelta)):  # validation every so much time
            time_interval = val_check_seconds(val_check_interval)
            interval: int | float = 1.0
        else:
            interval = 1.0
        enabled = overfit_batches > 0  # the value given, as Lightning
        flags = DebuggingFlags(
            fast_dev_run=fast_dev_run, overfit_batches=overfit,
            limit_train_batches=1.0 if enabled else check_limit("limit_train_batches", limit_train_batches),
            limit_val_batches=1.0 if enabled else check_limit("limit_val_batches", limit_val_batches),
            limit_test_batches=check_limit("limit_test_batches", limit_test_batches),
            limit_predict_batches=check_limit("limit_predict_batches", limit_predict_batches),
            num_sanity_val_steps=float("inf") if sanity == -1 else sanity, val_check_interval=interval,
            val_check_time_interval=time_interval,
        )
        if time_interval is None:
            flags.val_check_interval = check_limit("val_check_interval", val_check_interval)
    if overfit > 0:
        flags.limit_train_batches = flags.limit_val_batches = overfit
    return flags


def loggers(logger: bool | Logger | Iterable[Logger] | None, default_root_dir: str, fast_dev_run: bool | int) -> list[Logger]:
    """The Trainer's loggers: a default one for None / True; under fast_dev_run a logger that writes
    nothing in their place (Lightning's DummyLogger)."""
    found = _loggers(logger, default_root_dir)
    if fast_dev_run:
        return [_DummyLogger()] if found else []
    return found


def set_torch_flags(deterministic: bool | str | None, benchmark: bool | None) -> None:
    """cudnn.benchmark and torch.use_deterministic_algorithms, as Lightning's `_set_torch_flags`."""
    if deterministic not in (None, True, False, "warn"):
        raise MisconfigurationException(f"`deterministic` must be a bool, 'warn' or None, got {deterministic!r}")
    if deterministic:
        if benchmark is None:
            benchmark = False
        elif benchmark:
            warnings.warn(
                "You passed `deterministic=True` and `benchmark=True`. Note that PyTorch ignores "
                "torch.backends.cudnn.deterministic=True when torch.backends.cudnn.benchmark=True.",
                stacklevel=3,
            )
    if benchmark is not None:
        torch.backends.cudnn.benchmark = benchmark
    if deterministic == "warn":
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif isinstance(deterministic, bool):
        torch.use_deterministic_algorithms(deterministic)
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"


class _DummyLogger(Logger):
    """What fast_dev_run puts in place of the loggers (Lightning's DummyLogger): writes nothing; its
    `experiment` and any method called on it do nothing, so ``self.logger.experiment.add_image(...)``
    in a module runs unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self._experiment = _DummyExperiment()

    @property
    def experiment(self) -> _DummyExperiment:
        return self._experiment

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str | None:  # type: ignore[override]
        return None  # Lightning's: nothing is written (``trainer.log_dir`` is None under fast_dev_run)

    @property
    def log_dir(self) -> str | None:  # type: ignore[override]
        return None

    def __getitem__(self, idx: int) -> _DummyLogger:  # ``self.logger[0].experiment``, as Lightning's
        return self

    def __getattr__(self, name: str) -> Callable[..., None]:
        """Any other method: does nothing (Lightning's DummyLogger)."""
        if name.startswith("__"):  # copy / pickle probe these; a no-op function would mislead them
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> None:
            return None

        return method


def _loggers(logger: Any, default_root_dir: str) -> list[Logger]:
    if logger is None or logger is True:
        return [_default_logger(default_root_dir)]
    if logger is False:
        return []
    if isinstance(logger, Iterable):
        return list(logger)
    return [logger]


def _default_logger(root: str) -> Logger:
    """Lightning's default: TensorBoard when tensorboard is installed, else CSV."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            warnings.warn(
                "Starting from v1.9.0, `tensorboardX` has been removed as a dependency of the `lightning.pytorch` "
                "package, due to potential conflicts with other packages in the ML ecosystem. For this reason, "
                "`logger=True` will use `CSVLogger` as the default logger, unless the `tensorboard` or `tensorboardX` "
                "packages are found. Please `pip install lightning[extra]` or one of them to enable TensorBoard "
                "support by default",
                stacklevel=5,
            )
            return CSVLogger(root)
    return TensorBoardLogger(root)


def callbacks_list(callbacks: Any, strategy: Strategy, enable_progress_bar: bool | None,
                   enable_model_summary: bool | None, enable_checkpointing: bool | None, max_time: Any) -> list[Any]:
    """The Trainer's callbacks: the ones given, plus Lightning's defaults (progress bar, model
    summary, ModelCheckpoint, a Timer for max_time), checked, checkpoint callbacks last."""
    cbs = [] if callbacks is None else ([callbacks] if not isinstance(callbacks, (list, tuple)) else list(callbacks))
    # Lightning's own callbacks of these kinds count as well (when the script brought them).
    timers, bar_kinds = kind_of(Timer, "Timer"), kind_of(ProgressBar, "ProgressBar")
    summaries, checkpoints = kind_of(ModelSummary, "ModelSummary"), kind_of(Checkpoint, "Checkpoint")
    if max_time is not None:
        if any(isinstance(c, timers) for c in cbs):
            info("Ignoring `Trainer(max_time=...)`, callbacks list already contains a Timer.")
        else:
            cbs.append(Timer(duration=parse_duration(max_time, "Timer(duration"), interval="step"))  # Lightning's
    bars = [c for c in cbs if isinstance(c, bar_kinds)]  # Lightning's checks
    if len(bars) > 1:
        raise MisconfigurationException(
            "You added multiple progress bar callbacks to the Trainer, but currently only one progress bar is "
            "supported.")
    if bars and enable_progress_bar is False:
        raise MisconfigurationException(
            f"Trainer was configured with `enable_progress_bar=False` but found `{type(bars[0]).__name__}` in "
            "callbacks list.")
    if enable_progress_bar is not False and not bars:
        cbs.append(TQDMProgressBar())
    if enable_model_summary is not False and not any(isinstance(c, summaries) for c in cbs):
        cbs.insert(0, ModelSummary())
    has_checkpoint = any(isinstance(c, checkpoints) for c in cbs)
    if enable_checkpointing is False and has_checkpoint:
        raise MisconfigurationException(
            "Trainer was configured with `enable_checkpointing=False` but found `ModelCheckpoint` in callbacks list."
        )
    if enable_checkpointing is not False and not has_checkpoint:
        cbs.append(ModelCheckpoint())
    # Checkpoint callbacks go last, as Lightning orders them: they see what the others did.
    cbs = [c for c in cbs if not isinstance(c, checkpoints)] + [c for c in cbs if isinstance(c, checkpoints)]
    validate_callbacks_list(cbs)
    return cbs
