"""The Trainer's arguments: checked, given their defaults and turned into the Trainer's
attributes, loggers and callbacks, as Lightning 2.6's Trainer.__init__ and its connectors do."""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.exceptions import MisconfigurationException
from mopt_fast.optimizer import validate_clip_args
from mopt_fast.precision import make_precision, normalize_precision
from mopt_fast.trainer.callbacks import ModelSummary, ProgressBar, TQDMProgressBar, validate_callbacks_list
from mopt_fast.trainer.checkpoint import ModelCheckpoint
from mopt_fast.trainer.loggers import CSVLogger, Logger, TensorBoardLogger
from mopt_fast.trainer.strategies import FSDPStrategy, make_strategy
from mopt_fast.trainer.timer import Timer, parse_duration

if TYPE_CHECKING:
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["UNSUPPORTED", "check_limit", "configure", "parse_devices"]

# Lightning Trainer arguments this Trainer does not implement, with the value that means "off":
# accepted at that value, a NotImplementedError naming the feature at any other.
UNSUPPORTED = {
    "profiler": None, "barebones": False, "plugins": None, "reload_dataloaders_every_n_epochs": 0,
    "model_registry": None,
}


def parse_devices(accelerator: str, devices: Any) -> tuple[str, int, int | None]:
    """(accelerator type, processes per node, the one CUDA index asked for or None)."""
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
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MisconfigurationException(f"`{name}` must be an int or a float, got {value!r}")
    if isinstance(value, float) and value > 1.0 and value % 1.0 == 0:  # 2.0 means 2 batches, as Lightning
        return int(value)
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise MisconfigurationException(f"`{name}` as a float must be in [0.0, 1.0], got {value}")
    if value < 0:
        raise MisconfigurationException(f"`{name}` must be >= 0, got {value}")
    return value


