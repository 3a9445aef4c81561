"""mopt_fast.LightningModule: the module API of Lightning 2.6, driven by mopt_fast.Trainer.

Everything a `training_step` reaches (`self.optimizers()`, `self.manual_backward`,
`self.clip_gradients`, `self.log`, `self.toggle_optimizer`, ...) is a thin call into the Trainer,
which runs it on the fused kernels. The hooks are no-ops to override; the Trainer only calls the
ones a module or callback overrides.

Hyperparameters follow Lightning: `save_hyperparameters()` collects the ``__init__`` arguments of
every class in the module's hierarchy whose ``__init__`` is on the call stack (so a subclass keeps
its parents' arguments), `hparams` is an `AttributeDict`, `hparams_initial` a frozen copy; a
checkpoint stores them under ``"hyper_parameters"`` and `load_from_checkpoint` passes them back to
``__init__``.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import numbers
import os
import sys
import types
import warnings
from argparse import Namespace
from collections.abc import Callable, Generator, Mapping, MutableMapping, Sequence
from dataclasses import fields, is_dataclass
from typing import IO, TYPE_CHECKING, Any

import torch

from mopt_fast.exceptions import MisconfigurationException, not_built
from mopt_fast.hooks import EvaluationModelHooks
from mopt_fast.optimizer import LightningOptimizer, validate_clip_args

if TYPE_CHECKING:
    from mopt_fast.trainer._protocol import ModuleTrainer

__all__ = ["AttributeDict", "LightningModule"]

_PRIMITIVE_TYPES = (bool, int, float, str)
# Lightning's error for a module without one of these (it checks before fit starts; here the base
# method raises it when the Trainer calls it).
_MINIMUM = (
    "No `{}()` method defined. Lightning `Trainer` expects as minimum a `training_step()`, `train_dataloader()` "
    "and `configure_optimizers()` to be defined."
)


class AttributeDict(dict):
    """A dict whose keys are also attributes (``hparams.lr``), as Lightning's AttributeDict."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'") from e

    def __setattr__(self, key: str, val: Any) -> None:
        self[key] = val

    def __delattr__(self, item: str) -> None:
        if item not in self:
            raise KeyError(item)
        del self[item]

    def __repr__(self) -> str:
        if not len(self):
            return ""
        max_key_length = max(len(str(k)) for k in self)
        tmp_name = "{:" + str(max_key_length + 3) + "s} {}"
        rows = [tmp_name.format(f'"{n}":', self[n]) for n in sorted(self.keys())]
        return "\n".join(rows)


# -- save_hyperparameters: the frame walk of lightning.pytorch.utilities.parsing ---------------------
def _parse_class_init_keys(cls: type) -> tuple[str, str | None, str | None]:
    """The names of ``self``, ``*args`` and ``**kwargs`` in ``cls.__init__``."""
    params = list(inspect.signature(cls.__init__).parameters.values())  # type: ignore[misc]
    n_self = params[0].name

    def first(kind: Any) -> str | None:
        return next((p.name for p in params if p.kind == kind), None)

    return n_self, first(inspect.Parameter.VAR_POSITIONAL), first(inspect.Parameter.VAR_KEYWORD)


def _get_init_args(frame: types.FrameType) -> tuple[Any, dict[str, Any]]:
    """(self, the arguments) of the ``__init__`` running in `frame`, or (None, {}) for another frame."""
    local_vars = frame.f_locals
    if "__class__" not in local_vars or frame.f_code.co_name != "__init__":
        return None, {}
    cls = local_vars["__class__"]
    init_parameters = inspect.signature(cls.__init__).parameters
    self_var, args_var, kwargs_var = _parse_class_init_keys(cls)
    exclude = (*[n for n in (self_var, args_var, kwargs_var) if n], "__class__", "frame", "frame_args")
    # The current values of the signature's variables (a reassigned argument counts as reassigned).
    local_args = {k: local_vars[k] for k in init_parameters}
    if kwargs_var:
        local_args.update(local_args.get(kwargs_var, {}))
    local_args = {k: v for k, v in local_args.items() if k not in exclude}
    return local_vars.get(self_var, None), local_args


