"""Build of mopt_fast and its compiled kernels, mopt_fast._C, against the installed torch.

    pip install --no-build-isolation .

--no-build-isolation matters: the extension must be compiled against the torch you run with (the
C++ ABI of custom ops is tied to the torch version), and an isolated build would fetch a fresh
torch from the package index instead, often a multi-GB CUDA build.

Environment knobs:
  MOPT_FAST_CPU_ISA   auto (default) | default | avx2 | avx512 — the vector ISA of the CPU
                      kernels; auto picks avx2 when the build machine has it. The package refuses
                      to use kernels built for an ISA the running CPU lacks and falls back to torch.
  MOPT_FAST_DEBUG=1   build with -O0 -g.
"""
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:  # pragma: no cover - only hit on a misconfigured build
    sys.exit(
        "mopt_fast: torch must be installed before building (pip install torch), and the build "
        "must see it: use `pip install --no-build-isolation .`"
    )

ROOT = Path(__file__).parent

ISA_FLAGS = {
    "default": [],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": [
        "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
        "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
    ],
}


def host_cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_isa() -> str:
    isa = os.environ.get("MOPT_FAST_CPU_ISA", "auto").lower()
    if isa == "auto":
        # AVX2 rather than AVX-512 by default: these kernels are bandwidth-bound, and AVX2 builds
        # run on every x86-64 CPU of the last decade.
        return "avx2" if {"avx2", "fma", "f16c"} <= host_cpu_flags() else "default"
    if isa not in ISA_FLAGS:
        sys.exit(f"mopt_fast: MOPT_FAST_CPU_ISA={isa!r}; choose auto, {', '.join(ISA_FLAGS)}")
    return isa


def extensions():
    isa = cpu_isa()
    debug = os.environ.get("MOPT_FAST_DEBUG") == "1"
    sources = ["csrc/registry.cpp", "csrc/module.cpp"] + sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp")
    )
    cxx = (["-O0", "-g"] if debug else ["-O3"]) + ["-Wno-unknown-pragmas"]
    # -fopenmp: at::parallel_for is inlined into our code and runs on OpenMP like torch's own ops.
    cxx += ["-fopenmp", f'-DMOPT_FAST_CPU_ISA="{isa}"'] + ISA_FLAGS[isa]
    print(f"mopt_fast: building CPU kernels for ISA {isa} against torch {torch.__version__}")
    return [
        CppExtension(
            name="mopt_fast._C",
            sources=sources,
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    name="mopt_fast",
    version="0.1.0",
    description="Fused multi-tensor kernels for the work around optimizer.step()",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    # triton_kernels/ ships as mopt_fast.triton_kernels: a top-level `triton_kernels` would clash
    # with other packages of that name.
    packages=find_packages(include=["mopt_fast", "mopt_fast.*"]) + ["mopt_fast.triton_kernels"],
    package_dir={"mopt_fast.triton_kernels": "triton_kernels"},
    python_requires=">=3.10",
    install_requires=["torch>=2.4"],
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
