"""Hyperparameters, as Lightning's ``HyperparametersMixin``: `save_hyperparameters` (the
``__init__`` arguments of every class in the hierarchy, found by Lightning's frame walk),
`hparams` / `hparams_initial`, their checkpoint entries, and the reading of checkpoints that
`load_from_checkpoint` builds an instance from. Shared by `LightningModule` and
`LightningDataModule`; each names its checkpoint keys (``CHECKPOINT_HYPER_PARAMS_*``)."""
from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import inspect
import pickle
import types
import warnings
from argparse import Namespace
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import fields, is_dataclass
from typing import Any

import torch

from mopt_fast.core.saving import AttributeDict

__all__ = ["HyperparametersMixin", "clean_namespace", "given_hyperparameters_context", "register_instantiator"]

_PRIMITIVE_TYPES = (bool, int, float, str)

# Hyperparameters that `save_hyperparameters` takes instead of the ``__init__`` arguments: the
# LightningCLI's parsed config of the object it builds (Lightning's `_given_hyperparameters`).
_given_hyperparameters: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "_given_hyperparameters", default=None)


@contextlib.contextmanager
def given_hyperparameters_context(hparams: dict[str, Any], instantiator: str) -> Iterator[None]:
    """Objects built inside save `hparams`, plus ``_instantiator``: the import path of the function
    that rebuilds them from their checkpoint."""
    token = _given_hyperparameters.set({**hparams, "_instantiator": instantiator})
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)


# -- save_hyperparameters: the frame walk of lightning.pytorch.utilities.parsing ---------------------
def _parse_class_init_keys(cls: type[object]) -> tuple[str, str | None, str | None]:
    """The names of ``self``, ``*args`` and ``**kwargs`` in ``cls.__init__``."""
    params = list(inspect.signature(cls.__init__).parameters.values())
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
def _is_picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
        return True
    except (pickle.PickleError, AttributeError, RuntimeError, TypeError):
        return False


def clean_namespace(hparams: MutableMapping[str, Any]) -> None:
    """Drop the hyperparameters that cannot be pickled (an instance of a class defined inside a
    function, a lambda...), each with Lightning's warning, as Lightning's Trainer does at the start
    of every run: a checkpoint pickles the rest, and would fail to save with them."""
    for key in [k for k, v in hparams.items() if not _is_picklable(v)]:
        warnings.warn(f"Attribute '{key}' removed from hparams because it cannot be pickled. You can suppress this "
                      f"warning by setting `self.save_hyperparameters(ignore=['{key}'])`.", stacklevel=2)
        del hparams[key]


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


_CHECKPOINT_PAST_HPARAMS_KEYS = ("hparams", "module_arguments")

# The functions a checkpoint's ``_instantiator`` may name (LightningCLI's, which rebuild class_path
# configs among the hyperparameters), by import path. mopt_fast.cli registers its own when imported;
# nothing is imported from a checkpoint's path (Lightning keeps an allowlist for that reason).
_INSTANTIATORS: dict[str, Callable[[type, dict[str, Any]], Any]] = {}


def register_instantiator(path: str, instantiator: Callable[[type, dict[str, Any]], Any]) -> None:
    """Let checkpoints whose hyperparameters name `path` as ``_instantiator`` be rebuilt by `instantiator`."""
    _INSTANTIATORS[path] = instantiator


def _build_from_checkpoint(cls: type[HyperparametersMixin], checkpoint: dict[str, Any],
                           cls_kwargs_new: dict[str, Any]) -> Any:
    """`cls` built from the checkpoint's hyperparameters (`_init_kwargs`): by the registered
    instantiator the checkpoint names, else directly."""
    kwargs = _init_kwargs(cls, checkpoint, cls_kwargs_new)
    saved = checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_KEY) or {}
    path = cls_kwargs_new.get("_instantiator", saved.get("_instantiator") if isinstance(saved, Mapping) else None)
    instantiator = _INSTANTIATORS.get(path) if isinstance(path, str) else None
    return instantiator(cls, kwargs) if instantiator else cls(**kwargs)


