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
  MOPT_FAST_CUDA      auto (default) | 0 — build the CUDA kernels when torch is a CUDA build and
                      nvcc is found; 0 builds the CPU kernels only.
  TORCH_CUDA_ARCH_LIST  GPU architectures of the CUDA kernels; default "8.0;9.0" (sm_80, sm_90).
"""
import os
import re
import sys
from pathlib import Path

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
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


def with_cuda() -> bool:
    if os.environ.get("MOPT_FAST_CUDA", "auto") == "0":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def _sources(folder: str, pattern: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / folder).glob(pattern))


def extensions():
    isa = cpu_isa()
    debug = os.environ.get("MOPT_FAST_DEBUG") == "1"
    sources = ["csrc/registry.cpp", "csrc/autograd.cpp", "csrc/module.cpp"] + _sources("cpu", "*.cpp")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = opt + ["-Wno-unknown-pragmas"]
    # -fopenmp: at::parallel_for is inlined into our code and runs on OpenMP like torch's own ops.
    cxx += ["-fopenmp", f'-DMOPT_FAST_CPU_ISA="{isa}"'] + ISA_FLAGS[isa]
    args = {"cxx": cxx}
    ext = CppExtension
    if with_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += _sources("cuda", "*.cu") + _sources("cuda", "*.cpp")
        cxx.append("-DMOPT_FAST_WITH_CUDA")
        args["nvcc"] = opt + ["-std=c++17", "-lineinfo"]
        ext = CUDAExtension
        print(f"mopt_fast: building CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    print(f"mopt_fast: building CPU kernels for ISA {isa} against torch {torch.__version__}")
    return [
        ext(
            name="mopt_fast._C",
            sources=sources,
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args=args,
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    name="mopt_fast",
    # Read, not imported: importing mopt_fast needs the extension this build makes.
    version=re.search(r'__version__ = "([^"]+)"', (ROOT / "mopt_fast" / "_version.py").read_text()).group(1),
    description="Fused multi-tensor kernels for the work around optimizer.step()",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    # triton_kernels/ ships as mopt_fast.triton_kernels: a top-level `triton_kernels` would clash
    # with other packages of that name.
    packages=find_packages(include=["mopt_fast", "mopt_fast.*"]) + ["mopt_fast.triton_kernels"],
    package_dir={"mopt_fast.triton_kernels": "triton_kernels"},
    # The op set's one declaration: included by the C++ sources, read by mopt_fast/_ops.py.
    package_data={"mopt_fast": ["ops.h"]},
    python_requires=">=3.10",
    license="BSD-3-Clause",
    # The torch CI builds and tests against (README: Supported); the C++ ops are tied to it.
    # PyYAML: the loggers' hparams.yaml, written as Lightning writes it.
    install_requires=["torch>=2.13", "tqdm>=4.57", "PyYAML>=5.4"],
    # mopt_fast.lightning subclasses Lightning's precision plugins and relies on how its loops call
    # them (_after_closure, train_step_context): the minor version the tests run against.
    # torchmetrics: Metric objects in self.log (never imported by mopt_fast itself).
    # cli: mopt_fast.cli.LightningCLI parses arguments and configs with jsonargparse, as Lightning's.
    extras_require={
        "tensorboard": ["tensorboard>=2.9"],
        "lightning": ["lightning>=2.6,<2.7"],
        "torchmetrics": ["torchmetrics>=1.0"],
        "cli": ["jsonargparse[signatures]>=4.39"],
    },
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
