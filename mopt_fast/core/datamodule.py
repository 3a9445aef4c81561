"""mopt_fast.LightningDataModule: Lightning 2.6's data module (``lightning.pytorch.LightningDataModule``).

The data of a run in one object: `prepare_data` (once per node, before anything else), `setup(stage)`
and `teardown(stage)` around every `fit` / `validate` / `test` / `predict`, the four
``*_dataloader`` hooks, `state_dict` / `load_state_dict` (saved in checkpoints under the class's
qualified name), `on_exception`, and hyperparameters through `save_hyperparameters` (logged with
the module's, and saved in checkpoints as ``datamodule_hyper_parameters``). Pass it as
``trainer.fit(model, datamodule=dm)`` or positionally, ``trainer.fit(model, dm)``.
"""
from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Iterable, Mapping, Sized
from typing import IO, TYPE_CHECKING, Any

from torch.utils.data import DataLoader, Dataset, IterableDataset

from mopt_fast.core.hooks import DataHooks
from mopt_fast.core.hparams import HyperparametersMixin, _build_from_checkpoint, _restricted_classmethod
from mopt_fast.core.saving import _read_checkpoint
from mopt_fast.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from mopt_fast.core.protocol import TrainerProtocol

__all__ = ["LightningDataModule", "datamodule_base", "is_datamodule"]


class LightningDataModule(DataHooks, HyperparametersMixin):
    """Subclass it and override the hooks you need; see the module docstring."""

    name: str | None = None
    CHECKPOINT_HYPER_PARAMS_KEY = "datamodule_hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "datamodule_hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "datamodule_hparams_type"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.trainer: TrainerProtocol | None = None
        self.prepare_data_per_node = True
        self.allow_zero_length_dataloader_with_multiple_devices = False

    # -- checkpoints -----------------------------------------------------------------------------------
    @_restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike | IO,
        map_location: Any = None,
        hparams_file: str | os.PathLike | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """A new data module of this class from a checkpoint: ``__init__`` gets the hyperparameters
        it stores (``"datamodule_hyper_parameters"``; `kwargs` override or add to them, `hparams_file`
        replaces them), then `load_state_dict` gets its saved state, as Lightning's."""
        if not (isinstance(cls, type) and issubclass(cls, LightningDataModule)):  # as LightningModule's
            raise NotImplementedError(f"Unsupported {cls}")
        checkpoint = _read_checkpoint(checkpoint_path, map_location, weights_only, hparams_file,
                                      key=cls.CHECKPOINT_HYPER_PARAMS_KEY)
        checkpoint.setdefault(cls.CHECKPOINT_HYPER_PARAMS_KEY, {}).update(kwargs)
        datamodule = _build_from_checkpoint(cls, checkpoint, kwargs)
        if cls.__qualname__ in checkpoint:
            datamodule.load_state_dict(checkpoint[cls.__qualname__])
        return datamodule

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

    def __str__(self) -> str:
        """Each dataloader hook's dataset sizes, one line each, as Lightning's ``str(datamodule)``:
        ``{Train dataloader: size=64}``, ``None`` for a hook that fails (or is not defined), and
        ``1. size=8 ; 2. size=4`` for a list of loaders."""
        return _describe_loaders(self)

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


class _DatasetInfo:
    """One loader's line in ``str(datamodule)``: whether the hook gave one, and its dataset's size."""

    def __init__(self, available: bool, length: str) -> None:
        self.available = available
        self.length = length


def _loader_info(loader: Any) -> Any:
    """Each DataLoader of `loader` (nested in lists, tuples, dicts) as a `_DatasetInfo`; anything else
    as it is (Lightning's ``apply_to_collection(loader, DataLoader, ...)``)."""
    if isinstance(loader, DataLoader):
        size = str(len(loader.dataset)) if isinstance(loader.dataset, Sized) else "NA"
        return _DatasetInfo(True, size)
    if isinstance(loader, Mapping):
        return type(loader)({k: _loader_info(v) for k, v in loader.items()})  # type: ignore[call-arg]
    if isinstance(loader, (list, tuple)):
        return type(loader)(_loader_info(v) for v in loader)
    return loader


def _describe_loaders(datamodule: Any) -> str:
    """Lightning's `LightningDataModule.__str__`, line for line."""
    lines = []
    for label, hook in (("Train dataloader", "train_dataloader"), ("Validation dataloader", "val_dataloader"),
                        ("Test dataloader", "test_dataloader"), ("Predict dataloader", "predict_dataloader")):
        try:
            info = _loader_info(getattr(datamodule, hook)())
        except Exception:  # Lightning shows any failure of the hook as "None"
            info = _DatasetInfo(False, "")
        if isinstance(info, _DatasetInfo):
            text = "None" if not info.available else f"size={info.length}"
        else:
            text = " ; ".join("None" if not item.available else f"{i}. size={item.length}"
                              for i, item in enumerate(info, start=1))
        lines.append(f"{{{label}: {text}}}")
    return os.linesep.join(lines)


def _lightning_datamodule_class(obj: Any) -> type | None:
    """Lightning's `LightningDataModule` class when `obj` is one of its instances. Looked up only in
    `sys.modules`: a script that brought such an object has imported Lightning already, and
    mopt_fast must not import it (an optional dependency)."""
    for package in ("lightning.pytorch", "pytorch_lightning"):
        module = sys.modules.get(package)
        cls = getattr(module, "LightningDataModule", None) if module is not None else None
        if isinstance(cls, type) and isinstance(obj, cls):
            return cls
    return None


def datamodule_base(obj: Any) -> type | None:
    """The data-module base class `obj` derives from (ours, or Lightning's for a data module written
    on ``lightning.pytorch.LightningDataModule``): what `is_overridden` compares its hooks with.
    None when `obj` is not a data module."""
    if isinstance(obj, LightningDataModule):
        return LightningDataModule
    return _lightning_datamodule_class(obj)


def is_datamodule(obj: Any) -> bool:
    """`obj` is a data module: mopt_fast's or Lightning's (see `datamodule_base`)."""
    return datamodule_base(obj) is not None