def _init_kwargs(cls: type[HyperparametersMixin], checkpoint: dict[str, Any],
                 cls_kwargs_new: dict[str, Any]) -> dict[str, Any]:
    """The ``__init__`` arguments of `cls` from the checkpoint's hyperparameters (under the keys
    `cls` names: the module's or the data module's), `cls_kwargs_new` over them; the first half of
    Lightning's `_load_state`."""
    cls_spec = inspect.getfullargspec(cls.__init__)
    self_var, args_var, kwargs_var = _parse_class_init_keys(cls)
    drop = [n for n in (self_var, args_var, kwargs_var) if n]
    init_names = [n for n in inspect.signature(cls.__init__).parameters if n not in drop]

    loaded: Any = {}
    if cls.CHECKPOINT_HYPER_PARAMS_KEY in checkpoint:
        if cls.CHECKPOINT_HYPER_PARAMS_KEY == "hyper_parameters":
            for old_key in _CHECKPOINT_PAST_HPARAMS_KEYS:  # a module's, in checkpoints of old Lightning versions
                loaded.update(checkpoint.get(old_key, {}))
        loaded.update(checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_KEY, {}))
        hparams_type = checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_TYPE)
        if hparams_type:
            loaded = AttributeDict(loaded) if isinstance(hparams_type, str) else hparams_type(loaded)
        # hyperparameters saved from one __init__ argument (a dict or Namespace) go back as it
        args_name = checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_NAME)
        if args_name and args_name in init_names:
            loaded = {args_name: loaded}

    kwargs = dict(loaded)
    kwargs.update(cls_kwargs_new)
    kwargs.pop("_instantiator", None)  # LightningCLI's (mopt_fast.cli): the class is built directly
    if not cls_spec.varkw:
        kwargs = {k: v for k, v in kwargs.items() if k in init_names}
    if not cls_spec.varkw:
        kwargs = {k: v for k, v in kwargs.items() if k in init_names}
    return kwargs


class HyperparametersMixin:
    """`save_hyperparameters` and what goes with it; subclasses set the three checkpoint keys."""

    CHECKPOINT_HYPER_PARAMS_KEY = "hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "hparams_type"
    # torch.jit.script skips these properties (as Lightning's mixin): they are not TorchScript.
    __jit_unused_properties__: list[str] = ["hparams", "hparams_initial"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._log_hyperparams = False  # until save_hyperparameters(logger=True), as Lightning

    # -- hyperparameters ----------------------------------------------------------------------
    @property
    def hparams(self) -> AttributeDict | MutableMapping:
        """What `save_hyperparameters` saved (mutable). See `hparams_initial` for the frozen copy."""
        if "_hparams" not in self.__dict__:
            # a MutableMapping other than a dict (an OmegaConf DictConfig) is kept as it is
            self._hparams: AttributeDict | MutableMapping = AttributeDict()
        return self._hparams

    @property
    def hparams_initial(self) -> AttributeDict | MutableMapping:
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
        given = _given_hyperparameters.get()
        if given is None and not frame:
            current = inspect.currentframe()
            if current:
                frame = current.f_back
        if given is None and not isinstance(frame, types.FrameType):
            raise AttributeError("There is no `frame` available while being required.")

        if given is not None:
            init_args = given
        elif is_dataclass(self):
            init_args = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        else:
            assert frame is not None  # checked above
            init_args = {}
            for local_args in _collect_init_args(frame, [], classes=(HyperparametersMixin,)):
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

    def _checkpoint_hparams(self) -> dict[str, Any]:
        """The checkpoint entries of the hyperparameters (called by the Trainer when it saves):
        ``"hyper_parameters"`` and, as Lightning, ``"hparams_name"``: the ``__init__`` argument they
        came from when it was one dict or Namespace.

        A value that is not plain data (an ``nn.Module`` or any other object passed to ``__init__``
        and saved by `save_hyperparameters`) is stored as it is, pickled, as Lightning 2.6 stores it,
        so `load_from_checkpoint` rebuilds the model with it rather than with the argument's default.
        The price is Lightning's too: ``torch.load(weights_only=True)``, the default of both Trainers
        (torch >= 2.6), refuses the whole file, and loading it (``load_from_checkpoint(...,
        weights_only=False)``, ``fit(ckpt_path=..., weights_only=False)``) runs the unpickler, which
        can execute any code the file carries: only for files from a trusted source. A module
        whose hyperparameters are plain data keeps files that load safely; leaving such an
        argument out (``save_hyperparameters(ignore=[...])``, and passing it to
        `load_from_checkpoint` as a keyword) keeps them so. Warned once per hyperparameter."""
        stored: dict[str, Any] = {}
        warned = self.__dict__.setdefault("_hparams_not_stored", set())
        for key, value in self.hparams.items():
            ok, plain = _plain(value) if isinstance(key, str) else (False, type(key))
            stored[key] = plain if ok else value
            if not ok and key not in warned:
                warned.add(key)
                warnings.warn(
                    f"The hyperparameter {key!r} holds a {plain.__qualname__}, which is not plain data: the checkpoint "
                    "pickles it, as Lightning's, and loads only with weights_only=False (which runs code from the "
                    "file: trusted files only). To keep checkpoints loadable with weights_only=True, use "
                    f"`save_hyperparameters(ignore=[{key!r}])` and pass it to `load_from_checkpoint(..., {key}=...)`.",
                    stacklevel=4,
                )
        entries: dict[str, Any] = {self.CHECKPOINT_HYPER_PARAMS_KEY: stored}
        if self.hparams:
            entries[self.CHECKPOINT_HYPER_PARAMS_NAME] = getattr(self, "_hparams_name", None)
        return entries
