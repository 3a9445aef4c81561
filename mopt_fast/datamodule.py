"""mopt_fast.LightningDataModule: Lightning 2.6's data module (``lightning.pytorch.LightningDataModule``).

The data of a run in one object: `prepare_data` (once per node, before anything else), `setup(stage)`
and `teardown(stage)` around every `fit` / `validate` / `test` / `predict`, the four
``*_dataloader`` hooks, `state_dict` / `load_state_dict` (saved in checkpoints under the class's
qualified name), `on_exception`, and hyperparameters through `save_hyperparameters` (logged with
the module's, and saved in checkpoints as ``datamodule_hyper_parameters``). Pass it as
``trainer.fit(model, datamodule=dm)`` or positionally, ``trainer.fit(model, dm)``.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from torch.utils.data import DataLoader, Dataset, IterableDataset

from mopt_fast.exceptions import MisconfigurationException

__all__ = ["LightningDataModule"]


class _AttributeDict(dict):
    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


class LightningDataModule:
    """Subclass it and override the hooks you need; see the module docstring."""

    name: str | None = None
    CHECKPOINT_HYPER_PARAMS_KEY = "datamodule_hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "datamodule_hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "datamodule_hparams_type"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.trainer: Any = None
        self.prepare_data_per_node = True
        self.allow_zero_length_dataloader_with_multiple_devices = False
        self._log_hyperparams = True
        self._hparams = _AttributeDict()
        self._hparams_initial = _AttributeDict()

    # -- hyperparameters ---------------------------------------------------------------------------
    @property
    def hparams(self) -> _AttributeDict:
        if not hasattr(self, "_hparams"):
            self._hparams = _AttributeDict()
        return self._hparams

    @property
    def hparams_initial(self) -> _AttributeDict:
        """The hyperparameters as `save_hyperparameters` recorded them (later edits not included)."""
        return copy.deepcopy(getattr(self, "_hparams_initial", _AttributeDict()))

    def save_hyperparameters(self, *args: Any, ignore: str | Iterable[str] | None = None, frame: Any = None,
                             logger: bool = True) -> None:
        """Record the ``__init__`` arguments (of every ``__init__`` in the class chain that led here) in
        ``self.hparams``: all of them, the ones named in `args`, or a dict given as `args[0]`;
        minus `ignore`. `logger`: whether the loggers get them."""
        self._log_hyperparams = logger
        if frame is None:
            frame = inspect.currentframe().f_back
        if len(args) == 1 and isinstance(args[0], Mapping):
            hparams = dict(args[0])
        else:
            init_args = _collect_init_args(frame, self)
            if args:
                names = [a for arg in args for a in ([arg] if isinstance(arg, str) else arg)]
                hparams = {k: init_args[k] for k in names if k in init_args}
            else:
                hparams = init_args
        ignored = {ignore} if isinstance(ignore, str) else set(ignore or ())
        hparams = {k: v for k, v in hparams.items() if k not in ignored}
        self.hparams.update(hparams)
        self._hparams_initial = copy.deepcopy(self._hparams)

    # -- hooks ----------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download / write data: called once per node (local rank 0) or once in all
        (`prepare_data_per_node=False`: global rank 0), before `setup`."""

    def setup(self, stage: str) -> None:
        """Called on every process at the start of fit / validate / test / predict (`stage`)."""

    def teardown(self, stage: str) -> None:
        """Called on every process at the end of fit / validate / test / predict (`stage`)."""

    def train_dataloader(self) -> Any:
        raise MisconfigurationException("`train_dataloader` must be implemented to be used with the Lightning Trainer")

    def val_dataloader(self) -> Any:
        raise MisconfigurationException("`val_dataloader` must be implemented to be used with the Lightning Trainer")

    def test_dataloader(self) -> Any:
        raise MisconfigurationException("`test_dataloader` must be implemented to be used with the Lightning Trainer")

    def predict_dataloader(self) -> Any:
        raise MisconfigurationException(
            "`predict_dataloader` must be implemented to be used with the Lightning Trainer"
        )

    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints (plain data and tensors); empty: nothing is saved."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Reload what `state_dict` returned, from a checkpoint."""

    def on_exception(self, exception: BaseException) -> None:
        """Called when fit / validate / test / predict fails."""

    # -- construction from datasets -----------------------------------------------------------------------
    @classmethod
    def from_datasets(
        cls,
        train_dataset: Dataset | Iterable[Dataset] | None = None,
        val_dataset: Dataset | Iterable[Dataset] | None = None,
        test_dataset: Dataset | Iterable[Dataset] | None = None,
        predict_dataset: Dataset | Iterable[Dataset] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **datamodule_kwargs: Any,
    ) -> LightningDataModule:
        """A data module whose dataloaders serve these datasets (a dataset, or a list / dict of them)
        with `batch_size` and `num_workers`; the training one shuffled."""

        def dataloader(ds: Dataset, shuffle: bool = False) -> DataLoader:
            shuffle &= not isinstance(ds, IterableDataset)
            return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, pin_memory=True)

        def apply(datasets: Any, shuffle: bool = False) -> Any:
            if isinstance(datasets, Dataset):
                return dataloader(datasets, shuffle)
            if isinstance(datasets, Mapping):
                return {k: apply(v, shuffle) for k, v in datasets.items()}
            if isinstance(datasets, (list, tuple)):
                return type(datasets)(apply(v, shuffle) for v in datasets)
            return datasets

        params = inspect.signature(cls.__init__).parameters
        candidate = {"batch_size": batch_size, "num_workers": num_workers}
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            special = candidate
        else:
            special = {k: v for k, v in candidate.items() if k in params}
        datamodule = cls(**datamodule_kwargs, **special)
        for name, datasets, shuffle in (("train", train_dataset, True), ("val", val_dataset, False),
                                        ("test", test_dataset, False), ("predict", predict_dataset, False)):
            if datasets is not None:
                setattr(datamodule, f"{name}_dataloader", lambda d=datasets, s=shuffle: apply(d, s))
        return datamodule


def _collect_init_args(frame: Any, obj: Any) -> dict[str, Any]:
    """The arguments of the ``__init__`` calls on `obj` on the stack from `frame` outwards
    (a subclass's ``__init__`` calling ``super().__init__(...)``), the outermost winning; a
    ``**kwargs`` parameter is expanded."""
    found: list[dict[str, Any]] = []
    while frame is not None:
        code = frame.f_code
        local = frame.f_locals
        if code.co_name != "__init__" or local.get("self") is not obj:
            break
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        args = {k: local[k] for k in names if k != "self" and k in local}
        flags = code.co_flags
        var_kw = None
        if flags & inspect.CO_VARKEYWORDS:
            index = code.co_argcount + code.co_kwonlyargcount + (1 if flags & inspect.CO_VARARGS else 0)
            var_kw = code.co_varnames[index]
        if var_kw is not None and isinstance(local.get(var_kw), Mapping):
            args.update(local[var_kw])
        args = {k: v for k, v in args.items() if not k.startswith("__")}
        found.append(args)
        frame = frame.f_back
    merged: dict[str, Any] = {}
    for args in found:  # innermost first: an outer (subclass) __init__'s value wins
        merged.update(args)
    return merged
