"""Backend selection, the build report, and the pure-torch fallback of a checkout without the
compiled extension."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mopt_fast
from mopt_fast.registry import backend_for

CPU = torch.device("cpu")


def test_torch_backend_always_available():
    assert "torch" in mopt_fast.available_backends()
    assert mopt_fast.available_backends()[-1] == "torch"  # fastest first, fallback last


def test_compiled_backend_built_when_required():
    # `make test` sets this: a build that silently produced no extension must fail CI, not skip.
    if os.environ.get("MOPT_FAST_REQUIRE_COMPILED") != "1":
        pytest.skip("MOPT_FAST_REQUIRE_COMPILED is not set")
    info = mopt_fast.build_info()
    assert info["compiled"], info["reason"]
    assert "cpu" in mopt_fast.available_backends()


def test_default_is_fastest_for_cpu():
    expected = "cpu" if "cpu" in mopt_fast.available_backends() else "torch"
    if os.environ.get("MOPT_FAST_BACKEND"):
        pytest.skip("MOPT_FAST_BACKEND overrides the default")
    assert backend_for(CPU) == expected
    assert backend_for(torch.device("meta")) == "torch"


def _runs_cpu(name: str) -> bool:
    with mopt_fast.use_backend(name):
        try:
            return backend_for(CPU) == name
        except RuntimeError:  # a backend for other devices only
            return False


def test_use_backend_nests_and_restores():
    # Two different backends, each in turn outside: when the default is one of them, the other
    # as the outer one tells "restored the outer" from "back to the default".
    others = [b for b in mopt_fast.available_backends() if b != "torch" and _runs_cpu(b)]
    if not others:
        pytest.skip("no backend but 'torch' runs CPU tensors here (compiled CPU kernels not built)")
    before = backend_for(CPU)
    for outer, inner in (("torch", others[0]), (others[0], "torch")):
        with mopt_fast.use_backend(outer):
            assert backend_for(CPU) == outer
            with mopt_fast.use_backend(inner):
                assert backend_for(CPU) == inner
            assert backend_for(CPU) == outer  # the outer one is back after the inner exits
            with pytest.raises(KeyError, match="inner"):
                with mopt_fast.use_backend(inner):
                    assert backend_for(CPU) == inner
                    raise KeyError("inner")
            assert backend_for(CPU) == outer  # and after an exception inside the inner one
        assert backend_for(CPU) == before


def test_backend_refuses_other_devices():
    if "cpu" not in mopt_fast.available_backends():
        pytest.skip("compiled CPU backend not built")
    with mopt_fast.use_backend("cpu"):
        with pytest.raises(RuntimeError, match="runs cpu tensors, not meta"):
            mopt_fast.get_total_norm([torch.randn(3, device="meta")])


@pytest.mark.parametrize("name", ["cuda", "triton"])
def test_gpu_backends_say_why_they_are_missing(name):
    if name in mopt_fast.available_backends():
        pytest.skip(f"{name} is available here")
    with pytest.raises(RuntimeError, match="not available"):
        with mopt_fast.use_backend(name):
            pass


def run_python(code: str, env: dict, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_env_var_selects_backend():
    out = run_python("import torch, mopt_fast; print(mopt_fast.backend_for(torch.device('cpu')))",
                     {"MOPT_FAST_BACKEND": "torch"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch"


def test_checkout_without_extension_runs_on_torch(tmp_path):
    # A copy of the package with no compiled _C, as in a fresh source checkout.
    src = Path(mopt_fast.__file__).parent
    shutil.copytree(src, tmp_path / "mopt_fast", ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    code = (
        "import torch, mopt_fast\n"
        "g = torch.randn(1000)\n"
        "n = mopt_fast.get_total_norm([g])\n"
        "assert abs(n.item() - g.double().norm().item()) < 1e-3 * n.item()\n"
        "print(mopt_fast.available_backends(), mopt_fast.build_info()['compiled'])\n"
    )
    # MOPT_FAST_JIT=0: no compile on import (tests/test_install.py covers that).
    env = {"PYTHONPATH": str(tmp_path), "MOPT_FAST_BACKEND": "", "TRITON_INTERPRET": "0", "MOPT_FAST_JIT": "0",
           "MOPT_FAST_REQUIRE_COMPILED": ""}
    out = run_python(code, env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['torch'] False"
    assert "compiled kernels not built" in out.stderr and "pure-torch backend" in out.stderr


def test_version_has_one_source():
    """setup.py reads mopt_fast/_version.py; the installed metadata and the module agree."""
    import importlib.metadata

    assert importlib.metadata.version("mopt_fast") == mopt_fast.__version__ == mopt_fast.build_info()["version"]
