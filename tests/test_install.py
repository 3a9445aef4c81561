"""How an install gets its compiled kernels (mopt_fast/_extension.py): the just-in-time build on first
import when no ahead-of-time mopt_fast._C loads, and the pure-torch fallback, with its one warning,
when no build can be had. Each test imports a copy of the installed package without its _C in a
fresh process. The install as a user types it (a fresh venv, `pip install .`, `pip wheel .`) is
checked by .ci/install-check, a step of .ci/run."""
import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mopt_fast
from mopt_fast import _extension

# A kernel call checked against torch, and what the import made of the kernels.
CHECK = (
    "import torch, mopt_fast\n"
    "g = torch.randn(1000)\n"
    "n = mopt_fast.get_total_norm([g])\n"
    "assert abs(n.item() - g.double().norm().item()) < 1e-3 * n.item()\n"
    "info = mopt_fast.build_info()\n"
    "print(info['compiled'], info['build'], mopt_fast.available_backends())\n"
)


def package_copy(root: Path, with_sources: bool = True) -> Path:
    """A copy of the installed package without a compiled _C, as a pure-Python wheel installs it:
    with its C++ sources in mopt_fast/_csrc, or without any."""
    src = Path(mopt_fast.__file__).parent
    shutil.copytree(src, root / "mopt_fast", ignore=shutil.ignore_patterns("_C.*.so", "__pycache__", "_csrc"))
    if with_sources:
        csrc = _extension.csrc_dir()
        assert csrc is not None, "the installed package has no C++ sources"
        shutil.copytree(csrc, root / "mopt_fast" / "_csrc")
    return root


def run_python(code: str, root: Path, **env: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "MOPT_FAST_BACKEND": "",
        "MOPT_FAST_REQUIRE_COMPILED": "",
        "MOPT_FAST_CACHE_DIR": str(root / "cache"),
        "TRITON_INTERPRET": "0",
        **env,
    }
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=900)


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "UserWarning: mopt_fast:" in line]


def test_no_compiler_warns_once_with_cause_and_fix(tmp_path):
    out = run_python(CHECK, package_copy(tmp_path), CXX="/nonexistent/g++")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "None", "['torch']"]
    [warning] = warnings_in(out.stderr)
    assert "no C++ compiler" in warning and "/nonexistent/g++" in warning, warning
    assert "apt-get install g++" in warning and "--no-build-isolation" in warning, warning
    assert "Using the pure-torch backend" in warning
    assert "compiling" not in out.stderr  # nothing started


def test_require_compiled_turns_the_warning_into_an_error(tmp_path):
    out = run_python(CHECK, package_copy(tmp_path), CXX="/nonexistent/g++", MOPT_FAST_REQUIRE_COMPILED="1")
    assert out.returncode != 0
    assert "ImportError: mopt_fast: compiled kernels not built; no C++ compiler" in out.stderr, out.stderr
    assert "MOPT_FAST_REQUIRE_COMPILED=1" in out.stderr
    assert not warnings_in(out.stderr)