def _collect_init_args(frame: types.FrameType, path_args: list[dict[str, Any]], inside: bool = False,
                       classes: tuple[type, ...] = ()) -> list[dict[str, Any]]:
    """The arguments of the chain of ``__init__`` frames (of instances of `classes`) that called
    `frame`, innermost first: a parent's ``__init__`` called from its subclass's, and so on."""
    if not isinstance(frame.f_back, types.FrameType):
        return path_args
    local_self, local_args = _get_init_args(frame)
    if "__class__" in frame.f_locals and (not classes or isinstance(local_self, classes)):
        path_args.append(local_args)
        return _collect_init_args(frame.f_back, path_args, inside=True, classes=classes)
    if not inside:
        return _collect_init_args(frame.f_back, path_args, inside=False, classes=classes)
    return path_args


# -- hyperparameters in checkpoints --------------------------------------------------------------
_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)


def _plain(value: Any) -> tuple[bool, Any]:
    """(True, value as plain data) when `value` is made of what ``torch.load(weights_only=True)``
    reads back (numbers, strings, tensors, dtypes, devices, and lists, tuples, sets and dicts of
    them; a dict subclass becomes a dict), else (False, the type that is not)."""
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN_SCALARS:
        return True, value
    if type(value) in (list, tuple, set):
        items = []
        for v in value:
            ok, item = _plain(v)
            if not ok:
                return False, item
            items.append(item)
        return True, type(value)(items)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            ok, key = _plain(k)
            if not ok or isinstance(key, (list, set, torch.Tensor)):
                return False, type(k)
            ok, item = _plain(v)
            if not ok:
                return False, item
            out[key] = item
        return True, out
    return False, type(value)


