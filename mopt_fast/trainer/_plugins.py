"""``Trainer(plugins=...)``: Lightning's plugin argument, sorted into what the Trainer uses.

Accepted, one of each kind at most (Lightning's rule and messages):
- a precision plugin: mopt_fast's (`mopt_fast.plugins.Precision` and subclasses) or Lightning's
  own ``Precision``, ``MixedPrecision``, ``HalfPrecision`` and ``DoublePrecision``, which become
  mopt_fast's plugin of the same setting (so the step keeps its fused kernels); not together with
  ``precision=``;
- a checkpoint IO plugin (mopt_fast's `CheckpointIO` or Lightning's): every checkpoint save, load
  and removal goes through it;
- Lightning's ``TorchSyncBatchNorm`` layer sync: ``sync_batchnorm=True``.
Lightning's plugins that need machinery mopt_fast does not have (cluster environments, quantized
or sharded precisions, asynchronous checkpoint IO, a subclass of Lightning's precision classes
that changes what they do) raise NotBuiltError naming them; anything else is Lightning's
MisconfigurationException.
"""
from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from typing import Any

from mopt_fast.amp import GradScaler
from mopt_fast.exceptions import MisconfigurationException, not_built
from mopt_fast.plugins.io import CheckpointIO
from mopt_fast.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from mopt_fast.trainer._lightning_surface import lightning_classes

__all__ = ["Plugins", "parse_plugins"]

# Lightning's precision classes that carry nothing but a setting: taken as mopt_fast's plugin of it.
_PLAIN_PRECISIONS = ("Precision", "MixedPrecision", "HalfPrecision", "DoublePrecision")


@dataclasses.dataclass
class Plugins:
    precision: Precision | None = None
    checkpoint_io: Any = None
    sync_batchnorm: bool = False


def _lightning(module: str, name: str) -> tuple[type, ...]:
    return lightning_classes(module, name)


def _is_exactly_lightning(plugin: Any, name: str) -> bool:
    return type(plugin) in _lightning("plugins.precision", name) + _lightning("plugins", name)


def _is_ours_for_lightning(plugin: Any, name: str) -> bool:
    """Exactly mopt_fast.lightning's plugin `name` (made for Lightning's Trainer; loaded only when
    the user imported it)."""
    module = sys.modules.get("mopt_fast.lightning")
    return module is not None and type(plugin) is getattr(module, name, None)


def _precision_of_lightning(plugin: Any, accelerator: str) -> Precision:
    """mopt_fast's plugin for one of Lightning's plain precision plugins (same setting), or for
    mopt_fast.lightning's (same setting, same step guard): a script that moves from Lightning's
    Trainer to mopt_fast's keeps its plugins."""
    guard = plugin.step_guard if any(_is_ours_for_lightning(plugin, n) for n in _PLAIN_PRECISIONS) else None
    if _is_exactly_lightning(plugin, "MixedPrecision") or _is_ours_for_lightning(plugin, "MixedPrecision"):
        theirs = getattr(plugin, "scaler", None)
        device = getattr(plugin, "device", accelerator)
        scaler = None
        if theirs is not None:  # the same settings and state on mopt_fast's fused scaler
            scaler = GradScaler(device)
            scaler.load_state_dict(theirs.state_dict())
        return MixedPrecision(plugin.precision, device, scaler, step_guard=guard)
    if _is_exactly_lightning(plugin, "HalfPrecision") or _is_ours_for_lightning(plugin, "HalfPrecision"):
        return HalfPrecision(plugin.precision, step_guard=guard)
    if _is_exactly_lightning(plugin, "DoublePrecision"):
        return DoublePrecision()
    if _is_exactly_lightning(plugin, "Precision") or _is_ours_for_lightning(plugin, "Precision"):
        return Precision(step_guard=guard)
    raise not_built(
        f"Lightning's precision plugin `{type(plugin).__name__}` in mopt_fast.Trainer",
        "pass `precision=` (32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, 64-true), one of Lightning's "
        f"{', '.join(_PLAIN_PRECISIONS)} as they are, or subclass mopt_fast.plugins.Precision")


def _kind(plugin: Any) -> str:
    """Lightning's name for the plugin's kind, or a NotBuiltError / MisconfigurationException."""
    if isinstance(plugin, str):
        raise not_built(f"`Trainer(plugins={plugin!r})` (a plugin by its registered name)",
                        "pass the plugin object")
    if isinstance(plugin, Precision):
        return "Precision"
    if isinstance(plugin, _lightning("plugins.precision", "Precision")):
        return "LightningPrecision"
    if isinstance(plugin, _lightning("plugins", "AsyncCheckpointIO")):
        raise not_built("Lightning's `AsyncCheckpointIO` in mopt_fast.Trainer", "pass a synchronous CheckpointIO")
    if isinstance(plugin, (CheckpointIO, *_lightning("plugins", "CheckpointIO"))):
        return "CheckpointIO"
    if _lightning("plugins.environments", "ClusterEnvironment") and isinstance(
            plugin, _lightning("plugins.environments", "ClusterEnvironment")):
        raise not_built(f"the cluster environment plugin `{type(plugin).__name__}` in mopt_fast.Trainer",
                        "start the processes with torchrun: the Trainer reads its environment variables")
    if isinstance(plugin, _lightning("plugins", "LayerSync")):
        return "LayerSync"
    raise MisconfigurationException(
        f"Found invalid type for plugin {plugin}. Expected one of: Precision, CheckpointIO, ClusterEnvironment, or "
        "LayerSync."
    )


def parse_plugins(plugins: Any, precision_flag: Any, sync_batchnorm: bool, accelerator: str) -> Plugins:
    """What `plugins` (None, one plugin or a list) sets, with Lightning's checks: one plugin of
    each kind, and not both ``precision=`` and a precision plugin."""
    parsed = Plugins(sync_batchnorm=sync_batchnorm)
    if plugins is None:
        return parsed
    counts: Counter[str] = Counter()
    precision_given: Any = None
    given = plugins if isinstance(plugins, (list, tuple)) else [plugins]
    for plugin in given:
        kind = _kind(plugin)
        if kind in ("Precision", "LightningPrecision"):
            parsed.precision = plugin if kind == "Precision" else _precision_of_lightning(plugin, accelerator)
            precision_given = plugin
            counts["Precision"] += 1
        elif kind == "CheckpointIO":
            parsed.checkpoint_io = plugin
            counts["CheckpointIO"] += 1
        else:  # LayerSync
            if not _is_exactly_lightning(plugin, "TorchSyncBatchNorm"):
                if sync_batchnorm:
                    raise MisconfigurationException(
                        f"You set `Trainer(sync_batchnorm=True)` and provided a `{type(plugin).__name__}`"
                        " plugin, but this is not allowed. Choose one or the other."
                    )
                raise not_built(f"the layer sync plugin `{type(plugin).__name__}` in mopt_fast.Trainer",
                                "use `sync_batchnorm=True` (torch's SyncBatchNorm)")
            parsed.sync_batchnorm = True
            counts["TorchSyncBatchNorm"] += 1
    duplicated = [kind for kind, n in counts.items() if n > 1]
    if duplicated:
        raise MisconfigurationException(
            f"Received multiple values for {', '.join(duplicated)} flags in `plugins`."
            " Expected one value for each type at most."
        )
    if counts["Precision"] and precision_flag is not None:
        raise ValueError(f"Received both `precision={precision_flag}` and `plugins={precision_given}`. Choose one.")
    return parsed
