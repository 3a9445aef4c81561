"""`CombinedLoader`: several iterables (a list, tuple or dict of DataLoaders, nested as needed)
drawn from together, as Lightning 2.6's ``lightning.pytorch.utilities.CombinedLoader``.

Each mode yields ``(batch, batch_idx, dataloader_idx)``:

- ``min_size``: one batch of every iterable (in the collection's structure) until the shortest
  runs out;
- ``max_size_cycle``: until the longest runs out, the shorter ones started again as they run out
  (what the Trainer does with several training loaders);
- ``max_size``: until the longest runs out, None in place of those already done;
- ``sequential``: each iterable's batches in turn, alone, ``batch_idx`` counted per iterable and
  ``dataloader_idx`` naming it (what the Trainer does with several evaluation loaders).

``len()`` is the mode's count (min, max, max or sum of the lengths, each capped by its entry of
``limits`` when set), defined once ``iter()`` was called, as Lightning's. The Trainer sets
``flattened`` (after wrapping each loader with a distributed sampler, ...) and ``limits``.
The collection is flattened with torch's pytree, leaves being anything that is not a container
and containers of plain numbers or strings (Lightning's rule), so the batch comes back in the
collection's own structure.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch.utils import _pytree as pytree

__all__ = ["CombinedLoader", "combined_length", "flatten_iterables", "sized_len"]

_INF = float("inf")


def sized_len(obj: Any) -> int | None:
    """`len(obj)`, or None where it has none (an iterable dataset's loader)."""
    try:
        return len(obj)
    except (TypeError, NotImplementedError):
        return None


def _lengths(iterables: list[Any]) -> list[int | float]:
    return [_INF if (n := sized_len(it)) is None else n for it in iterables]


def _is_leaf(tree: Any) -> bool:
    """Not a pytree container, or a container of plain numbers/strings (Lightning's
    `_is_leaf_or_primitive_container`: ``[1, 2, 3]`` is one iterable, not three)."""
    node_type = pytree._get_node_type(tree)
    if node_type not in pytree.SUPPORTED_NODES:
        return True
    children, _ = pytree.SUPPORTED_NODES[node_type].flatten_fn(tree)
    return all(isinstance(child, (int, float, str)) for child in children)


# torch 2.10+ builds a leaf spec with `treespec_leaf` (constructing LeafSpec warns there).
_LEAF = pytree.treespec_leaf() if hasattr(pytree, "treespec_leaf") else pytree.LeafSpec()


def flatten_iterables(tree: Any) -> tuple[list[Any], pytree.TreeSpec]:
    """The leaves of a collection of iterables, in order, and its structure (Lightning's `_tree_flatten`)."""
    if _is_leaf(tree):
        return [tree], _LEAF
    node_type = pytree._get_node_type(tree)
    children, context = pytree.SUPPORTED_NODES[node_type].flatten_fn(tree)
    flat: list[Any] = []
    specs = []
    for child in children:
        child_flat, child_spec = flatten_iterables(child)
        flat += child_flat
        specs.append(child_spec)
    return flat, pytree.TreeSpec(node_type, context, specs)


def combined_length(mode: str, iterables: list[Any], limits: list[int | float] | None) -> int | float:
    """The batches one pass in `mode` gives (inf: an iterable without a length decides it)."""
    lengths = _lengths(iterables)
    if mode == "min_size":
        return min(lengths + list(limits)) if limits is not None else min(lengths)
    if limits is not None:
        lengths = [min(n, limit) for n, limit in zip(lengths, limits)]
    return sum(lengths) if mode == "sequential" else max(lengths)


class _Pass(Iterator[tuple[Any, int, int]]):
    """One pass over the flattened iterables in a mode; yields (flat batch list, batch_idx, dataloader_idx)."""

    def __init__(self, iterables: list[Iterable], limits: list[int | float] | None) -> None:
        self.iterables = iterables
        self.limits = limits
        self.iterators: list[Iterator] = [iter(it) for it in iterables]
        self.idx = 0

    def _out(self, values: Any, dataloader_idx: int = 0) -> tuple[Any, int, int]:
        idx, self.idx = self.idx, self.idx + 1
        return values, idx, dataloader_idx


class _MinSize(_Pass):
    def __next__(self) -> tuple[Any, int, int]:
        return self._out([next(it) for it in self.iterators])


class _MaxSizeCycle(_Pass):
    def __init__(self, iterables: list[Iterable], limits: list[int | float] | None) -> None:
        super().__init__(iterables, limits)
        self.consumed = [False] * len(iterables)

    def __next__(self) -> tuple[Any, int, int]:
        values = []
        for i, it in enumerate(self.iterators):
            try:
                values.append(next(it))
            except StopIteration:
                self.consumed[i] = True
                if all(self.consumed):
                    raise
                self.iterators[i] = iter(self.iterables[i])  # start the shorter one again
                values.append(next(self.iterators[i]))
        return self._out(values)


class _MaxSize(_Pass):
    def __next__(self) -> tuple[Any, int, int]:
        values = [next(it, _DONE) for it in self.iterators]
        if all(v is _DONE for v in values):
            raise StopIteration
        return self._out([None if v is _DONE else v for v in values])


class _Sequential(_Pass):
    """One iterable at a time: only the current one holds an iterator (its workers alone run)."""

    def __init__(self, iterables: list[Iterable], limits: list[int | float] | None) -> None:
        self.iterables, self.limits = iterables, limits
        self.dataloader_idx = 0
        self.idx = 0
        self.iterators = [iter(iterables[0])] if iterables else []

    def _next_iterable(self) -> None:
        self.dataloader_idx += 1
        self.idx = 0
        self.iterators = [iter(self.iterables[self.dataloader_idx])] if self.dataloader_idx < len(self.iterables) else []

    def __next__(self) -> tuple[Any, int, int]:
        n = len(self.iterables)
        while self.dataloader_idx < n:
            if self.limits is not None and self.limits[self.dataloader_idx] <= self.idx:
                self._next_iterable()
                continue
            try:
                batch = next(self.iterators[0])
            except StopIteration:
                self._next_iterable()
                continue
            return self._out(batch, self.dataloader_idx)
        raise StopIteration


_DONE = object()
_MODES: dict[str, type[_Pass]] = {
    "min_size": _MinSize, "max_size_cycle": _MaxSizeCycle, "max_size": _MaxSize, "sequential": _Sequential,
}


class CombinedLoader(Iterable):
    """Draws from a collection of iterables in `mode` ("min_size", "max_size_cycle", "max_size" or
    "sequential"), as Lightning's CombinedLoader; see the module docstring."""

    def __init__(self, iterables: Any, mode: str = "min_size") -> None:
        if mode not in _MODES:
            raise ValueError(f"Unsupported mode {mode!r}, please select one of: {list(_MODES)}.")
        self._iterables = iterables
        self._flattened, self._spec = flatten_iterables(iterables)
        self._mode = mode
        self._iterator: _Pass | None = None
        self._limits: list[int | float] | None = None

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def iterables(self) -> Any:
        """The collection of iterables, in its own structure."""
        return self._iterables

    @property
    def flattened(self) -> list[Any]:
        """The iterables as a flat list (the order `dataloader_idx` counts in)."""
        return self._flattened

    @flattened.setter
    def flattened(self, flattened: list[Any]) -> None:
        if len(flattened) != len(self._flattened):
            raise ValueError(
                f"Mismatch in flattened length ({len(flattened)}) and existing length ({len(self._flattened)})"
            )
        self._iterables = pytree.tree_unflatten(flattened, self._spec)
        self._flattened = flattened

    def _map(self, fn: Callable[[Any], Any]) -> Any:
        return pytree.tree_unflatten([fn(it) for it in self._flattened], self._spec)

    @property
    def sampler(self) -> Any:
        """Each iterable's sampler (None where it has none), in the collection's structure."""
        return self._map(lambda it: getattr(it, "sampler", None))

    @property
    def batch_sampler(self) -> Any:
        return self._map(lambda it: getattr(it, "batch_sampler", None))

    @property
    def limits(self) -> list[int | float] | None:
        """The most batches taken from each iterable (None: no limit)."""
        return self._limits

    @limits.setter
    def limits(self, limits: int | float | list[int | float] | None) -> None:
        if isinstance(limits, (int, float)):
            limits = [limits] * len(self._flattened)
        elif isinstance(limits, list) and len(limits) != len(self._flattened):
            raise ValueError(
                f"Mismatch in number of limits ({len(limits)}) and number of iterables ({len(self._flattened)})"
            )
        self._limits = limits

    def __iter__(self) -> CombinedLoader:
        if self._limits is not None and len(self._limits) != len(self._flattened):
            raise ValueError(
                f"Mismatch in number of limits ({len(self._limits)}) and number of iterables ({len(self._flattened)})"
            )
        self._iterator = _MODES[self._mode](self._flattened, self._limits)
        return self

    def __next__(self) -> tuple[Any, int, int]:
        assert self._iterator is not None, "call iter() first"
        values, batch_idx, dataloader_idx = next(self._iterator)
        if self._mode == "sequential":
            return values, batch_idx, dataloader_idx
        return pytree.tree_unflatten(values, self._spec), batch_idx, dataloader_idx

    def __len__(self) -> int:
        """The batches of one pass (Lightning's: an error before ``iter()``)."""
        if self._iterator is None:
            raise RuntimeError("Please call `iter(combined_loader)` first.")
        return combined_length(self._mode, self._flattened, self._limits)  # type: ignore[return-value]

    def reset(self) -> None:
        """Forget the pass under way and stop the DataLoaders' worker processes."""
        self._iterator = None
        for it in self._flattened:
            inner = getattr(it, "_iterator", None)
            if inner is not None and hasattr(inner, "_shutdown_workers"):
                inner._shutdown_workers()
            if hasattr(it, "_iterator"):
                it._iterator = None
