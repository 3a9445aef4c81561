"""Sphinx configuration: the Markdown pages in docs/, read with MyST-Parser.

Built by `make docs` with -W --keep-going: any warning (a dead link, a page in no toctree)
fails the build."""

project = "mopt_fast"
author = "mopt_fast contributors"
extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
# Links such as [text](page.md#a-heading) resolve to the heading's slug, as on a code host.
myst_heading_anchors = 3
# Code blocks without a language are shown as plain text, not lexed as Python.
highlight_language = "none"
html_theme = "alabaster"
html_static_path: list[str] = []
