"""The README and docs/*.md cannot drift from the code: every ```python block runs here.

A page is a tutorial: its blocks run in order in one namespace, in a subprocess of their own
(cwd a temporary folder). A block that cannot run on this machine is marked just before it with
``<!-- docs-test: skip (the reason) -->``: it is reported as a skipped test with that reason, and a
marker without a reason fails. A block marked ``<!-- docs-test: signatures -->`` lists functions
with their signatures; each is compared with ``inspect.signature``. Shell blocks are not run, but
the ``make`` targets and ``python`` scripts they name must exist, and so must the repository
paths the pages name and the files the README links to."""
from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import pathlib
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

import mopt_fast

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PAGE_TIMEOUT_S = 180

MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>[\w-]+)\s*(?:\((?P<reason>[^)]*)\))?\s*-->\s*$")
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<info>\S*)")
SHELL = {"", "bash", "sh", "shell", "console"}
KINDS = {"skip", "signatures"}


@dataclass
class Block:
    page: str  # relative to the repository root
    line: int  # the first line of code, 1-based
    lang: str
    code: str
    kind: str | None = None  # the docs-test marker before it, if any
    reason: str = ""


def parse(text: str, page: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown text, with their markers, and what is wrong with the markers."""
    blocks: list[Block] = []
    problems: list[str] = []
    lines = text.splitlines()
    marker: tuple[int, str, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m, f = MARKER.match(line), FENCE.match(line)
        if m:
            if marker:
                problems.append(f"{page}:{marker[0]}: docs-test marker not followed by a code block")
            marker = (i + 1, m["kind"], (m["reason"] or "").strip())
        elif f:
            fence, body = f["fence"], []
            i += 1
            block = Block(page, i + 1, f["info"].lower(), "")
            while i < len(lines) and not lines[i].startswith(fence):
                body.append(lines[i])
                i += 1
            block.code = "\n".join(body)
            if marker:
                _, block.kind, block.reason = marker
                marker = None
            blocks.append(block)
        elif line.strip() and marker:
            problems.append(f"{page}:{marker[0]}: docs-test marker not followed by a code block")
            marker = None
        i += 1
    if marker:
        problems.append(f"{page}:{marker[0]}: docs-test marker not followed by a code block")
    for b in blocks:
        where = f"{b.page}:{b.line}"
        if b.kind is not None and b.kind not in KINDS:
            problems.append(f"{where}: unknown docs-test marker {b.kind!r} (known: {sorted(KINDS)})")
        if b.kind == "skip" and not b.reason:
            problems.append(f"{where}: docs-test: skip without a reason; write <!-- docs-test: skip (why) -->")
        if b.kind is not None and b.lang != "python":
            problems.append(f"{where}: docs-test marker on a {b.lang or 'plain'} block (only python blocks run)")
    return blocks, problems


def _page_blocks() -> dict[str, list[Block]]:
    return {str(p.relative_to(ROOT)): parse(p.read_text(), str(p.relative_to(ROOT)))[0] for p in PAGES}


BLOCKS = _page_blocks()
RUN = {page: [b for b in bs if b.lang == "python" and b.kind is None] for page, bs in BLOCKS.items()}
RUN = {page: bs for page, bs in RUN.items() if bs}
SKIPPED = [b for bs in BLOCKS.values() for b in bs if b.lang == "python" and b.kind == "skip"]
SIGNATURES = [b for bs in BLOCKS.values() for b in bs if b.lang == "python" and b.kind == "signatures"]

# Runs one page's blocks in order in one namespace; a traceback names the page and its line.
RUNNER = """
import json, sys
page, blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for line, code in blocks:
    exec(compile("\\n" * (line - 1) + code, page, "exec"), namespace)
    print(f"docs-test: {page}:{line} ran", flush=True)
"""


def test_the_pages_are_found() -> None:
    names = {p.name for p in PAGES}
    assert {"README.md", "index.md", "kernels.md", "lightning.md"} <= names, names
    assert sum(len(bs) for bs in RUN.values()) >= 8, {page: len(bs) for page, bs in RUN.items()}


def test_markers_are_well_formed() -> None:
    problems = [p for page in PAGES for p in parse(page.read_text(), str(page.relative_to(ROOT)))[1]]
    assert not problems, "\n".join(problems)


def test_the_parser_reads_markers_and_refuses_a_skip_without_reason() -> None:
    text = "\n".join([
        "# A page", "", "<!-- docs-test: skip (needs a CUDA GPU) -->", "```python", "import x", "```", "",
        "<!-- docs-test: skip -->", "```python", "y = 1", "```", "", "```bash", "make demo", "```",
        "<!-- docs-test: skip (why) -->", "Some text, no block.", "", "```python", "z = 2", "```",
    ])
    blocks, problems = parse(text, "page.md")
    assert [(b.line, b.lang, b.kind, b.reason) for b in blocks] == [
        (5, "python", "skip", "needs a CUDA GPU"), (10, "python", "skip", ""), (14, "bash", None, ""),
        (20, "python", None, ""),
    ]
    assert problems == ["page.md:16: docs-test marker not followed by a code block",
                        "page.md:10: docs-test: skip without a reason; write <!-- docs-test: skip (why) -->"]


def _start(page: str, folder: pathlib.Path) -> subprocess.Popen:
    blocks = RUN[page]
    (folder / "blocks.json").write_text(json.dumps([str(ROOT / page), [[b.line, b.code] for b in blocks]]))
    (folder / "runner.py").write_text(RUNNER)
    env = dict(os.environ)
    # The mopt_fast these tests import (an install or the tree), and no display for matplotlib.
    package_parent = str(pathlib.Path(mopt_fast.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env["MPLBACKEND"] = "Agg"
    (folder / "run").mkdir()
    with open(folder / "stdout", "w") as out, open(folder / "stderr", "w") as err:
        return subprocess.Popen([sys.executable, str(folder / "runner.py"), str(folder / "blocks.json")],
                                cwd=folder / "run", env=env, stdout=out, stderr=err, text=True)


@pytest.fixture(scope="module")
def page_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Every selected page starts at once (each mostly imports torch and waits on its own), so the
    pages take about as long as the slowest, not their sum."""
    selected = [item.callspec.params["page"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_page_examples_run"]
    runs = {page: (_start(page, folder := tmp_path_factory.mktemp("docs-page")), folder) for page in selected}
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("page", sorted(RUN))
def test_page_examples_run(page: str, page_runs: dict) -> None:
    """The page's python blocks, in order, in one namespace, as a reader would run them."""
    proc, folder = page_runs[page]
    try:
        proc.wait(timeout=PAGE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    blocks = RUN[page]
    stdout, stderr = (folder / "stdout").read_text(), (folder / "stderr").read_text()
    ran = stdout.count("docs-test: ")
    assert proc.returncode == 0, (
        f"{page}: the block at line {blocks[min(ran, len(blocks) - 1)].line} failed or timed out after"
        f" {PAGE_TIMEOUT_S} s (exit {proc.returncode}; {ran} of {len(blocks)} ran before it):\n" + stderr[-6000:])
    assert ran == len(blocks), stdout


if SKIPPED:
    @pytest.mark.parametrize("block", SKIPPED, ids=[f"{b.page}:{b.line}" for b in SKIPPED])
    def test_skipped_block(block: Block) -> None:
        """Each skipped block is reported, with its reason, in the skip summary."""
        pytest.skip(f"docs example {block.page}:{block.line}: {block.reason}")


def _signature_entries(code: str) -> list[tuple[str, str]]:
    """(dotted name, argument list) of each `mopt_fast.name(args) -> result` line, continuation
    lines joined."""
    entries, statement = [], ""
    for line in code.splitlines():
        line = line.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        statement = f"{statement} {line.strip()}" if statement else line.strip()
        if statement.count("(") > statement.count(")"):
            continue
        m = re.match(r"^(mopt_fast(?:\.\w+)+)\((.*)\)\s*(?:->.*)?$", statement)
        if m:
            entries.append((m[1], m[2]))
        statement = ""
    return entries


@pytest.mark.parametrize("block", SIGNATURES, ids=[f"{b.page}:{b.line}" for b in SIGNATURES])
def test_listed_signatures_match_the_code(block: Block) -> None:
    entries = _signature_entries(block.code)
    assert entries, f"{block.page}:{block.line}: no `mopt_fast.name(args)` lines"
    wrong = []
    for dotted, args in entries:
        module, _, name = dotted.rpartition(".")
        obj = getattr(importlib.import_module(module), name)
        if args.strip() == "...":
            assert callable(obj), dotted
            continue
        listed = ast.parse(f"def f({args}): pass").body[0].args  # type: ignore[attr-defined]
        names = [a.arg for a in listed.args]
        defaults = dict(zip(names[len(names) - len(listed.defaults):],
                            (ast.literal_eval(d) for d in listed.defaults)))
        params = inspect.signature(obj).parameters
        actual = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
        if names != list(params) or defaults != actual:
            wrong.append(f"{dotted}({args}) in the docs, {dotted}{inspect.signature(obj)} in the code")
    assert not wrong, "\n".join(wrong)


# Public names documented on other pages than the kernels' API listing (the Lightning front).
_DOCUMENTED_ELSEWHERE = {"seed_everything", "MisconfigurationException"}


def test_the_api_listing_names_every_public_function() -> None:
    """A function added to mopt_fast's kernel layer is listed with its signature (and so checked)."""
    listed = {dotted for b in SIGNATURES for dotted, _ in _signature_entries(b.code)}
    front = set(mopt_fast._FRONT) | _DOCUMENTED_ELSEWHERE
    missing = sorted(f"mopt_fast.{n}" for n in mopt_fast.__all__ if n not in front and f"mopt_fast.{n}" not in listed)
    assert not missing, f"not in the API listing of docs/kernels.md: {missing}"


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m[1] for m in re.finditer(r"^([\w.-]+)\s*:(?!=)", text, re.M)}


_PATH = re.compile(r"^(?:tests|benchmarks|examples|mopt_fast|csrc|triton_kernels|docs|\.ci)/[\w./-]+$")


def test_shell_commands_and_paths_name_what_exists() -> None:
    """`make X` and `python file.py` in shell blocks and inline code name a real target and file;
    an inline repository path (`tests/test_x.py`) names a real file or folder."""
    targets, wrong = _make_targets(), []
    for page in PAGES:
        rel = str(page.relative_to(ROOT))
        text = page.read_text()
        shell = [b.code for b in BLOCKS[rel] if b.lang in SHELL]
        spans = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.M | re.S))
        for snippet in shell + spans:
            for cmd in snippet.splitlines():
                cmd = cmd.split("#", 1)[0]
                for target in re.findall(r"(?:^|[;&|]\s*)make\s+([\w-]+)", cmd.strip()):
                    if target not in targets:
                        wrong.append(f"{rel}: `make {target}`: no such Makefile target")
                for script in re.findall(r"\bpython3?\s+(?:-\S+\s+)*([\w./-]+\.py)\b", cmd):
                    if not (ROOT / script).is_file():
                        wrong.append(f"{rel}: `python {script}`: no such file")
        for span in spans:
            if _PATH.match(span) and not (ROOT / span).exists():
                wrong.append(f"{rel}: `{span}`: no such path")
    assert not wrong, "\n".join(wrong)


def _slug(heading: str) -> str:
    """A heading's anchor as a code host makes it."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_readme_links_resolve() -> None:
    """The README's relative links (Sphinx checks the docs pages' own, in `make docs`)."""
    readme = ROOT / "README.md"
    wrong = []
    for target in re.findall(r"\]\(([^)\s]+)\)", readme.read_text()):
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / path) if path else readme
        if not file.exists():
            wrong.append(f"README.md: link to {target}: no such file")
        elif anchor:
            headings = re.findall(r"^#+\s+(.*)$", file.read_text(), re.M)
            if anchor not in {_slug(h) for h in headings}:
                wrong.append(f"README.md: link to {target}: no such heading")
    assert not wrong, "\n".join(wrong)