def configure(trainer: Trainer, args: dict[str, Any]) -> None:
    """Sets `trainer`'s configuration from the Trainer(...) arguments `args`."""
    for name, off in UNSUPPORTED.items():
        if args[name] != off:
            raise NotImplementedError(f"mopt_fast.Trainer does not support `{name}={args[name]!r}` yet")
    a = args
    _set_torch_flags(a["deterministic"], a["benchmark"])
    trainer._accelerator, n_devices, trainer._device_index = parse_devices(a["accelerator"], a["devices"])
    num_nodes = a["num_nodes"]
    if not isinstance(num_nodes, int) or num_nodes < 1:
        raise MisconfigurationException(f"`num_nodes` must be an int >= 1, got {num_nodes!r}")
    trainer.num_nodes = num_nodes
    trainer.num_devices = n_devices
    trainer.strategy = make_strategy(a["strategy"], n_devices, num_nodes)
    # The device is known once the process knows its rank (at fit); until then, this one.
    trainer.root_device = torch.device("cpu") if trainer._accelerator == "cpu" else torch.device(
        "cuda", trainer._device_index or 0)
    precision = a["precision"]
    trainer.precision = normalize_precision("32-true" if precision is None else precision)
    trainer._precision = make_precision(trainer.precision, trainer._accelerator)
    trainer.precision = getattr(trainer._precision, "name", trainer.precision)

    accumulate = a["accumulate_grad_batches"]
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        raise MisconfigurationException(f"`accumulate_grad_batches` should be an int >= 1, got {accumulate!r}")
    max_steps, max_epochs = a["max_steps"], a["max_epochs"]
    if max_steps is None or not isinstance(max_steps, int) or max_steps < -1:
        raise MisconfigurationException(f"`max_steps` must be an int >= -1, got {max_steps!r}")
    if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs < -1):
        raise MisconfigurationException(f"`max_epochs` must be an int >= -1 or None, got {max_epochs!r}")
    trainer.accumulate_grad_batches = accumulate
    gradient_clip_val = a["gradient_clip_val"]
    _, trainer.gradient_clip_algorithm = validate_clip_args(gradient_clip_val, a["gradient_clip_algorithm"])
    trainer.gradient_clip_val = gradient_clip_val  # as given (Lightning compares it with clip_gradients')
    # None: Lightning's _parse_loop_limits sets it (1000, or -1 with max_steps or a Timer) at fit.
    trainer.max_epochs = max_epochs
    trainer.max_steps = max_steps
    for name in ("min_epochs", "min_steps"):
        if a[name] is not None and (not isinstance(a[name], int) or isinstance(a[name], bool) or a[name] < 0):
            raise MisconfigurationException(f"`{name}` must be an int >= 0 or None, got {a[name]!r}")
    trainer.min_steps = a["min_steps"]
    # Lightning's _parse_loop_limits: min_steps alone means at least one epoch
    trainer.min_epochs = a["min_epochs"] if a["min_epochs"] is not None else (1 if a["min_steps"] is not None else 0)
    trainer.inference_mode = bool(a["inference_mode"])
    trainer.detect_anomaly = bool(a["detect_anomaly"])
    trainer.sync_batchnorm = bool(a["sync_batchnorm"])
    trainer.use_distributed_sampler = bool(a["use_distributed_sampler"])
    trainer.enable_autolog_hparams = bool(a["enable_autolog_hparams"])
    trainer.reload_dataloaders_every_n_epochs = a["reload_dataloaders_every_n_epochs"]
    _debugging_flags(trainer, a)
    check_val_every_n_epoch = a["check_val_every_n_epoch"]
    if check_val_every_n_epoch is not None and (
        not isinstance(check_val_every_n_epoch, int) or isinstance(check_val_every_n_epoch, bool)
    ):
        raise MisconfigurationException(
            f"`check_val_every_n_epoch` should be an integer, found {check_val_every_n_epoch!r}."
        )
    if check_val_every_n_epoch is None and isinstance(a["val_check_interval"], float):
        raise MisconfigurationException(
            "`val_check_interval` should be an integer or a time-based duration (str 'DD:HH:MM:SS', "
            "datetime.timedelta, or dict kwargs for timedelta) when `check_val_every_n_epoch=None`."
        )
    if not trainer.fast_dev_run:
        trainer.check_val_every_n_epoch = check_val_every_n_epoch
    log_every_n_steps = a["log_every_n_steps"]
    trainer.log_every_n_steps = 50 if log_every_n_steps is None else log_every_n_steps
    if trainer.log_every_n_steps < 0:
        raise MisconfigurationException("`log_every_n_steps` must be >= 0")
    root = a["default_root_dir"]
    trainer.default_root_dir = os.fspath(root) if root is not None else os.getcwd()
    trainer.loggers = _loggers(trainer, a["logger"])
    if trainer.fast_dev_run:  # logging is suppressed: a logger that writes nothing, as Lightning's DummyLogger
        trainer.loggers = [_DummyLogger(trainer.default_root_dir)] if trainer.loggers else []
    trainer.callbacks = _callbacks(trainer, a["callbacks"], a["enable_progress_bar"], a["enable_model_summary"],
                                   a["enable_checkpointing"], a["max_time"])


