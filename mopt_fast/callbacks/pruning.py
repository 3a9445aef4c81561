"""ModelPruning (Lightning 2.6's ``lightning.pytorch.callbacks.ModelPruning``): prunes the module's
parameters with `torch.nn.utils.prune` at the end of training epochs (or validation epochs).

Each pruning adds torch's reparametrization (``<name>_orig`` and ``<name>_mask``); the amount and
whether to prune may follow a schedule (callables of the epoch). With the lottery-ticket
hypothesis the unpruned weights go back to their values from before training (or freshly sampled
ones). With `make_pruning_permanent` the masks are applied for good when training ends, and every
checkpoint holds the pruned weights under their plain names.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from copy import deepcopy
from functools import partial
from typing import TYPE_CHECKING, Any, TypedDict

import torch.nn.utils.prune as pytorch_prune
from torch import Tensor, nn

from mopt_fast.callbacks.callback import Callback, log
from mopt_fast.core.module import LightningModule
from mopt_fast.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from mopt_fast.core.protocol import CallbackTrainer

__all__ = ["ModelPruning"]

_PRUNING_FUNCTIONS: dict[str, Callable] = {
    "ln_structured": pytorch_prune.ln_structured, "l1_unstructured": pytorch_prune.l1_unstructured,
    "random_structured": pytorch_prune.random_structured, "random_unstructured": pytorch_prune.random_unstructured,
}
_PRUNING_METHODS: dict[str, type[pytorch_prune.BasePruningMethod]] = {
    "ln_structured": pytorch_prune.LnStructured, "l1_unstructured": pytorch_prune.L1Unstructured,
    "random_structured": pytorch_prune.RandomStructured, "random_unstructured": pytorch_prune.RandomUnstructured,
}

ParamList = Sequence[tuple[nn.Module, str]]


class _LayerRef(TypedDict):
    data: nn.Module  # the layer as it was before training
    names: list[tuple[int, str]]  # its entries in parameters_to_prune: (index, parameter name)


def _is_container(module: nn.Module) -> bool:
    """Modules that only hold others (their parameters are their children's): never pruned as such.
    A LightningModule is one, mopt_fast's or Lightning's."""
    if isinstance(module, (LightningModule, nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return True
    return any(c.__name__ == "LightningModule" and c.__module__.startswith(("lightning.", "pytorch_lightning."))
               for c in type(module).__mro__)


def _is_pruning_method(method: Any) -> bool:
    return inspect.isclass(method) and issubclass(method, pytorch_prune.BasePruningMethod)


class ModelPruning(Callback):
    """Prunes the module's parameters during training.

    Args:
        pruning_fn: "l1_unstructured", "random_unstructured", "ln_structured", "random_structured",
            or a `BasePruningMethod` subclass (global unstructured pruning only).
        parameters_to_prune: ``(module, parameter name)`` pairs; empty: every `parameter_names`
            parameter of every layer.
        parameter_names: "weight" and/or "bias".
        use_global_unstructured: prune across all the parameters at once (else each on its own).
        amount: a fraction (float) or a count (int) to prune, or a callable of the epoch giving one.
        apply_pruning: whether to prune, or a callable of the epoch saying so.
        make_pruning_permanent: apply the masks for good at the end of training and in checkpoints.
        use_lottery_ticket_hypothesis: after pruning, reset the remaining weights to their values
            before training (or a callable of the epoch saying whether to).
        resample_parameters: ... to freshly sampled values instead (``reset_parameters``).
        pruning_dim, pruning_norm: the structured methods' ``dim`` and ``n``.
        verbose: 0 quiet, 1 the overall sparsity, 2 also each parameter's.
        prune_on_train_epoch_end: prune at the end of the training epoch (else of validation).
    """

    PARAMETER_NAMES = ("weight", "bias")

    def __init__(self, pruning_fn: Callable | str, parameters_to_prune: ParamList = (),
                 parameter_names: list[str] | None = None, use_global_unstructured: bool = True,
                 amount: int | float | Callable[[int], int | float] = 0.5,
                 apply_pruning: bool | Callable[[int], bool] = True, make_pruning_permanent: bool = True,
                 use_lottery_ticket_hypothesis: bool | Callable[[int], bool] = True,
                 resample_parameters: bool = False, pruning_dim: int | None = None, pruning_norm: int | None = None,
                 verbose: int = 0, prune_on_train_epoch_end: bool = True) -> None:
        self._use_global_unstructured = use_global_unstructured
        self._parameters_to_prune = parameters_to_prune
        self._use_lottery_ticket_hypothesis = use_lottery_ticket_hypothesis
        self._resample_parameters = resample_parameters
        self._prune_on_train_epoch_end = prune_on_train_epoch_end
        self._parameter_names = parameter_names or self.PARAMETER_NAMES
        self._global_kwargs: dict[str, Any] = {}
        self._original_layers: dict[int, _LayerRef] | None = None
        self._pruning_method_name: str | None = None
        for name in self._parameter_names:
            if name not in self.PARAMETER_NAMES:
                raise MisconfigurationException(
                    f"The provided `parameter_names` name: {name} isn't in {self.PARAMETER_NAMES}"
                )
        if isinstance(pruning_fn, str):
            pruning_fn = self._resolve_pruning_name(pruning_fn.lower(), pruning_dim, pruning_norm)
        elif _is_pruning_method(pruning_fn):
            if not use_global_unstructured:
                raise MisconfigurationException(
                    "PyTorch `BasePruningMethod` is currently only supported with `use_global_unstructured=True`."
                )
        else:
            raise MisconfigurationException(
                f"`pruning_fn` is expected to be a str in {list(_PRUNING_FUNCTIONS)}"
                f" or a PyTorch `BasePruningMethod`. Found: {pruning_fn}."
                " HINT: if passing a `BasePruningMethod`, pass the class, not an instance"
            )
        kind = getattr(pruning_fn, "PRUNING_TYPE", None)  # a method class's
        if use_global_unstructured and kind != "unstructured":
            raise MisconfigurationException(
                'Only the "unstructured" PRUNING_TYPE is supported with `use_global_unstructured=True`.'
                f" Found method {pruning_fn} of type {kind}. "
            )
        self.pruning_fn = pruning_fn
        self._apply_pruning = apply_pruning
        self._make_pruning_permanent = make_pruning_permanent
        if not (isinstance(amount, (int, float)) or callable(amount)):
            raise MisconfigurationException(
                "`amount` should be provided and be either an int, a float or Callable function."
            )
        self.amount = amount
        if verbose not in (0, 1, 2):
            raise MisconfigurationException("`verbose` must be any of (0, 1, 2)")
        self._verbose = verbose

    def _resolve_pruning_name(self, name: str, dim: int | None, norm: int | None) -> Callable:
        """torch's pruning function `name` (or, for global pruning, its method class), with its
        structured arguments."""
        if name not in _PRUNING_FUNCTIONS:
            raise MisconfigurationException(
                f"The provided `pruning_fn` {name} isn't available in PyTorch's"
                f" built-in functions: {list(_PRUNING_FUNCTIONS)} "
            )
        kwargs: dict[str, Any] = {}
        if name.endswith("_structured"):
            if dim is None:
                raise MisconfigurationException(
                    "When requesting `structured` pruning, the `pruning_dim` should be provided."
                )
            if name == "ln_structured":
                if norm is None:
                    raise MisconfigurationException(
                        "When requesting `ln_structured` pruning, the `pruning_norm` should be provided."
                    )
                kwargs["n"] = norm
            kwargs["dim"] = dim
        return self._create_pruning_fn(name, **kwargs)

    def filter_parameters_to_prune(self, parameters_to_prune: ParamList = ()) -> ParamList:
        """Override to choose which of the (module, name) pairs to prune."""
        return parameters_to_prune

    def _create_pruning_fn(self, pruning_fn: str, **kwargs: Any) -> Callable:
        """The method class for global pruning (its arguments kept for `global_unstructured`),
        else the function with its arguments bound."""
        if self._use_global_unstructured:
            method = _PRUNING_METHODS[pruning_fn]
            self._global_kwargs = kwargs
            self._pruning_method_name = method.__name__
            return method
        function = _PRUNING_FUNCTIONS[pruning_fn]
        self._pruning_method_name = function.__name__
        return partial(function, **kwargs)

    def make_pruning_permanent(self, module: nn.Module) -> None:
        """Applies the masks for good: torch's reparametrization (``_orig``, ``_mask``, the hook)
        removed from every pruned submodule."""
        for _, submodule in module.named_modules():
            for key in list(submodule._forward_pre_hooks):
                hook = submodule._forward_pre_hooks[key]
                if isinstance(hook, pytorch_prune.BasePruningMethod):
                    hook.remove(submodule)
                    del submodule._forward_pre_hooks[key]

    @staticmethod
    def _copy_param(new: nn.Module, old: nn.Module, name: str) -> None:
        dst = getattr(new, name + "_orig") if hasattr(new, name + "_orig") else getattr(new, name)
        src = getattr(old, name)
        if isinstance(dst, Tensor) and isinstance(src, Tensor):
            dst.data = src.data.to(dst.device)

    def apply_lottery_ticket_hypothesis(self) -> None:
        """The lottery ticket's step 4: the pruned parameters' remaining values back to their
        values before training (freshly sampled ones with `resample_parameters`)."""
        assert self._original_layers is not None
        for ref in self._original_layers.values():
            original = ref["data"]
            if self._resample_parameters and callable(getattr(original, "reset_parameters", None)):
                original = deepcopy(original)  # the kept copy stays as it was
                original.reset_parameters()  # type: ignore[operator]
            for i, name in ref["names"]:
                module, _ = self._parameters_to_prune[i]
                self._copy_param(module, original, name)

    def _apply_local_pruning(self, amount: int | float) -> None:
        for module, name in self._parameters_to_prune:
            self.pruning_fn(module, name=name, amount=amount)

    def _resolve_global_kwargs(self, amount: int | float) -> dict[str, Any]:
        """The method's arguments that its constructor takes (``amount`` and the structured ones)."""
        self._global_kwargs["amount"] = amount
        accepted = set(inspect.signature(self.pruning_fn).parameters) - {"self"}
        return {k: v for k, v in self._global_kwargs.items() if k in accepted}

    def _apply_global_pruning(self, amount: int | float) -> None:
        pytorch_prune.global_unstructured(self._parameters_to_prune, pruning_method=self.pruning_fn,
                                          **self._resolve_global_kwargs(amount))

    @staticmethod
    def _get_pruned_stats(module: nn.Module, name: str) -> tuple[int, int]:
        """(pruned entries, entries) of the parameter; (0, 1) before it is first pruned."""
        mask = getattr(module, f"{name}_mask", None)
        if mask is None:
            return 0, 1
        return int((mask == 0).sum().item()), mask.numel()

    def apply_pruning(self, amount: int | float) -> None:
        """Prunes `parameters_to_prune` by `amount` (verbose: the sparsity before and after, on
        Lightning's console logger)."""
        before = [self._get_pruned_stats(m, n) for m, n in self._parameters_to_prune] if self._verbose else []
        if self._use_global_unstructured:
            self._apply_global_pruning(amount)
        else:
            self._apply_local_pruning(amount)
        if self._verbose:
            after = [self._get_pruned_stats(m, n) for m, n in self._parameters_to_prune]
            self._log_sparsity_stats(before, after, amount=amount)

    def _log_sparsity_stats(self, prev: list[tuple[int, int]], curr: list[tuple[int, int]],
                            amount: int | float = 0) -> None:
        total = sum(n for _, n in curr)
        prev_zeros = sum(z for z, _ in prev)
        curr_zeros = sum(z for z, _ in curr)
        log.info(f"Applied `{self._pruning_method_name}`. Pruned:"
                 f" {prev_zeros}/{total} ({prev_zeros / total:.2%}) -> {curr_zeros}/{total} ({curr_zeros / total:.2%})")
        if self._verbose == 2:
            for (module, name), (prev_z, prev_n), (curr_z, curr_n) in zip(self._parameters_to_prune, prev, curr):
                log.info(f"Applied `{self._pruning_method_name}` to `{module!r}.{name}` with amount={amount}. Pruned:"
                         f" {prev_z} ({prev_z / prev_n:.2%}) -> {curr_z} ({curr_z / curr_n:.2%})")

    def setup(self, trainer: CallbackTrainer, pl_module: LightningModule, stage: str) -> None:
        parameters = self.sanitize_parameters_to_prune(pl_module, self._parameters_to_prune,
                                                       parameter_names=self._parameter_names)
        self._parameters_to_prune = self.filter_parameters_to_prune(parameters)
        if self._use_lottery_ticket_hypothesis:
            # A copy of each layer as it is now, for the lottery ticket's reset.
            self._original_layers = {}
            for i, (module, name) in enumerate(self._parameters_to_prune):
                ref = self._original_layers.setdefault(id(module), _LayerRef(data=deepcopy(module), names=[]))
                ref["names"].append((i, name))

    def _run_pruning(self, current_epoch: int) -> None:
        prune = self._apply_pruning(current_epoch) if callable(self._apply_pruning) else self._apply_pruning
        amount = self.amount(current_epoch) if callable(self.amount) else self.amount
        if not prune or not amount:
            return
        self.apply_pruning(amount)
        lottery = self._use_lottery_ticket_hypothesis
        if lottery(current_epoch) if callable(lottery) else lottery:
            self.apply_lottery_ticket_hypothesis()

    def on_train_epoch_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if self._prune_on_train_epoch_end:
            log.debug("`ModelPruning.on_train_epoch_end`. Applying pruning")
            self._run_pruning(pl_module.current_epoch)

    def on_validation_epoch_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and not self._prune_on_train_epoch_end:
            log.debug("`ModelPruning.on_validation_epoch_end`. Applying pruning")
            self._run_pruning(pl_module.current_epoch)

    def on_train_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if self._make_pruning_permanent:
            log.debug("`ModelPruning.on_train_end`. Pruning is made permanent for this checkpoint")
            self.make_pruning_permanent(pl_module)

    def _make_pruning_permanent_on_state_dict(self, pl_module: LightningModule) -> dict[str, Any]:
        """The module's state dict with each pruned tensor as ``mask * orig`` under its plain name, on the CPU."""
        state_dict = pl_module.state_dict()
        for name in {k[:-len("_mask")] for k in state_dict if k.endswith("_mask")}:
            orig = state_dict.pop(name + "_orig")
            mask = state_dict.pop(name + "_mask")
            state_dict[name] = mask.to(dtype=orig.dtype) * orig
        return {k: v.cpu() if isinstance(v, Tensor) else v for k, v in state_dict.items()}

    def on_save_checkpoint(self, trainer: CallbackTrainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._make_pruning_permanent:
            log.debug("`ModelPruning.on_save_checkpoint`. Pruning is made permanent for this checkpoint")
            checkpoint["state_dict"] = self._make_pruning_permanent_on_state_dict(pl_module)

    @staticmethod
    def sanitize_parameters_to_prune(pl_module: nn.Module, parameters_to_prune: ParamList = (),
                                     parameter_names: Sequence[str] = ()) -> ParamList:
        """The (module, name) pairs to prune: every `parameter_names` parameter of every layer when
        none are given, else the given ones, checked to be in the module."""
        names = parameter_names or ModelPruning.PARAMETER_NAMES
        layers = [m for m in pl_module.modules() if not _is_container(m)]
        if not parameters_to_prune:
            return [(m, p) for p in names for m in layers if isinstance(getattr(m, p, None), nn.Parameter)]
        if (isinstance(parameters_to_prune, (list, tuple)) and all(len(p) == 2 for p in parameters_to_prune)
                and all(isinstance(a, nn.Module) and isinstance(b, str) for a, b in parameters_to_prune)):
            missing_modules = [m for m, _ in parameters_to_prune if m not in layers]
            missing_parameters = [n for m, n in parameters_to_prune if m in layers and not hasattr(m, n)]
            if missing_modules or missing_parameters:
                raise MisconfigurationException(
                    "Some provided `parameters_to_prune` don't exist in the model."
                    f" Found missing modules: {missing_modules} and missing parameters: {missing_parameters}"
                )
            return parameters_to_prune
        raise MisconfigurationException(
            "The provided `parameters_to_prune` should either be list of tuple"
            " with 2 elements: (nn.Module, parameter_name_to_prune) or None"
        )
