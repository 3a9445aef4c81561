"""``mopt_fast.plugins``: the plugins ``Trainer(plugins=...)`` takes, under the import path of
``lightning.pytorch.plugins``: the precision plugins and the checkpoint IO interface. Lightning's
plugins that mopt_fast does not build raise `mopt_fast.exceptions.NotBuiltError` naming them."""
from __future__ import annotations

from typing import Any

from mopt_fast.exceptions import not_built
from mopt_fast.plugins.io import CheckpointIO, TorchCheckpointIO
from mopt_fast.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

__all__ = ["CheckpointIO", "DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision", "TorchCheckpointIO"]

_NOT_BUILT = ("AsyncCheckpointIO", "XLACheckpointIO", "BitsandbytesPrecision", "DeepSpeedPrecision",
              "TransformerEnginePrecision", "FSDPPrecision", "XLAPrecision", "LayerSync", "TorchSyncBatchNorm")


def __getattr__(name: str) -> Any:
    if name in _NOT_BUILT:
        raise not_built(f"lightning.pytorch.plugins.{name}",
                        "use sync_batchnorm=True" if name in ("LayerSync", "TorchSyncBatchNorm") else "")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
