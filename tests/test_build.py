"""The extension build: build_info(), the module flags, and the CMake/ctest C++ tests."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest
import torch

from lamda_ext import _ext

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_build_info_keys_and_consistency():
    info = _ext.build_info()
    assert {"cpu", "cuda_compiled", "cuda_available", "torch"} <= set(info)
    assert info["torch"] == torch.__version__
    assert all(isinstance(info[k], bool) for k in ("cpu", "cuda_compiled", "cuda_available"))
    assert info["cpu"] == _ext.available()
    assert info["cuda_available"] == (info["cuda_compiled"] and torch.cuda.is_available())
    if not info["cpu"]:
        assert info["extension_error"], "an unavailable extension must say why"


@pytest.mark.skipif(not _ext.available(), reason=f"extension lamda_ext._C not built: {_ext.load_error()}")
def test_extension_registers_every_op():
    import lamda_ext._C as C

    assert C.cuda_compiled in (0, 1)
    for name in ("taylor_unary", "taylor_unary_backward", "taylor_cross_entropy", "taylor_cross_entropy_backward",
                 "taylor_cross_entropy_deg1", "taylor_cross_entropy_deg1_backward"):
        op = getattr(torch.ops.lamda_ext, name)
        assert op.default._schema.name == f"lamda_ext::{name}"
        # a CPU kernel is always registered, a CUDA kernel exactly when compiled in
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.default.name(), "CPU")
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.default.name(), "CUDA") == bool(C.cuda_compiled)


def _cmake_build(tmp_path: pathlib.Path, *args: str, timeout: int) -> None:
    if shutil.which("cmake") is None or shutil.which("ctest") is None:
        pytest.skip("cmake/ctest not installed")
    build = tmp_path / "cmake-build"
    run = lambda cmd: subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    cfg = run(["cmake", "-S", str(REPO), "-B", str(build), *args])
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    out = run(["cmake", "--build", str(build), "-j", str(min(2, os.cpu_count() or 1))])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    test = run(["ctest", "--test-dir", str(build), "--output-on-failure"])
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-3000:]
    assert "100% tests passed" in test.stdout


def test_cpp_recurrences_ctest(tmp_path):
    """Header-only C++ test of the recurrences (no libtorch: about a second)."""
    _cmake_build(tmp_path, "-DLAMDA_EXT_BUILD_LIBRARY=OFF", timeout=300)


def test_cmake_libtorch_build_and_ctest(tmp_path):
    """The op library built against libtorch with CMake, plus a dispatcher test.

    Unoptimised (``-O0``): the same sources, link and dispatch, with the kernels compiled in less time.
    """
    _cmake_build(tmp_path, f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", "-DCMAKE_BUILD_TYPE=Debug",
                 "-DCMAKE_CXX_FLAGS_DEBUG=-O0", timeout=900)
