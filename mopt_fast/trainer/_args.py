"""The Trainer's arguments: checked, given their defaults and turned into the Trainer's
attributes, loggers and callbacks, as Lightning 2.6's Trainer.__init__ and its connectors do."""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.exceptions import MisconfigurationException
from mopt_fast.optimizer import validate_clip_args
from mopt_fast.precision import make_precision, normalize_precision
from mopt_fast.trainer.callbacks import ModelSummary, TQDMProgressBar
from mopt_fast.trainer.checkpoint import ModelCheckpoint
from mopt_fast.trainer.loggers import CSVLogger, Logger
from mopt_fast.trainer.strategies import FSDPStrategy, make_strategy

if TYPE_CHECKING:
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["UNSUPPORTED", "check_limit", "configure", "parse_devices"]

# Lightning Trainer arguments this Trainer does not implement, with the value that means "off".
UNSUPPORTED = {
    "fast_dev_run": False, "min_epochs": None, "min_steps": None, "max_time": None, "overfit_batches": 0.0,
    "profiler": None, "detect_anomaly": False, "barebones": False, "plugins": None,
    "sync_batchnorm": False, "reload_dataloaders_every_n_epochs": 0, "use_distributed_sampler": True,
    "deterministic": None, "benchmark": None, "model_registry": None,
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
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise MisconfigurationException(f"`{name}` as a float must be in [0.0, 1.0], got {value}")
    if value < 0:
        raise MisconfigurationException(f"`{name}` must be >= 0, got {value}")
    return value


def configure(trainer: Trainer, args: dict[str, Any]) -> None:
    """Sets `trainer`'s configuration from the Trainer(...) arguments `args`."""
    unsupported = args.pop("unsupported")
    for name, value in unsupported.items():
        if name not in UNSUPPORTED:
            raise TypeError(f"Trainer() got an unexpected keyword argument {name!r}")
        if value != UNSUPPORTED[name]:
            raise NotImplementedError(f"mopt_fast.Trainer does not support `{name}={value!r}` yet")
    a = args
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
    if max_epochs is None:
        max_epochs = 1000 if max_steps == -1 else -1
    trainer.max_epochs = max_epochs
    trainer.max_steps = max_steps
    trainer.limit_train_batches = check_limit("limit_train_batches", a["limit_train_batches"])
    trainer.limit_val_batches = check_limit("limit_val_batches", a["limit_val_batches"])
    trainer.limit_test_batches = check_limit("limit_test_batches", a["limit_test_batches"])
    trainer.limit_predict_batches = check_limit("limit_predict_batches", a["limit_predict_batches"])
    trainer.inference_mode = bool(a["inference_mode"])
    trainer.fast_dev_run = False
    val_check_interval = a["val_check_interval"]
    trainer.val_check_interval = 1.0 if val_check_interval is None else val_check_interval
    if isinstance(trainer.val_check_interval, float) and not 0.0 < trainer.val_check_interval <= 1.0:
        raise MisconfigurationException(
            f"`val_check_interval` should be a float in (0.0, 1.0] or an int, got {trainer.val_check_interval}"
        )
    trainer.check_val_every_n_epoch = a["check_val_every_n_epoch"]
    num_sanity_val_steps = a["num_sanity_val_steps"]
    num_sanity_val_steps = 2 if num_sanity_val_steps is None else num_sanity_val_steps
    if num_sanity_val_steps != -1 and num_sanity_val_steps < 0:
        raise MisconfigurationException("`num_sanity_val_steps` must be >= -1")
    trainer.num_sanity_val_steps = float("inf") if num_sanity_val_steps == -1 else num_sanity_val_steps
    log_every_n_steps = a["log_every_n_steps"]
    trainer.log_every_n_steps = 50 if log_every_n_steps is None else log_every_n_steps
    if trainer.log_every_n_steps < 0:
        raise MisconfigurationException("`log_every_n_steps` must be >= 0")
    root = a["default_root_dir"]
    trainer.default_root_dir = os.fspath(root) if root is not None else os.getcwd()
    trainer.loggers = _loggers(trainer, a["logger"])
    trainer.callbacks = _callbacks(trainer, a["callbacks"], a["enable_progress_bar"], a["enable_model_summary"],
                                   a["enable_checkpointing"])


def _loggers(trainer: Trainer, logger: Any) -> list[Logger]:
    if logger is None or logger is True:
        return [CSVLogger(trainer.default_root_dir)]
    if logger is False:
        return []
    if isinstance(logger, Iterable):
        return list(logger)
    return [logger]


def _callbacks(trainer: Trainer, callbacks: Any, enable_progress_bar: bool | None,
               enable_model_summary: bool | None, enable_checkpointing: bool | None) -> list[Any]:
    cbs = [] if callbacks is None else ([callbacks] if not isinstance(callbacks, (list, tuple)) else list(callbacks))
    if enable_progress_bar is not False and not any(isinstance(c, TQDMProgressBar) for c in cbs):
        cbs.append(TQDMProgressBar())
    if enable_progress_bar is False:
        cbs = [c for c in cbs if not isinstance(c, TQDMProgressBar)]
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
    return [c for c in cbs if not isinstance(c, ModelCheckpoint)] + [c for c in cbs if isinstance(c, ModelCheckpoint)]
