"""RichModelSummary: `ModelSummary`'s table drawn with `rich` (Lightning 2.6's
``lightning.pytorch.callbacks.RichModelSummary``; ``pip install rich``).

The same layers, columns and totals as `ModelSummary`, printed to rich's console (stdout) as a
table and a grid of totals. rich is imported when the callback is made: without it, a
ModuleNotFoundError naming it.
"""
from __future__ import annotations

__all__ = ["RichModelSummary"]

from typing import Any

from mopt_fast.callbacks.model_summary import ModelSummary, get_human_readable_count


class RichModelSummary(ModelSummary):
    """`max_depth`: the deepest layers shown (0: none, -1: all); `summarize_kwargs` go to
    `summarize` (``header_style``: the header's rich style, "bold magenta" by default)."""

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        try:
            import rich  # noqa: F401 (only whether it is there)
        except ImportError:
            raise ModuleNotFoundError(
                "`RichModelSummary` requires `rich` to be installed. Install it by running `pip install -U rich`."
            ) from None
        super().__init__(max_depth, **summarize_kwargs)

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        """Prints the layers' table, then the totals, on rich's console."""
        from rich import get_console
        from rich.table import Table

        headers = [header for header, _ in summary_data]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        table.add_column(" ", style="dim")
        table.add_column("Name", justify="left", no_wrap=True)
        table.add_column("Type")
        table.add_column("Params", justify="right")
        if "Params per Device" in headers:
            table.add_column("Params per Device", justify="right")
        table.add_column("Mode")
        table.add_column("FLOPs", justify="right")
        for size_header in ("In sizes", "Out sizes"):
            if size_header in headers:
                table.add_column(size_header, justify="right", style="white")
        for row in zip(*(cells for _, cells in summary_data)):
            table.add_row(*row)
        console = get_console()
        console.print(table)

        def padded(text: str) -> str:
            return f"{text:<10}"

        totals = Table.grid(expand=True)
        totals.add_column()
        totals.add_column()
        for label, value in (
            ("Trainable params", padded(get_human_readable_count(int(trainable_parameters)))),
            ("Non-trainable params", padded(get_human_readable_count(int(total_parameters - trainable_parameters)))),
            ("Total params", padded(get_human_readable_count(int(total_parameters)))),
            ("Total estimated model params size (MB)", padded(f"{model_size:,.3f}")),
            ("Modules in train mode", total_training_modes["train"]),
            ("Modules in eval mode", total_training_modes["eval"]),
            ("Total FLOPs", get_human_readable_count(total_flops)),
        ):
            totals.add_row(f"[bold]{label}[/]: {value}")
        console.print(totals)
