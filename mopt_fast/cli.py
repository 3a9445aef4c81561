"""``mopt_fast.cli``: Lightning's LightningCLI (``lightning.pytorch.cli``) for mopt_fast's Trainer.

The parser is jsonargparse's, as in Lightning: it reads the signatures of the Trainer, the module
and the data module, so ``--trainer.max_epochs 3``, ``--model.lr 0.1``, ``--config a.yaml`` and
``--print_config`` behave as Lightning's, and the config.yaml SaveConfigCallback writes beside the
logs has the same content (the header names mopt_fast's version instead of Lightning's).

jsonargparse is an optional dependency (``pip install 'mopt_fast[cli]'``): importing this module
works without it; building a parser or a LightningCLI raises ModuleNotFoundError naming the extra.

Lightning's own callbacks and loggers may be named in a config (``class_path:
lightning.pytorch.callbacks.EarlyStopping``) when the script imported Lightning: our Trainer runs
them (issue 17), so the parser then accepts them beside ours (see `_trainer_signature_view`).
"""
from __future__ import annotations

import functools
import inspect
import operator
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable
from functools import partial, update_wrapper
from pathlib import Path
from types import MethodType
from typing import Any, TypeVar, Union

import torch
import yaml
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from mopt_fast._version import __version__
from mopt_fast.callbacks.callback import Callback
from mopt_fast.core.datamodule import LightningDataModule
from mopt_fast.core.hparams import given_hyperparameters_context, register_instantiator
from mopt_fast.core.module import LightningModule
from mopt_fast.core.saving import filesystem
from mopt_fast.exceptions import MisconfigurationException
from mopt_fast.loggers.logger import Logger
from mopt_fast.seed import seed_everything
from mopt_fast.trainer._hooks import is_overridden
from mopt_fast.trainer._warn import warn
from mopt_fast.trainer.trainer import Trainer

try:
    import jsonargparse
    from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, class_from_function

    _JSONARGPARSE_ERROR = ""
    # As Lightning's cli module sets them: torch's import paths that cannot be resolved from their
    # objects, and fsspec URLs for config files.
    jsonargparse.register_unresolvable_import_paths(torch)
    jsonargparse.set_parsing_settings(config_read_mode_fsspec_enabled=True)
except ImportError as _exc:  # the optional extra is not installed: fail when a parser is built
    ArgumentParser = object  # type: ignore[assignment,misc]
    Namespace = Any  # type: ignore[assignment,misc]
    _JSONARGPARSE_ERROR = (f"LightningCLI needs jsonargparse[signatures] ({_exc}): "
                           "pip install 'mopt_fast[cli]'")

__all__ = [
    "ArgsType",
    "LRSchedulerCallable",
    "LRSchedulerType",
    "LRSchedulerTypeTuple",
    "LRSchedulerTypeUnion",
    "LightningArgumentParser",
    "LightningCLI",
    "OptimizerCallable",
    "ReduceLROnPlateau",
    "SaveConfigCallback",
    "instantiate_class",
    "instantiate_module",
]

ModuleType = TypeVar("ModuleType")


class ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """torch's ReduceLROnPlateau with the `monitor` the CLI's configure_optimizers hands the Trainer."""

    def __init__(self, optimizer: Optimizer, monitor: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(optimizer, *args, **kwargs)
        self.monitor = monitor


# The schedulers the CLI accepts: this module's ReduceLROnPlateau (it knows its monitor), not torch's.
LRSchedulerTypeTuple = (LRScheduler, ReduceLROnPlateau)
LRSchedulerTypeUnion = LRScheduler | ReduceLROnPlateau
LRSchedulerType = type[LRScheduler] | type[ReduceLROnPlateau]

# Type aliases for the arguments of a CLI user's module (``optimizer: OptimizerCallable = torch.optim.Adam``).
ArgsType = list[str] | dict[str, Any] | Namespace | None
OptimizerCallable = Callable[[Iterable], Optimizer]
LRSchedulerCallable = Callable[[Optimizer], LRScheduler | ReduceLROnPlateau]

_RegisteredGroups = dict[str, tuple[type | tuple[type, ...], str]]


def _require_jsonargparse() -> None:
    if _JSONARGPARSE_ERROR:
        raise ModuleNotFoundError(_JSONARGPARSE_ERROR)


# -- which classes the parser accepts --------------------------------------------------------------
def _lightning_pytorch() -> Any:
    """lightning.pytorch when the script imported it (never imported here), else None."""
    return sys.modules.get("lightning.pytorch")


def _lightning_bases() -> tuple[type, ...]:
    """The classes a CLI builds from: ours, and Lightning's data module and callback when the script
    imported Lightning (our Trainer runs both, issue 17)."""
    ours: tuple[type, ...] = (Trainer, LightningModule, LightningDataModule, Callback)
    pl = _lightning_pytorch()
    return ours if pl is None else ours + (pl.LightningDataModule, pl.Callback)


def _widen(annotation: Any, extra: dict[type, type]) -> Any:
    """`annotation` with each class of `extra` replaced by ``Union[that class, its counterpart]``."""
    if isinstance(annotation, type) and annotation in extra:
        return annotation | extra[annotation]
    args = typing.get_args(annotation)
    if not args:
        return annotation
    widened = tuple(_widen(a, extra) for a in args)
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return functools.reduce(operator.or_, widened)
    return origin[widened] if origin is not None and hasattr(origin, "__class_getitem__") else annotation


def _trainer_signature_view(trainer_class: type) -> type:
    """`trainer_class` as the parser should read it. Our Trainer's ``callbacks`` and ``logger`` name
    our Callback and Logger; when the script imported Lightning, Lightning's are accepted too (the
    Trainer runs them), so a config may name ``lightning.pytorch.callbacks.EarlyStopping``. The view
    is only read for its signature: the CLI builds `trainer_class` itself."""
    pl = _lightning_pytorch()
    if pl is None or not issubclass(trainer_class, Trainer):
        return trainer_class
    extra = {Callback: pl.Callback, Logger: pl.loggers.Logger}
    parameters = [p.replace(annotation=_widen(p.annotation, extra)) for p in _init_parameters(trainer_class)]
    init = trainer_class.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # never called
        init(self, *args, **kwargs)

    __init__.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    __init__.__doc__ = init.__doc__
    return type(trainer_class.__name__, (trainer_class,),
                {"__init__": __init__, "__module__": trainer_class.__module__, "__doc__": trainer_class.__doc__})


def _init_parameters(trainer_class: type) -> list[inspect.Parameter]:
    """The keyword arguments `trainer_class` takes, annotations resolved: its ``__init__``'s, and
    while an ``__init__`` takes ``**kwargs``, those of the parent classes' (a Trainer subclass
    passing ``**kwargs`` on to Trainer), as jsonargparse follows them."""
    parameters: dict[str, inspect.Parameter] = {"self": inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)}
    for cls in trainer_class.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        hints = typing.get_type_hints(init)
        takes_kwargs = False
        for p in list(inspect.signature(init).parameters.values())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                takes_kwargs |= p.kind == p.VAR_KEYWORD
            elif p.name not in parameters:
                parameters[p.name] = p.replace(kind=p.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
        if not takes_kwargs or cls is Trainer:
            break
    return list(parameters.values())


def _is_subclass(value: Any, bases: type | tuple[type, ...]) -> bool:
    return isinstance(value, type) and issubclass(value, bases)


# -- the parser ------------------------------------------------------------------------------------
class LightningArgumentParser(ArgumentParser):
    """jsonargparse's ArgumentParser with Lightning's helpers: `add_lightning_class_args`,
    `add_optimizer_args` and `add_lr_scheduler_args`."""

    def __init__(self, *args: Any, description: str = "Lightning Trainer command line tool", env_prefix: str = "PL",
                 default_env: bool = False, **kwargs: Any) -> None:
        """Arguments as jsonargparse's ArgumentParser; `env_prefix` / `default_env`: environment
        variables (``PL_TRAINER__MAX_EPOCHS``) are read when `default_env` is True."""
        _require_jsonargparse()
        super().__init__(*args, description=description, env_prefix=env_prefix, default_env=default_env, **kwargs)
        self.callback_keys: list[str] = []
        # the optimizer and scheduler groups added, with their classes and link targets
        self._optimizers: _RegisteredGroups = {}
        self._lr_schedulers: _RegisteredGroups = {}

    def add_lightning_class_args(self, lightning_class: Any, nested_key: str, subclass_mode: bool = False,
                                 required: bool = True) -> list[str]:
        """Add the arguments of `lightning_class` (a Trainer, LightningModule, LightningDataModule or
        Callback class, or a function returning one) under `nested_key`; `subclass_mode`: any subclass
        may be given with ``class_path``. Returns the names of the arguments added."""
        if isinstance(lightning_class, tuple) and subclass_mode:  # several base classes (data modules)
            return self.add_subclass_arguments(lightning_class, nested_key, fail_untyped=False, required=required)
        if callable(lightning_class) and not isinstance(lightning_class, type):
            lightning_class = class_from_function(lightning_class)
        if not _is_subclass(lightning_class, _lightning_bases()):
            raise MisconfigurationException(
                f"Cannot add arguments from: {lightning_class}. You should provide either a callable or a subclass of: "
                "Trainer, LightningModule, LightningDataModule, or Callback.")
        is_callback = issubclass(lightning_class, Callback) or _is_subclass(
            lightning_class, getattr(_lightning_pytorch(), "Callback", ()))
        if is_callback:
            self.callback_keys.append(nested_key)
        if subclass_mode:
            return self.add_subclass_arguments(lightning_class, nested_key, fail_untyped=False, required=required)
        is_trainer = issubclass(lightning_class, Trainer)
        return self.add_class_arguments(
            _trainer_signature_view(lightning_class) if is_trainer else lightning_class, nested_key,
            fail_untyped=False, instantiate=not is_trainer, sub_configs=True)

    def add_optimizer_args(self, optimizer_class: type[Optimizer] | tuple[type[Optimizer], ...] = (Optimizer,),
                           nested_key: str = "optimizer", link_to: str = "AUTOMATIC") -> None:
        """Add an optimizer group under `nested_key`: one class, or a tuple of base classes (any
        subclass with ``class_path``). `link_to`: a parser key that receives it, or "AUTOMATIC" (the
        CLI builds it in the module's configure_optimizers)."""
        classes = optimizer_class if isinstance(optimizer_class, tuple) else (optimizer_class,)
        assert all(issubclass(c, Optimizer) for c in classes)
        self._add_optimization_group(optimizer_class, nested_key, skip="params")
        self._optimizers[nested_key] = (optimizer_class, link_to)

    def add_lr_scheduler_args(self, lr_scheduler_class: LRSchedulerType | tuple[LRSchedulerType, ...] =
                              LRSchedulerTypeTuple, nested_key: str = "lr_scheduler",
                              link_to: str = "AUTOMATIC") -> None:
        """`add_optimizer_args` for a learning-rate scheduler (torch's, or this module's ReduceLROnPlateau)."""
        classes = lr_scheduler_class if isinstance(lr_scheduler_class, tuple) else (lr_scheduler_class,)
        assert all(issubclass(c, LRSchedulerTypeTuple) for c in classes)
        self._add_optimization_group(lr_scheduler_class, nested_key, skip="optimizer")
        self._lr_schedulers[nested_key] = (lr_scheduler_class, link_to)

    def _add_optimization_group(self, classes: type | tuple[type, ...], nested_key: str, skip: str) -> None:
        """A group the CLI instantiates itself (it needs the parameters / the optimizer first)."""
        kwargs: dict[str, Any] = {"instantiate": False, "fail_untyped": False, "skip": {skip}}
        if isinstance(classes, tuple):
            self.add_subclass_arguments(classes, nested_key, **kwargs)
        else:
            self.add_class_arguments(classes, nested_key, sub_configs=True, **kwargs)


# -- saving the config -----------------------------------------------------------------------------
class SaveConfigCallback(Callback):
    """Writes the CLI's parsed config to ``<log_dir>/<config_filename>`` when a run starts.

    Args:
        parser: the parser that parsed the config.
        config: the parsed config.
        config_filename: the file name.
        overwrite: replace an existing file (default: raise RuntimeError, so that a new run does
            not hide the config of an earlier one).
        multifile: keep the structure of several input config files.
        save_to_log_dir: write the file (False only makes sense in a subclass with its own `save_config`).
    """

    def __init__(self, parser: LightningArgumentParser, config: Namespace, config_filename: str = "config.yaml",
                 overwrite: bool = False, multifile: bool = False, save_to_log_dir: bool = True) -> None:
        self.parser = parser
        self.config = config
        self.config_filename = config_filename
        self.overwrite = overwrite
        self.multifile = multifile
        self.save_to_log_dir = save_to_log_dir
        self.already_saved = False
        if not save_to_log_dir and not is_overridden("save_config", self, SaveConfigCallback):
            raise ValueError(
                "`save_to_log_dir=False` only makes sense when subclassing SaveConfigCallback to implement "
                "`save_config` and it is desired to disable the standard behavior of saving to log_dir.")

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if self.save_to_log_dir:
            self._write(trainer)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)  # every rank agrees on later setups

    def _write(self, trainer: Any) -> None:
        log_dir = trainer.log_dir
        assert log_dir is not None
        config_path = os.path.join(log_dir, self.config_filename)
        fs = filesystem(log_dir)
        if not self.overwrite:
            exists = trainer.strategy.broadcast(fs.isfile(config_path) if trainer.is_global_zero else False)
            if exists:
                raise RuntimeError(
                    f"{self.__class__.__name__} expected {config_path} to NOT exist. Aborting to avoid overwriting"
                    " results of a previous run. You can delete the previous config file,"
                    " set `LightningCLI(save_config_callback=None)` to disable config saving,"
                    ' or set `LightningCLI(save_config_kwargs={"overwrite": True})` to overwrite the config file.')
        if trainer.is_global_zero:  # no logger has created the directory yet
            fs.makedirs(log_dir, exist_ok=True)
            self.parser.save(self.config, config_path, skip_none=False, overwrite=self.overwrite,
                             multifile=self.multifile)

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Override to save the config elsewhere too (called on global rank 0 only: no collectives here)."""


# -- the CLI ---------------------------------------------------------------------------------------
class LightningCLI:
    """Lightning's LightningCLI: parse the command line / config files, build the module, the data
    module and the Trainer, and run the subcommand (fit, validate, test or predict).

    Args:
        model_class: a LightningModule class or a function returning one (None: any, given with ``--model``).
        datamodule_class: a LightningDataModule class or a function returning one (None: any, optional).
        save_config_callback: the callback class that writes the config (None: none).
        save_config_kwargs: its keyword arguments.
        trainer_class: the Trainer class or a function returning one.
        trainer_defaults: Trainer argument defaults; its ``callbacks`` are always added and not configurable.
        seed_everything_default: the default of ``--seed_everything`` (True: a random seed; False: no seeding).
        parser_kwargs: keyword arguments of each parser (or, under a subcommand's name, of that one).
        parser_class: the parser class.
        subclass_mode_model / subclass_mode_data: accept any subclass with ``class_path``.
        args: the arguments to parse instead of sys.argv (a list as on the command line, or a dict / Namespace).
        run: add the subcommands and run the one chosen (False: build the objects only).
        auto_configure_optimizers: add ``--optimizer`` / ``--lr_scheduler`` and configure_optimizers from them.
        load_from_checkpoint_support: the module's `save_hyperparameters` saves the parsed config, so a
            checkpoint rebuilds the module as configured.
    """

    def __init__(
        self,
        model_class: type[LightningModule] | Callable[..., LightningModule] | None = None,
        datamodule_class: type[LightningDataModule] | Callable[..., LightningDataModule] | None = None,
        save_config_callback: type[SaveConfigCallback] | None = SaveConfigCallback,
        save_config_kwargs: dict[str, Any] | None = None,
        trainer_class: type[Trainer] | Callable[..., Trainer] = Trainer,
        trainer_defaults: dict[str, Any] | None = None,
        seed_everything_default: bool | int = True,
        parser_kwargs: dict[str, Any] | dict[str, dict[str, Any]] | None = None,
        parser_class: type[LightningArgumentParser] = LightningArgumentParser,
        subclass_mode_model: bool = False,
        subclass_mode_data: bool = False,
        args: ArgsType = None,
        run: bool = True,
        auto_configure_optimizers: bool = True,
        load_from_checkpoint_support: bool = True,
    ) -> None:
        _require_jsonargparse()
        self.save_config_callback = save_config_callback
        self.save_config_kwargs = save_config_kwargs or {}
        self.trainer_class = trainer_class
        self.trainer_defaults = trainer_defaults or {}
        self.seed_everything_default = seed_everything_default
        self.parser_kwargs = parser_kwargs or {}
        self.parser_class = parser_class
        self.auto_configure_optimizers = auto_configure_optimizers

        self.model_class = model_class
        self._model_class = model_class or LightningModule  # the processed value; model_class stays as given
        self.subclass_mode_model = model_class is None or subclass_mode_model
        self.datamodule_class = datamodule_class
        self._datamodule_class = datamodule_class or LightningDataModule
        self.subclass_mode_data = datamodule_class is None or subclass_mode_data

        main_kwargs, subparser_kwargs = self._setup_parser_kwargs(self.parser_kwargs)
        self.setup_parser(run, main_kwargs, subparser_kwargs)
        self.parse_arguments(self.parser, args)
        self._parse_ckpt_path()

        self.subcommand: str | None = self.config["subcommand"] if run else None
        self._set_seed()

        if load_from_checkpoint_support:
            self._add_instantiators()
        self.before_instantiate_classes()
        self.instantiate_classes()
        self.after_instantiate_classes()

        if self.subcommand is not None:
            self._run_subcommand(self.subcommand)

    # -- the parser ----------------------------------------------------------------------------
    def _setup_parser_kwargs(self, parser_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        names = self.subcommands().keys()
        return ({k: v for k, v in parser_kwargs.items() if k not in names},
                {k: v for k, v in parser_kwargs.items() if k in names})

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Build a parser with ``-c/--config``."""
        kwargs.setdefault("dump_header", [f"mopt_fast=={__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument("-c", "--config", action=ActionConfigFile,
                            help="Path to a configuration file in json or yaml format.")
        return parser

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any],
                     subparser_kwargs: dict[str, Any]) -> None:
        """Build the parser, its subcommands and arguments."""
        self.parser = self.init_parser(**main_kwargs)
        if add_subcommands:
            self._subcommand_method_arguments: dict[str, list[str]] = {}
            self._add_subcommands(self.parser, **subparser_kwargs)
        else:
            self._add_arguments(self.parser)

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """``--seed_everything``."""
        parser.add_argument(
            "--seed_everything", type=bool | int, default=self.seed_everything_default,
            help=("Set to an int to run seed_everything with this value before classes instantiation."
                  "Set to True to use a random seed."))

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The Trainer's, the module's and the data module's arguments."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        # without a data module class the module's own dataloaders may serve: the group is optional then
        parser.add_lightning_class_args(self._data_bases(), "data", subclass_mode=self.subclass_mode_data,
                                        required=self.datamodule_class is not None)

    def _data_bases(self) -> Any:
        """The data module class; without one, any data module: ours, or Lightning's when the script
        imported Lightning (our Trainer takes those too)."""
        pl = _lightning_pytorch()
        if self.datamodule_class is None and pl is not None:
            return (self._datamodule_class, pl.LightningDataModule)
        return self._datamodule_class

    def _add_arguments(self, parser: LightningArgumentParser) -> None:
        self.add_default_arguments_to_parser(parser)
        self.add_core_arguments_to_parser(parser)
        self.add_arguments_to_parser(parser)
        if self.auto_configure_optimizers:  # unless add_arguments_to_parser added its own
            if not parser._optimizers:
                parser.add_optimizer_args((Optimizer,))
            if not parser._lr_schedulers:
                parser.add_lr_scheduler_args(LRSchedulerTypeTuple)
        self.link_optimizers_and_lr_schedulers(parser)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Override to add arguments or links (``parser.link_arguments(...)``)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """The subcommands, each with the Trainer method arguments the parser leaves out."""
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
            "test": {"model", "dataloaders", "datamodule"},
            "predict": {"model", "dataloaders", "datamodule"},
        }

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        subcommands = parser.add_subcommands()
        trainer_class = (self.trainer_class if isinstance(self.trainer_class, type)
                         else class_from_function(self.trainer_class))
        for subcommand in self.subcommands():
            description = _short_description(getattr(trainer_class, subcommand))
            subparser_kwargs = kwargs.get(subcommand, {})
            subparser_kwargs.setdefault("description", description)
            subparser = self._prepare_subcommand_parser(trainer_class, subcommand, **subparser_kwargs)
            self._subcommand_parsers[subcommand] = subparser
            subcommands.add_subcommand(subcommand, subparser, help=description)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = self.init_parser(**kwargs)
        self._add_arguments(parser)
        skip: set[str | int] = set(self.subcommands()[subcommand])
        # the method's own arguments (ckpt_path, ...), passed to it when it runs
        self._subcommand_method_arguments[subcommand] = parser.add_method_arguments(klass, subcommand, skip=skip)
        return parser

    @staticmethod
    def link_optimizers_and_lr_schedulers(parser: LightningArgumentParser) -> None:
        """Link each optimizer / scheduler group that names a `link_to` key to that key."""
        for key, (class_type, link_to) in {**parser._optimizers, **parser._lr_schedulers}.items():
            if link_to == "AUTOMATIC":
                continue
            if isinstance(class_type, tuple):
                parser.link_arguments(key, link_to)
            else:
                parser.link_arguments(key, link_to, compute_fn=partial(_with_class_path, class_type))

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse `args` (sys.argv when None) into `config`."""
        if args is not None and len(sys.argv) > 1:
            warn("LightningCLI's args parameter is intended to run from within Python like if it were from the command "
                 "line. To prevent mistakes it is not recommended to provide both args and command line arguments, "
                 f"got: sys.argv[1:]={sys.argv[1:]}, args={args}.")
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        """A checkpoint given with ``--ckpt_path`` brings the module's saved hyperparameters into the config."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        hparams = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def _dump_config(self) -> None:
        """The config as plain data (once), for the modules' saved hyperparameters."""
        if hasattr(self, "config_dump"):
            return
        self.config_dump = yaml.safe_load(
            self.parser.dump(self.config, skip_link_targets=False, skip_none=False, format="yaml"))
        if "subcommand" in self.config:
            self.config_dump = self.config_dump[self.config.subcommand]

    def _add_instantiators(self) -> None:
        self.parser.add_instantiator(_InstantiatorFn(cli=self, key="model"), _module_type(self._model_class),
                                     subclasses=self.subclass_mode_model)
        data_bases = self._data_bases()
        for data_base in data_bases if isinstance(data_bases, tuple) else (data_bases,):
            self.parser.add_instantiator(_InstantiatorFn(cli=self, key="data"), _module_type(data_base),
                                         subclasses=self.subclass_mode_data)

    # -- building the objects ------------------------------------------------------------------
    def before_instantiate_classes(self) -> None:
        """Override to run code before the classes are built."""

    def instantiate_classes(self) -> None:
        """Build the data module, the module and the Trainer (`config_init` holds every built object)."""
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def after_instantiate_classes(self) -> None:
        """Override to run code after the classes are built."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build the Trainer from the config, `kwargs` overriding it."""
        extra_callbacks = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        return self._instantiate_trainer(trainer_config, extra_callbacks)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        key = "callbacks"
        if key not in config:
            warn(f"The `{self.trainer_class.__qualname__}` class does not expose the `{key}` argument so they will"
                 " not be included.")
            return self.trainer_class(**config)
        if config[key] is None:
            config[key] = []
        elif not isinstance(config[key], list):
            config[key] = [config[key]]
        config[key].extend(callbacks)
        if key in self.trainer_defaults:
            value = self.trainer_defaults[key]
            config[key] += value if isinstance(value, list) else [value]
        if self.save_config_callback and not config.get("fast_dev_run", False):
            config[key].append(self.save_config_callback(
                self._parser(self.subcommand), self.config.get(str(self.subcommand), self.config),
                **self.save_config_kwargs))
        return self.trainer_class(**config)

    def _parser(self, subcommand: str | None) -> LightningArgumentParser:
        return self.parser if subcommand is None else self._subcommand_parsers[subcommand]

    @staticmethod
    def configure_optimizers(lightning_module: LightningModule, optimizer: Optimizer,
                             lr_scheduler: LRSchedulerTypeUnion | None = None) -> Any:
        """What the module's configure_optimizers returns for the configured optimizer and scheduler;
        override to change it."""
        if lr_scheduler is None:
            return optimizer
        if isinstance(lr_scheduler, ReduceLROnPlateau):
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "monitor": lr_scheduler.monitor}}
        return [optimizer], [lr_scheduler]

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        """Replace the module's configure_optimizers when one optimizer group (and at most one
        scheduler group) is AUTOMATIC and the config gives an optimizer."""
        if not self.auto_configure_optimizers:
            return
        parser = self._parser(subcommand)
        optimizers = _automatic_keys(Optimizer, parser._optimizers)
        lr_schedulers = _automatic_keys(LRSchedulerTypeTuple, parser._lr_schedulers)
        if not optimizers:
            return
        if len(optimizers) > 1 or len(lr_schedulers) > 1:
            raise MisconfigurationException(
                f"`{self.__class__.__name__}.add_configure_optimizers_method_to_model` expects at most one optimizer "
                f"and one lr_scheduler to be 'AUTOMATIC', but found {optimizers + lr_schedulers}. In this case the "
                "user is expected to link the argument groups and implement `configure_optimizers`, see "
                "https://lightning.ai/docs/pytorch/stable/common/lightning_cli.html"
                "#optimizers-and-learning-rate-schedulers")
        optimizer_init = self._group_init(parser._optimizers, optimizers[0])
        if not optimizer_init:  # the groups exist but the config gives no optimizer
            return
        lr_scheduler_init = self._group_init(parser._lr_schedulers, lr_schedulers[0]) if lr_schedulers else None
        if is_overridden("configure_optimizers", self.model, LightningModule):
            warn(f"`{self.model.__class__.__name__}.configure_optimizers` will be overridden by "
                 f"`{self.__class__.__name__}.configure_optimizers`.")
        optimizer = instantiate_class(self.model.parameters(), optimizer_init)
        lr_scheduler = instantiate_class(optimizer, lr_scheduler_init) if lr_scheduler_init else None
        fn = partial(self.configure_optimizers, optimizer=optimizer, lr_scheduler=lr_scheduler)
        update_wrapper(fn, self.configure_optimizers)  # is_overridden reads its code
        self.model.configure_optimizers = MethodType(fn, self.model)

    def _group_init(self, register: _RegisteredGroups, key: str) -> Any:
        """The ``{"class_path", "init_args"}`` of the group `key` (a single-class group has no class_path)."""
        init = self._get(self.config_init, key)
        class_type = register[key][0]
        return init if isinstance(class_type, tuple) else _with_class_path(class_type, init)

    def _get(self, config: Any, key: str, default: Any = None) -> Any:
        """`key` of `config`, under the subcommand when there is one."""
        return config.get(str(self.subcommand), config).get(key, default)

    # -- running -------------------------------------------------------------------------------
    def _run_subcommand(self, subcommand: str) -> None:
        """``before_<subcommand>``, the CLI's or the Trainer's `subcommand`, ``after_<subcommand>``."""
        before = getattr(self, f"before_{subcommand}", None)
        if callable(before):
            before()
        fn = getattr(self, subcommand, getattr(self.trainer, subcommand))
        fn(**self._prepare_subcommand_kwargs(subcommand))
        after = getattr(self, f"after_{subcommand}", None)
        if callable(after):
            after()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """The subcommand's configured method arguments, the module and the data module."""
        allowed = self._subcommand_method_arguments[subcommand]
        kwargs = {k: v for k, v in self.config_init[subcommand].items() if k in allowed}
        kwargs["model"] = self.model
        if self.datamodule is not None:
            kwargs["datamodule"] = self.datamodule
        return kwargs

    def _set_seed(self) -> None:
        """Seed as ``seed_everything`` says (True: a random seed), and record the seed in the config."""
        seed = self._get(self.config, "seed_everything")
        if seed is False:
            return
        seed = seed_everything(workers=True) if seed is True else seed_everything(seed, workers=True)
        (self.config[self.subcommand] if self.subcommand else self.config)["seed_everything"] = seed