def _debugging_flags(trainer: Trainer, a: dict[str, Any]) -> None:
    """limit_*_batches, fast_dev_run, overfit_batches, val_check_interval and num_sanity_val_steps, as
    Lightning's `_init_debugging_flags`."""
    fast_dev_run = a["fast_dev_run"]
    if isinstance(fast_dev_run, int) and fast_dev_run < 0:
        raise MisconfigurationException(f"fast_dev_run={fast_dev_run!r} is not a valid configuration. It should be >= 0.")
    trainer.fast_dev_run = True if fast_dev_run == 1 else fast_dev_run
    overfit = check_limit("overfit_batches", a["overfit_batches"])
    trainer.overfit_batches = overfit
    val_check_interval = a["val_check_interval"]
    trainer._val_check_time_interval = None
    if fast_dev_run:
        n = int(fast_dev_run)
        if not overfit > 0:
            trainer.limit_train_batches = trainer.limit_val_batches = n
        trainer.limit_test_batches = trainer.limit_predict_batches = n
        trainer.max_steps = n
        trainer.num_sanity_val_steps = 0
        trainer.max_epochs = 1
        trainer.val_check_interval = 1.0
        trainer.check_val_every_n_epoch = 1
    else:
        if not overfit > 0:
            trainer.limit_train_batches = check_limit("limit_train_batches", a["limit_train_batches"])
            trainer.limit_val_batches = check_limit("limit_val_batches", a["limit_val_batches"])
        trainer.limit_test_batches = check_limit("limit_test_batches", a["limit_test_batches"])
        trainer.limit_predict_batches = check_limit("limit_predict_batches", a["limit_predict_batches"])
        num_sanity_val_steps = 2 if a["num_sanity_val_steps"] is None else a["num_sanity_val_steps"]
        if num_sanity_val_steps != -1 and num_sanity_val_steps < 0:
            raise MisconfigurationException("`num_sanity_val_steps` must be >= -1")
        trainer.num_sanity_val_steps = float("inf") if num_sanity_val_steps == -1 else num_sanity_val_steps
        if isinstance(val_check_interval, (str, dict, timedelta)):  # validation every so much time
            trainer._val_check_time_interval = parse_duration(val_check_interval, "val_check_interval").total_seconds()
            trainer.val_check_interval = 1.0
        else:
            trainer.val_check_interval = 1.0 if val_check_interval is None else val_check_interval
            if isinstance(trainer.val_check_interval, float) and not 0.0 < trainer.val_check_interval <= 1.0:
                raise MisconfigurationException(
                    f"`val_check_interval` should be a float in (0.0, 1.0] or an int, got {trainer.val_check_interval}"
                )
    if overfit > 0:
        trainer.limit_train_batches = trainer.limit_val_batches = overfit


def _set_torch_flags(deterministic: bool | str | None, benchmark: bool | None) -> None:
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
                stacklevel=4,
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
    """What fast_dev_run puts in place of the loggers: writes nothing."""

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        pass

    @property
    def log_dir(self) -> str:
        return self.save_dir


def _loggers(trainer: Trainer, logger: Any) -> list[Logger]:
    if logger is None or logger is True:
        return [_default_logger(trainer.default_root_dir)]
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


def _callbacks(trainer: Trainer, callbacks: Any, enable_progress_bar: bool | None,
               enable_model_summary: bool | None, enable_checkpointing: bool | None, max_time: Any) -> list[Any]:
    cbs = [] if callbacks is None else ([callbacks] if not isinstance(callbacks, (list, tuple)) else list(callbacks))
    if max_time is not None and not any(isinstance(c, Timer) for c in cbs):
        cbs.append(Timer(duration=parse_duration(max_time, "Trainer(max_time"), interval="step"))
    bars = [c for c in cbs if isinstance(c, ProgressBar)]  # Lightning's checks (callbacks.py)
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
    if enable_model_summary is not False and not any(isinstance(c, ModelSummary) for c in cbs):
        cbs.insert(0, ModelSummary())
    has_checkpoint = any(isinstance(c, ModelCheckpoint) for c in cbs)
    if isinstance(trainer.strategy, FSDPStrategy):
        if has_checkpoint or enable_checkpointing:
            raise NotImplementedError("checkpoints under strategy='fsdp' are not built yet (sharded state)")
        enable_checkpointing = False
    if enable_checkpointing is False and has_checkpoint:
        raise MisconfigurationException(
            "Trainer was configured with `enable_checkpointing=False` but found `ModelCheckpoint` in callbacks list."
        )
    if enable_checkpointing is not False and not has_checkpoint:
        cbs.append(ModelCheckpoint())
    # Checkpoint callbacks go last, as Lightning orders them: they see what the others did.
    cbs = [c for c in cbs if not isinstance(c, ModelCheckpoint)] + [c for c in cbs if isinstance(c, ModelCheckpoint)]
    validate_callbacks_list(cbs)
    return cbs