def test_failed_compile_names_the_error_and_the_log(tmp_path):
    # A compiler that runs and fails: the build starts (one progress line) and its error is reported.
    out = run_python(CHECK, package_copy(tmp_path), CXX="/bin/false", MAX_JOBS="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "None", "['torch']"]
    assert out.stderr.count("mopt_fast: compiling the CPU kernels for torch") == 1, out.stderr
    [warning] = warnings_in(out.stderr)
    assert "compiling the CPU kernels against torch" in warning and "failed" in warning, warning
    assert "build.log" in warning and "/bin/false" in warning, warning
    logs = list((tmp_path / "cache").glob("*/build.log"))
    assert len(logs) == 1 and "/bin/false" in logs[0].read_text()
    assert not list((tmp_path / "cache").glob("*/built"))  # the next import tries again


def test_broken_source_names_the_compiler_error(tmp_path):
    root = package_copy(tmp_path)
    first = root / "mopt_fast" / "_csrc" / "registry.cpp"  # compiled first: fails within seconds
    first.write_text("#error broken on purpose\n" + first.read_text())
    out = run_python(CHECK, root, MAX_JOBS="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "None", "['torch']"]
    [warning] = warnings_in(out.stderr)
    assert "failed (" in warning and "broken on purpose" in warning and "build.log" in warning, warning
    [log] = (tmp_path / "cache").glob("*/build.log")
    assert "registry.cpp" in log.read_text()


def test_jit_off_and_no_sources_say_so(tmp_path):
    off = run_python(CHECK, package_copy(tmp_path / "a"), MOPT_FAST_JIT="0")
    assert off.returncode == 0, off.stderr
    [warning] = warnings_in(off.stderr)
    assert "compiled kernels not built" in warning and "MOPT_FAST_JIT=0" in warning, warning
    bare = run_python(CHECK, package_copy(tmp_path / "b", with_sources=False))
    assert bare.returncode == 0, bare.stderr
    [warning] = warnings_in(bare.stderr)
    assert "no C++ sources" in warning and "--no-build-isolation" in warning, warning


def test_a_compiled_module_that_does_not_load_is_named(tmp_path):
    # As a _C built against another torch: it fails to load (registering nothing), the JIT build
    # is tried next (here without a compiler), and the warning names both.
    root = package_copy(tmp_path)
    (root / "mopt_fast" / f"_C{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"not a shared library")
    out = run_python(CHECK, root, CXX="/nonexistent/g++")
    assert out.returncode == 0, out.stderr
    [warning] = warnings_in(out.stderr)
    assert "the compiled kernels mopt_fast._C do not load" in warning and "no C++ compiler" in warning, warning


def test_old_torch_is_refused_before_compiling(monkeypatch):
    monkeypatch.setattr(_extension, "_torch_minor", lambda: (2, 10))
    with pytest.raises(_extension.BuildError, match=r"older than 2\.11.*pip install 'torch>=2\.11'"):
        _extension.jit_plan()


def test_cache_folder_is_per_torch_python_and_isa(monkeypatch, tmp_path):
    monkeypatch.setenv("MOPT_FAST_CACHE_DIR", str(tmp_path))
    if _extension.csrc_dir() is None:
        pytest.skip("this install has no C++ sources")
    folder = _extension.jit_plan()[0]
    assert folder.parent == tmp_path
    import torch

    assert folder.name.startswith(f"{mopt_fast.__version__}-torch{torch.__version__}-{sys.implementation.cache_tag}-")
    monkeypatch.setenv("MOPT_FAST_CPU_ISA", "default")
    assert "-default-" in _extension.jit_plan()[0].name
    monkeypatch.delenv("MOPT_FAST_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _extension.jit_plan()[0].parent == tmp_path / "xdg" / "mopt_fast"


@pytest.mark.slow
def test_processes_importing_at_once_compile_once(tmp_path):
    """Two processes (as DDP ranks) importing with a cold cache: torch's lock lets one compile
    while the other waits, and both load the result; a third import loads it from the cache."""
    root = package_copy(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(root), "MOPT_FAST_BACKEND": "", "MOPT_FAST_REQUIRE_COMPILED": "1",
           "MOPT_FAST_CACHE_DIR": str(root / "cache"), "TRITON_INTERPRET": "0"}
    procs = [subprocess.Popen([sys.executable, "-c", CHECK], env=env, cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr
        assert stdout.strip() == "True jit ['cpu', 'torch']", stdout
    [folder] = (root / "cache").iterdir()
    # ninja's log: each object and the library built once.
    targets = [line.split("\t")[3] for line in (folder / ".ninja_log").read_text().splitlines()[1:]]
    assert sorted(targets) == sorted(set(targets)) and "mopt_fast_C.so" in targets, targets
    assert (folder / "built").is_file()
    third = run_python(CHECK, root, MOPT_FAST_REQUIRE_COMPILED="1", CXX="/nonexistent/g++")
    assert third.returncode == 0, third.stderr
    assert third.stdout.strip() == "True jit ['cpu', 'torch']", third.stdout
    assert "compiling" not in third.stderr