# -- helpers ---------------------------------------------------------------------------------------
def _automatic_keys(class_type: type | tuple[type, ...], register: _RegisteredGroups) -> list[str]:
    """The groups of `register` linked AUTOMATIC whose classes are `class_type`s."""
    keys = []
    for key, (base, link_to) in register.items():
        bases = base if isinstance(base, tuple) else (base,)
        if link_to == "AUTOMATIC" and any(issubclass(c, class_type) for c in bases):
            keys.append(key)
    return keys


def _with_class_path(class_type: type, init_args: Any = None) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` for the arguments of a single-class group."""
    if isinstance(init_args, Namespace):
        init_args = init_args.as_dict()
    return {"class_path": f"{class_type.__module__}.{class_type.__name__}", "init_args": init_args or {}}


def instantiate_class(args: Any, init: dict[str, Any]) -> Any:
    """Build ``init["class_path"]`` with the positional `args` (one value or a tuple) and
    ``init["init_args"]`` as keyword arguments."""
    kwargs = init.get("init_args", {})
    if not isinstance(args, tuple):
        args = (args,)
    module_name, class_name = init["class_path"].rsplit(".", 1)
    cls = getattr(__import__(module_name, fromlist=[class_name]), class_name)
    return cls(*args, **kwargs)


def _short_description(component: object) -> str | None:
    """The first paragraph of `component`'s docstring (a subcommand's help)."""
    if component.__doc__ is None:
        return None
    import docstring_parser  # comes with jsonargparse[signatures]

    try:
        return docstring_parser.parse(component.__doc__).short_description
    except (ValueError, docstring_parser.ParseError) as exc:
        warn(f"Failed parsing docstring for {component}: {exc}")
        return None


def _module_type(value: Any) -> type:
    """A class, or the return annotation of a function returning one."""
    if callable(value) and not isinstance(value, type):
        return inspect.signature(value).return_annotation
    return value


def _set_nested(data: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        assert part in data, f"Expected key {key} to be in data"
        data = data[part]
    data[last] = value


class _InstantiatorFn:
    """Builds the module / data module with the parsed config as its saved hyperparameters, so a
    checkpoint rebuilds it as configured (``load_from_checkpoint_support``)."""

    def __init__(self, cli: LightningCLI, key: str) -> None:
        self.cli = cli
        self.key = key

    def __call__(self, class_type: type[ModuleType], *args: Any, applied_instantiation_links: dict,
                 **kwargs: Any) -> ModuleType:
        self.cli._dump_config()
        hparams = self.cli.config_dump.get(self.key, {})
        if "class_path" in hparams:
            # the same hyperparameters with or without subclass mode; the class in `_class_path`
            hparams = {"_class_path": hparams["class_path"], **hparams.get("init_args", {}),
                       **hparams.get("dict_kwargs", {})}
        prefix = f"{self.key}."
        for key, value in applied_instantiation_links.items():  # the values linked at instantiation
            if key.startswith(prefix):
                _set_nested(hparams, key[len(prefix):].removeprefix("init_args."), value)
        with given_hyperparameters_context(hparams, instantiator="mopt_fast.cli.instantiate_module"):
            return class_type(*args, **kwargs)


def instantiate_module(class_type: type[ModuleType], config: dict[str, Any]) -> ModuleType:
    """Build `class_type` from hyperparameters `_InstantiatorFn` saved (``_class_path`` for a subclass)."""
    _require_jsonargparse()
    parser = ArgumentParser(exit_on_error=False)
    if "_class_path" in config:
        parser.add_subclass_arguments(class_type, "module", fail_untyped=False)
        config = {"class_path": config["_class_path"],
                  "dict_kwargs": {k: v for k, v in config.items() if k != "_class_path"}}
    else:
        parser.add_class_arguments(class_type, "module", fail_untyped=False)
    return parser.instantiate_classes(parser.parse_object({"module": config})).module


def _instantiate_from_checkpoint(class_type: type[ModuleType], config: dict[str, Any]) -> ModuleType:
    """`instantiate_module` for ``load_from_checkpoint``, with Lightning's guard: a ``_class_path``
    from the checkpoint must name an already imported subclass (no code is imported for a checkpoint)."""
    class_path = config.get("_class_path")
    if class_path is not None and not _is_imported_subclass(class_path, class_type):
        raise ValueError(
            f"The class {class_path!r} requested by the checkpoint does not resolve to an already imported"
            f" subclass of {class_type.__name__} and was blocked to prevent arbitrary code execution. If you trust"
            " this checkpoint, import the module that defines the class before loading.")
    return instantiate_module(class_type, config)


def _is_imported_subclass(class_path: Any, cls: type) -> bool:
    if not isinstance(class_path, str):
        return False
    module_name, _, name = class_path.rpartition(".")
    target = getattr(sys.modules.get(module_name), name, None)
    return isinstance(target, type) and issubclass(target, cls)


if not _JSONARGPARSE_ERROR:  # checkpoints of either CLI rebuild their class_path arguments
    for _path in ("mopt_fast.cli.instantiate_module", "lightning.pytorch.cli.instantiate_module"):
        register_instantiator(_path, _instantiate_from_checkpoint)