# -- load_from_checkpoint -----------------------------------------------------------------------
class _restricted_classmethod:
    """A classmethod that refuses to be called on an instance (``model.load_from_checkpoint(...)``
    would build a new model and drop it), as Lightning's."""

    def __init__(self, method: Callable) -> None:
        self.method = method

    def __get__(self, instance: Any, cls: type | None = None) -> Callable:
        @functools.wraps(self.method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            cls_type = cls if cls is not None else type(instance)
            if instance is not None:
                raise TypeError(
                    f"The classmethod `{cls_type.__name__}.{self.method.__name__}` cannot be called on an instance."
                    " Please call it on the class type and make sure the return value is used."
                )
            return self.method(cls_type, *args, **kwargs)

        wrapper.__func__ = self.method  # type: ignore[attr-defined]
        return wrapper


def _default_map_location(storage: Any, location: str) -> Any:
    """torch.load's default, except that tensors saved on a device this machine lacks go to the CPU."""
    if (
        location.startswith("mps") and not torch.backends.mps.is_available()
        or location.startswith("cuda") and not torch.cuda.is_available()
        or location.startswith("xla")
    ):
        return storage.cpu()
    return None


_CHECKPOINT_PAST_HPARAMS_KEYS = ("hparams", "module_arguments")


def _read_checkpoint(checkpoint_path: str | os.PathLike | IO, map_location: Any, weights_only: bool | None) -> dict:
    """A checkpoint written by mopt_fast.Trainer (or by Lightning's Trainer: the same keys), loaded
    with ``weights_only=True`` unless told otherwise."""
    if isinstance(checkpoint_path, (str, os.PathLike)):
        checkpoint_path = os.fspath(checkpoint_path)
    ckpt = torch.load(checkpoint_path, map_location=map_location or _default_map_location,
                      weights_only=True if weights_only is None else weights_only)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{checkpoint_path!r} is not a checkpoint of a LightningModule: it has no 'state_dict'")
    return ckpt


def _load_state(cls: type, checkpoint: dict[str, Any], strict: bool | None = None, **cls_kwargs_new: Any) -> Any:
    """An instance of `cls` built from the checkpoint's hyperparameters (`cls_kwargs_new` win),
    given the checkpoint's weights; Lightning's `_load_state`."""
    cls_spec = inspect.getfullargspec(cls.__init__)
    self_var, args_var, kwargs_var = _parse_class_init_keys(cls)
    drop = [n for n in (self_var, args_var, kwargs_var) if n]
    init_names = [n for n in inspect.signature(cls.__init__).parameters if n not in drop]

    loaded: Any = {}
    if "hyper_parameters" in checkpoint:
        for old_key in _CHECKPOINT_PAST_HPARAMS_KEYS:  # checkpoints of old Lightning versions
            loaded.update(checkpoint.get(old_key, {}))
        loaded.update(checkpoint.get("hyper_parameters", {}))
        hparams_type = checkpoint.get("hparams_type")
        if hparams_type:
            loaded = AttributeDict(loaded) if isinstance(hparams_type, str) else hparams_type(loaded)
        # hyperparameters saved from one __init__ argument (a dict or Namespace) go back as it
        args_name = checkpoint.get("hparams_name")
        if args_name and args_name in init_names:
            loaded = {args_name: loaded}

    kwargs = dict(loaded)
    kwargs.update(cls_kwargs_new)
    kwargs.pop("_instantiator", None)  # LightningCLI's (not built): the class is built directly
    if not cls_spec.varkw:
        kwargs = {k: v for k, v in kwargs.items() if k in init_names}
    obj = cls(**kwargs)

    if obj._strict_loading is not None and strict is not None and strict != obj.strict_loading:
        raise ValueError(
            f"You set `.load_from_checkpoint(..., strict={strict!r})` which is in conflict with"
            f" `{cls.__name__}.strict_loading={obj.strict_loading!r}. Please set the same value for both of them."
        )
    strict = obj.strict_loading if strict is None else strict
    configure_model = getattr(obj, "configure_model", None)
    if callable(configure_model):
        configure_model()
    obj.on_load_checkpoint(checkpoint)
    keys = obj.load_state_dict(checkpoint["state_dict"], strict=strict)
    if not strict:
        if keys.missing_keys:
            warnings.warn(
                f"Found keys that are in the model state dict but not in the checkpoint: {keys.missing_keys}",
                stacklevel=4,
            )
        if keys.unexpected_keys:
            warnings.warn(
                f"Found keys that are not in the model state dict but in the checkpoint: {keys.unexpected_keys}",
                stacklevel=4,
            )
    return obj


class LightningModule(EvaluationModelHooks, torch.nn.Module):
    """A torch.nn.Module with Lightning's training API. Subclass it, set
    ``self.automatic_optimization = False`` for manual optimization, and fit it with
    `mopt_fast.Trainer`."""

    CHECKPOINT_HYPER_PARAMS_KEY = "hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "hparams_type"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._automatic_optimization = True
        self._trainer: ModuleTrainer | None = None
        self._param_requires_grad_state: dict[torch.Tensor, bool] = {}
        self._example_input_array: Any = None
        self._strict_loading: bool | None = None
        self._metric_attributes: dict[int, str] | None = None
        self._log_hyperparams = False

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_trainer"] = None  # a pickled (or deep-copied) module leaves its trainer behind
        return state

    # -- state ------------------------------------------------------------------------------
    @property
    def automatic_optimization(self) -> bool:
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = bool(value)

    @property
    def trainer(self) -> ModuleTrainer:
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__qualname__} is not attached to a `Trainer`.")
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: ModuleTrainer | None) -> None:
        # LightningModules nested as direct children follow (and theirs in turn), as in Lightning.
        for child in self.children():
            if isinstance(child, LightningModule):
                child.trainer = trainer
        self._trainer = trainer

    @property
    def device(self) -> torch.device:
        if self._trainer is not None:
            return self._trainer.root_device
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating-point parameter (or buffer), else the default dtype."""
        for t in (*self.parameters(), *self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def global_rank(self) -> int:
        """The index of this process across all nodes and devices (0 without a Trainer)."""
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        """The index of this process on its node (0 without a Trainer)."""
        return self._trainer.local_rank if self._trainer is not None else 0

    @property
    def logger(self) -> Any:
        """The Trainer's first logger (None without a Trainer or a logger)."""
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> list[Any]:
        """The Trainer's loggers ([] without a Trainer)."""
        return self._trainer.loggers if self._trainer is not None else []

    @property
    def example_input_array(self) -> Any:
        """An input for ``forward``: a tensor (one argument), a tuple (positional ones) or a dict
        (keyword ones); TensorBoardLogger(log_graph=True) traces the model with it."""
        return self._example_input_array

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        self._example_input_array = example

    @property
    def strict_loading(self) -> bool:
        """Whether `load_from_checkpoint` loads the weights with ``strict=True`` (the default)."""
        return self._strict_loading in (None, True)

    @strict_loading.setter
    def strict_loading(self, strict_loading: bool) -> None:
        self._strict_loading = strict_loading

    def freeze(self) -> LightningModule:
        """Every parameter stops requiring grad, and the module goes to eval mode; returns it."""
        for param in self.parameters():
            param.requires_grad = False
        return self.eval()

    def unfreeze(self) -> LightningModule:
        """Every parameter requires grad again, and the module goes to train mode; returns it."""
        for param in self.parameters():
            param.requires_grad = True
        return self.train()

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0 only (through the progress bar when it has a `print`)."""
        trainer = self.trainer
        if trainer.is_global_zero:
            bar = trainer.progress_bar_callback
            if bar is not None and getattr(bar, "is_enabled", False) and hasattr(bar, "print"):
                bar.print(*args, **kwargs)
            else:
                print(*args, **kwargs)

    # -- hyperparameters ----------------------------------------------------------------------
    @property
    def hparams(self) -> AttributeDict | MutableMapping:
        """What `save_hyperparameters` saved (mutable). See `hparams_initial` for the frozen copy."""
        if "_hparams" not in self.__dict__:
            self._hparams = AttributeDict()
        return self._hparams

    @property
    def hparams_initial(self) -> AttributeDict:
        """A copy of the hyperparameters as `save_hyperparameters` saved them (what the loggers get)."""
        if "_hparams_initial" not in self.__dict__:
            return AttributeDict()
        return copy.deepcopy(self._hparams_initial)

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Sequence[str] | str | None = None,
        frame: types.FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Save ``__init__`` arguments to `hparams`.

        Args:
            *args: nothing (every ``__init__`` argument of this class and of its parents whose
                ``__init__`` called this one), the names of arguments to keep, or one dict /
                argparse.Namespace / AttributeDict whose items become the hyperparameters.
            ignore: an argument name or a list of them to leave out (also removes them when a
                parent class saved them).
            frame: the frame to read the arguments from (default: the caller's).
            logger: send the hyperparameters to the loggers when fit starts.
        """
        self._log_hyperparams = logger
        if len(args) == 1 and not isinstance(args, str) and not args[0]:
            return  # an empty container
        if not frame:
            current = inspect.currentframe()
            if current:
                frame = current.f_back
        if not isinstance(frame, types.FrameType):
            raise AttributeError("There is no `frame` available while being required.")

        if is_dataclass(self):
            init_args = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        else:
            init_args = {}
            for local_args in _collect_init_args(frame, [], classes=(LightningModule,)):
                init_args.update(local_args)

        if ignore is None:
            ignore = []
        elif isinstance(ignore, str):
            ignore = [ignore]
        elif isinstance(ignore, (list, tuple)):
            ignore = [arg for arg in ignore if isinstance(arg, str)]
        ignore = list(set(ignore))
        init_args = {k: v for k, v in init_args.items() if k not in ignore}

        if not args:
            hp: Any = init_args
            self._hparams_name = "kwargs" if hp else None
        else:
            non_str = [i for i, arg in enumerate(args) if not isinstance(arg, str)]
            if len(non_str) == 1:
                hp = args[non_str[0]]
                candidates = [k for k, v in init_args.items() if v == hp]
                self._hparams_name = candidates[0] if candidates else None
            else:
                hp = {arg: init_args[arg] for arg in args if isinstance(arg, str)}
                self._hparams_name = "kwargs"

        self._set_hparams(hp)
        self.remove_ignored_hparams(ignore)
        for k, v in self._hparams.items():
            if isinstance(v, torch.nn.Module):
                warnings.warn(
                    f"Attribute {k!r} is an instance of `nn.Module` and is already saved during checkpointing. It is "
                    f"recommended to ignore them using `self.save_hyperparameters(ignore=[{k!r}])`.",
                    stacklevel=2,
                )
        self._hparams_initial = copy.deepcopy(self._hparams)

    def _set_hparams(self, hp: MutableMapping | Namespace | str) -> None:
        hp = self._to_hparams_dict(hp)
        if isinstance(hp, dict) and isinstance(self.hparams, dict):
            self.hparams.update(hp)
        else:
            self._hparams = hp

    @staticmethod
    def _to_hparams_dict(hp: MutableMapping | Namespace | str) -> MutableMapping:
        if isinstance(hp, Namespace):
            hp = vars(hp)
        if isinstance(hp, dict):
            hp = AttributeDict(hp)
        elif isinstance(hp, _PRIMITIVE_TYPES):
            raise ValueError(f"Primitives {_PRIMITIVE_TYPES} are not allowed.")
        elif not isinstance(hp, MutableMapping):
            raise ValueError(f"Unsupported config type of {type(hp)}.")
        return hp

    def remove_ignored_hparams(self, ignore_list: list[str]) -> None:
        """Drop these names from the saved hyperparameters (what a subclass's ``ignore=`` does to
        hyperparameters its parent saved)."""
        for key in ignore_list:
            self.hparams.pop(key, None)

    # -- checkpoints ----------------------------------------------------------------------------
    @_restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike | IO,
        map_location: Any = None,
        hparams_file: str | os.PathLike | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """A new instance of this class from a checkpoint: ``__init__`` gets the hyperparameters the
        checkpoint stores (``"hyper_parameters"``; `kwargs` override or add to them), then the
        weights are loaded and the model goes to the device of the first saved tensor.

        Args:
            checkpoint_path: a file written by `Trainer.save_checkpoint` or `ModelCheckpoint` (of
                mopt_fast or Lightning), or a file object.
            map_location: as for `torch.load`; by default tensors go back to the device they were
                saved from, or to the CPU when this machine lacks it.
            hparams_file: a ``.yaml`` / ``.yml`` or ``.csv`` file of hyperparameters to use instead of
                the checkpoint's.
            strict: whether the checkpoint's keys must match the model's (default: `strict_loading`).
            weights_only: passed to `torch.load` (None: True; mopt_fast checkpoints are plain data).
            **kwargs: ``__init__`` arguments, over the stored hyperparameters.
        """
        if not (isinstance(cls, type) and issubclass(cls, LightningModule)):
            raise NotImplementedError(f"Unsupported {cls}")
        checkpoint = _read_checkpoint(checkpoint_path, map_location, weights_only)
        if hparams_file is not None:
            extension = str(hparams_file).split(".")[-1].lower()
            if extension not in ("csv", "yml", "yaml"):
                raise ValueError(".csv, .yml or .yaml is required for `hparams_file`")
            from mopt_fast.trainer.loggers import load_hparams_from_tags_csv, load_hparams_from_yaml

            read = load_hparams_from_tags_csv if extension == "csv" else load_hparams_from_yaml
            checkpoint[cls.CHECKPOINT_HYPER_PARAMS_KEY] = read(os.fspath(hparams_file))
        checkpoint.setdefault(cls.CHECKPOINT_HYPER_PARAMS_KEY, {})
        checkpoint[cls.CHECKPOINT_HYPER_PARAMS_KEY].update(kwargs)
        model = _load_state(cls, checkpoint, strict=strict, **kwargs)
        state_dict = checkpoint["state_dict"]
        if not state_dict:
            warnings.warn(f"The state dict in {checkpoint_path!r} contains no parameters.", stacklevel=2)
            return model
        device = next((t for t in state_dict.values() if isinstance(t, torch.Tensor)), torch.tensor(0)).device
        return model.to(device)

    def _checkpoint_hparams(self) -> dict[str, Any]:
        """The checkpoint entries of the hyperparameters (called by the Trainer when it saves):
        ``"hyper_parameters"`` as plain data (a checkpoint loads with ``weights_only=True``; a value
        that is not plain data is left out, with a warning, and must be given to
        `load_from_checkpoint` as a keyword argument) and, as Lightning, ``"hparams_name"``: the
        ``__init__`` argument they came from when it was one dict or Namespace."""
        stored: dict[str, Any] = {}
        warned = self.__dict__.setdefault("_hparams_not_stored", set())
        for key, value in self.hparams.items():
            ok, plain = _plain(value) if isinstance(key, str) else (False, type(key))
            if ok:
                stored[key] = plain
            elif key not in warned:
                warned.add(key)
                warnings.warn(
                    f"The hyperparameter {key!r} holds a {plain.__qualname__}, which is not plain data: it is not "
                    "stored in checkpoints (they load with torch.load(weights_only=True)). Pass it to "
                    f"`load_from_checkpoint(..., {key}=...)`, or `save_hyperparameters(ignore=[{key!r}])`.",
                    stacklevel=4,
                )
        entries: dict[str, Any] = {self.CHECKPOINT_HYPER_PARAMS_KEY: stored}
        if self.hparams:
            entries[self.CHECKPOINT_HYPER_PARAMS_NAME] = getattr(self, "_hparams_name", None)
        return entries

    def to_onnx(self, *args: Any, **kwargs: Any) -> Any:
        raise not_built("LightningModule.to_onnx", "export with torch.onnx.export(model, ...)")

    def to_torchscript(self, *args: Any, **kwargs: Any) -> Any:
        raise not_built("LightningModule.to_torchscript", "use torch.export.export(model, ...) (or torch.jit)")

    def to_tensorrt(self, *args: Any, **kwargs: Any) -> Any:
        raise not_built("LightningModule.to_tensorrt")

    # -- optimizers ---------------------------------------------------------------------------
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizers from `configure_optimizers`: one object when there is one, else a list.
        Wrapped in `LightningOptimizer` unless `use_pl_optimizer=False`."""
        trainer = self.trainer
        opts = trainer._lightning_optimizers if use_pl_optimizer else trainer.optimizers
        return opts[0] if len(opts) == 1 else list(opts)

    def lr_schedulers(self) -> Any:
        """None, one scheduler, or a list of them (the bare torch schedulers)."""
        configs = self.trainer.lr_scheduler_configs
        if not configs:
            return None
        schedulers = [c.scheduler for c in configs]
        return schedulers[0] if len(schedulers) == 1 else schedulers

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Use instead of ``loss.backward()`` in manual optimization: runs the backward hooks and
        the precision plugin's loss scaling."""
        if self._automatic_optimization:
            raise RuntimeError(
                "to use manual_backward, please disable automatic optimization: "
                "set model property `automatic_optimization = False`"
            )
        self.trainer._backward(loss, None, *args, **kwargs)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Hook: how a (scaled) loss is back-propagated."""
        loss.backward(*args, **kwargs)

    def toggle_optimizer(self, optimizer: torch.optim.Optimizer | LightningOptimizer) -> None:
        """Make only `optimizer`'s parameters require grad: parameters that belong only to other
        optimizers get ``requires_grad=False``; the states are restored by `untoggle_optimizer`.
        Parameters frozen by the user stay frozen."""
        state: dict[torch.Tensor, bool] = {}
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    if p not in state:
                        state[p] = p.requires_grad
                        p.requires_grad = False
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.requires_grad = state[p]
        self._param_requires_grad_state = state

    def untoggle_optimizer(self, optimizer: torch.optim.Optimizer | LightningOptimizer) -> None:
        """Restore the ``requires_grad`` states saved by `toggle_optimizer`."""
        raw = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        for opt in self.trainer.optimizers:
            if opt is raw:
                continue
            for group in opt.param_groups:
                for p in group["params"]:
                    if p in self._param_requires_grad_state:
                        p.requires_grad = self._param_requires_grad_state[p]
        self._param_requires_grad_state = {}

    @contextlib.contextmanager
    def toggled_optimizer(self, optimizer: torch.optim.Optimizer | LightningOptimizer) -> Generator[None, None, None]:
        """`toggle_optimizer` for the duration of a ``with`` block."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def clip_gradients(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip `optimizer`'s gradients by norm (default) or value, on the fused kernels. Values
        not given come from the Trainer; giving one that conflicts with the Trainer's is an error;
        a value ≤ 0 does nothing."""
        trainer = self.trainer
        if gradient_clip_val is None:
            gradient_clip_val = trainer.gradient_clip_val or 0.0
        elif trainer.gradient_clip_val is not None and trainer.gradient_clip_val != gradient_clip_val:
            raise MisconfigurationException(
                f"You have set `Trainer(gradient_clip_val={trainer.gradient_clip_val!r})` and have passed "
                f"`clip_gradients(gradient_clip_val={gradient_clip_val!r})`. Please use only one of them."
            )
        if gradient_clip_algorithm is None:
            gradient_clip_algorithm = trainer.gradient_clip_algorithm or "norm"
        else:
            if not isinstance(gradient_clip_algorithm, str):
                raise MisconfigurationException(f"`gradient_clip_algorithm` {gradient_clip_algorithm!r} is invalid.")
            gradient_clip_algorithm = gradient_clip_algorithm.lower()
            if trainer.gradient_clip_algorithm is not None and trainer.gradient_clip_algorithm != gradient_clip_algorithm:
                raise MisconfigurationException(
                    f"You have set `Trainer(gradient_clip_algorithm={trainer.gradient_clip_algorithm!r})` and have "
                    f"passed `clip_gradients(gradient_clip_algorithm={gradient_clip_algorithm!r})`. "
                    "Please use only one of them."
                )
        clip_val, algorithm = validate_clip_args(gradient_clip_val, gradient_clip_algorithm)
        raw = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        trainer._precision.clip_gradients(raw, clip_val, algorithm)

    # -- logging ------------------------------------------------------------------------------
    def _find_metric_attribute(self, metric: Any, name: str) -> str:
        """The attribute name (in `named_modules`) of a logged torchmetrics.Metric, or Lightning's error."""
        from mopt_fast.trainer._metrics import metric_class

        cls = metric_class()
        if self._metric_attributes is None or id(metric) not in self._metric_attributes:
            # looked up again on a miss: a metric assigned after the first log is found too
            self._metric_attributes = {id(m): n for n, m in self.named_modules() if isinstance(m, cls)}
            if not self._metric_attributes:
                raise MisconfigurationException(
                    "Could not find the `LightningModule` attribute for the `torchmetrics.Metric` logged."
                    " You can fix this by setting an attribute for the metric in your `LightningModule`."
                )
        attribute = self._metric_attributes.get(id(metric))
        if attribute is None:
            raise MisconfigurationException(
                "Could not find the `LightningModule` attribute for the `torchmetrics.Metric` logged."
                f" You can fix this by calling `self.log({name}, ..., metric_attribute=name)` where `name` is one"
                f" of {list(self._metric_attributes.values())}"
            )
        return attribute

    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Log `value` (a number, a one-element tensor, or a `torchmetrics.Metric` attribute of the
        module) under `name`; see Lightning's `LightningModule.log`. `reduce_fx`: "mean" (weighted
        by batch size), "sum", "max", "min", or torch's / Python's functions of those names. A
        Metric's step value is its last forward's result, its epoch value `compute()`; it is reset
        at the end of the epoch."""
        # (imported here: mopt_fast.trainer imports this module)
        from mopt_fast.trainer._metrics import is_metric

        if isinstance(value, Mapping):
            raise ValueError(f"`self.log({name}, {value})` was called, but nested dictionaries cannot be logged")
        if not isinstance(value, (torch.Tensor, numbers.Number)) and not is_metric(value):
            raise ValueError(
                f"`self.log({name}, {value})` was called, but `{type(value).__name__}` values cannot be logged"
            )
        trainer = self._trainer
        if trainer is None:
            warnings.warn(
                "You are trying to `self.log()` but the `self.trainer` reference is not registered on the model yet."
                " This is most likely because the model hasn't been passed to the `Trainer`",
                stacklevel=2,
            )
            return
        if trainer.lightning_module is not self:
            # A LightningModule nested in the fitted one runs no hooks of its own (Lightning: its
            # `_current_fx_name` is never set).
            raise MisconfigurationException(
                "You are trying to `self.log()` but it is not managed by the `Trainer` control flow"
            )
        if add_dataloader_idx and "/dataloader_idx_" in name:
            raise MisconfigurationException(
                f"You called `self.log` with the key `{name}`"
                " but it should not contain information about `dataloader_idx` when `add_dataloader_idx=True`"
            )
        distributed = trainer.world_size > 1
        if sync_dist and sync_dist_group is not None and distributed and not rank_zero_only:
            raise not_built("self.log(sync_dist_group=...)", "sync over the whole world with sync_dist=True")
        if is_metric(value) and metric_attribute is None:
            metric_attribute = self._find_metric_attribute(value, name)
        trainer._metrics.log(
            trainer, name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
            reduce_fx=reduce_fx, enable_graph=enable_graph, batch_size=batch_size,
            sync_dist=sync_dist and distributed and not rank_zero_only, metric_attribute=metric_attribute,
            add_dataloader_idx=add_dataloader_idx,
        )

    def log_dict(
        self,
        dictionary: Mapping[str, Any],
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """`log` for every item of `dictionary` (a dict, or a torchmetrics.MetricCollection: each
        of its metrics under its own name)."""
        items_kwargs: dict[str, bool] = {}
        collection = getattr(sys.modules.get("torchmetrics"), "MetricCollection", None)
        if collection is not None and isinstance(dictionary, collection):
            items_kwargs["keep_base"] = False
            if dictionary._enable_compute_groups:
                items_kwargs["copy_state"] = False
        for k, v in dictionary.items(**items_kwargs):
            self.log(
                k, v, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch, reduce_fx=reduce_fx,
                enable_graph=enable_graph, sync_dist=sync_dist, sync_dist_group=sync_dist_group,
                add_dataloader_idx=add_dataloader_idx, batch_size=batch_size, rank_zero_only=rank_zero_only,
            )

    # -- what the user implements ------------------------------------------------------------
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        raise MisconfigurationException(_MINIMUM.format("training_step"))

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        pass

    def configure_optimizers(self) -> Any:
        """Return the optimizer(s) and scheduler(s): one of the six forms Lightning accepts, or None
        (the fit then runs without an optimizer, as in Lightning). Must be overridden."""
        raise MisconfigurationException(_MINIMUM.format("configure_optimizers"))

    def train_dataloader(self) -> Any:
        raise NotImplementedError("`train_dataloader` must be implemented, or a dataloader passed to `fit`")

    def val_dataloader(self) -> Any:
        raise NotImplementedError("`val_dataloader` must be implemented, or a dataloader passed to `fit`")

    # -- automatic-optimization hooks -------------------------------------------------------
    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Called before each optimizer step in automatic optimization only."""
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        optimizer.zero_grad()

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    # -- hooks (no-ops) -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add to (or edit) a checkpoint before it is written; plain data and tensors only."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read what `on_save_checkpoint` added, when a fit resumes from the checkpoint."""

    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...

    def on_validation_model_zero_grad(self) -> None:
        self.zero_grad()

    def on_validation_model_eval(self) -> None:
        self.eval()

    def on_validation_model_train(self) -> None:
        # The Trainer then puts each submodule back in the mode it had before validation.
        self.train()
