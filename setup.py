"""Build lamda_ext: the core package, its C++/CUDA extension ``lamda_ext._C``,
and the research layer ``lamda`` (sources in ``python/lamda/``).

    pip install --no-build-isolation .

Environment:
    LAMDA_EXT_CUDA=auto|0|1   compile the CUDA kernels (auto: when a CUDA toolkit
                              and a CUDA build of torch are present)
    TORCH_CUDA_ARCH_LIST      target GPUs; defaults to "8.0;9.0" when no GPU is visible
    MAX_JOBS                  parallel compile jobs (ninja)
"""
import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _cuda_home():
    """The CUDA toolkit root: torch's guess, else /usr/local/cuda, provided it has the runtime headers and library.

    torch guesses CUDA_HOME from the directory of `nvcc` on PATH, which is wrong when that nvcc is a
    wrapper script (e.g. /usr/local/bin/nvcc -> /usr/local/cuda-13.0/bin/nvcc gives /usr/local).
    """
    import torch.utils.cpp_extension as cpp_ext

    def ok(home):
        return home and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")) and any(
            os.path.exists(os.path.join(home, lib, "libcudart.so")) for lib in ("lib64", "lib"))

    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), CUDA_HOME, "/usr/local/cuda"):
        if ok(home):
            cpp_ext.CUDA_HOME = home  # torch's build helpers read this module global for nvcc and -L paths
            return home
    return None


def _want_cuda() -> bool:
    flag = os.environ.get("LAMDA_EXT_CUDA", "auto").strip().lower()
    if flag not in ("auto", "0", "1"):
        raise SystemExit(f"LAMDA_EXT_CUDA must be auto, 0 or 1, got {flag!r}")
    if flag == "0":
        return False
    available = _cuda_home() is not None and torch.version.cuda is not None
    if flag == "1" and not available:
        raise SystemExit("LAMDA_EXT_CUDA=1 but no CUDA toolkit (CUDA_HOME) or no CUDA build of torch was found")
    return flag != "0" and available


def _extension():
    rel = lambda pattern: sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    # no -std flag: torch's cpp_extension adds the standard its own headers need (C++20 for torch 2.14,
    # C++17 for 2.11, the torch of the lent GPU machine)
    cxx = ["-O3", "-Wall", "-Wswitch", "-Werror=switch"]   # a kind missing from a switch over kinds fails
    define = []
    if _want_cuda():
        if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        define.append(("LAMDA_EXT_WITH_CUDA", "1"))
        return CUDAExtension(
            "lamda_ext._C", sources + rel("csrc/cuda/*.cu"),
            include_dirs=[os.path.join(HERE, "csrc")], define_macros=define,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr", "-Xcompiler", "-Wall",
                                                "-Xcompiler", "-Werror=switch"]},
        )
    return CppExtension("lamda_ext._C", sources, include_dirs=[os.path.join(HERE, "csrc")],
                        define_macros=define, extra_compile_args={"cxx": cxx})


core = find_packages(include=["lamda_ext", "lamda_ext.*"])
research = find_packages(where="python", include=["lamda", "lamda.*"])

setup(
    name="lamda_ext",
    version="0.1.0",
    description="Geometry of neural-network losses: batched higher-order directional derivatives, "
                "the curvature rate lambda, Hessian spectra, and the research layer built on them",
    packages=core + research,
    package_dir={"lamda": "python/lamda"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "torchvision", "numpy", "scipy", "matplotlib", "tqdm", "scikit-learn"],
    # pytest < 9: pytest-xdist 3.8 groups tests (--dist loadgroup) by renaming their ids, which pytest 9 ignores
    extras_require={"test": ["pytest>=8,<9", "pytest-benchmark", "pytest-timeout", "pytest-xdist", "hypothesis", "ruff",
                             "transformers", "curvlinops-for-pytorch"],
                    # Hugging Face models and batches (lamda_ext.batches uses them without importing transformers)
                    "hf": ["transformers"],
                    # peers of benchmarks/test_bench_spectra.py only (skipped when missing); never a runtime dependency
                    "bench": ["pyhessian", "hessian-eigenthings", "curvlinops-for-pytorch"],
                    # the documentation site: `mkdocs build --strict` (docs/about-docs.md)
                    "docs": ["mkdocs-material", "mkdocstrings[python]"]},
    entry_points={"console_scripts": ["lamda=lamda.cli:main"]},
    zip_safe=False,
)
