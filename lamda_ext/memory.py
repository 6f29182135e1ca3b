"""Memory budgets and the measurement of what a computation allocates.

- [`resolve_budget`][lamda_ext.memory.resolve_budget]: ``memory_budget`` as every entry point takes it (bytes, or
  ``"auto"``) → bytes.
- [`heap_reuse`][lamda_ext.memory.heap_reuse]: large CPU tensors served from the heap during a call (no page faults per
  tensor).
- [`AllocationTracker`][lamda_ext.memory.AllocationTracker]: a dispatch mode that follows every tensor the ops inside it
  create and reports the peak of the bytes alive at once (``peak``) and the bytes allocated in all (``total``),
  both counted from zero at entry (tensors that existed before — the model, its inputs — are not counted).
  It also counts the floating-point operations of matrix products, convolutions and attention with the
  formulas of `torch.utils.flop_counter`, from which plans express their cost in forward passes.
"""
from __future__ import annotations

import contextlib
import os
import weakref
from typing import Union

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

__all__ = ["AUTO_FRACTION", "Budget", "resolve_budget", "available_bytes", "AllocationTracker", "format_bytes",
           "heap_reuse"]

Budget = Union[int, str, None]

# share of the free memory that memory_budget="auto" grants one call: the rest stays for the allocator's
# rounding and fragmentation, the caller's own tensors and whatever else runs in the process
AUTO_FRACTION = 0.5


def available_bytes(device: torch.device) -> int:
    """Free memory of ``device``: ``torch.cuda.mem_get_info`` on a GPU, available system memory otherwise.

    System memory is ``MemAvailable`` of ``/proc/meminfo`` on Linux, else free pages times the page size.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def resolve_budget(memory_budget: Budget, device: torch.device) -> int:
    """Bytes a call may allocate.

    ``memory_budget`` itself (an int ≥ 1), or for ``"auto"`` (and None)
    [`AUTO_FRACTION`][lamda_ext.memory.AUTO_FRACTION] of [`available_bytes`][lamda_ext.memory.available_bytes] at the
    time of the call.
    """
    if memory_budget is None or (isinstance(memory_budget, str) and memory_budget == "auto"):
        return int(AUTO_FRACTION * available_bytes(device))
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or isinstance(
            memory_budget, float) and not memory_budget.is_integer():
        raise TypeError(f"memory_budget must be a number of bytes (int) or 'auto', got {memory_budget!r}")
    if memory_budget < 1:
        raise ValueError(f"memory_budget must be ≥ 1 byte (or 'auto'), got {memory_budget}")
    return int(memory_budget)


def format_bytes(n: float) -> str:
    """``1536`` → ``"1.5 KiB"``; binary units up to TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _storage_key(t: torch.Tensor):
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):   # tensors without storage (meta, sparse)
        return None
    return (t.device, st.data_ptr()) if st.data_ptr() else None


class AllocationTracker(TorchDispatchMode):
    """Follow the storages created inside the mode.

    ``peak`` (bytes alive at once), ``total`` (bytes allocated) and ``flops`` (of the matrix products, convolutions and
    attention kernels, by the formulas `torch.utils.flop_counter.FlopCounterMode` uses).

    A storage counts from the op that creates it (an output that does not alias an input) until the last
    tensor object referring to it is garbage; outputs that alias an input (views, in-place ops) keep an
    already-counted storage alive and add nothing. Tensors that autograd saves for a backward pass outlive
    their Python objects, so under grad mode ``peak`` undercounts and ``total`` is the bound to use.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.total = 0
        self.flops = 0
        self._refs: dict = {}          # storage key -> [nbytes, tensor objects alive]

    def _release(self, key) -> None:
        ref = self._refs.get(key)
        if ref is None:
            return
        ref[1] -= 1
        if ref[1] == 0:
            self.live -= ref[0]
            del self._refs[key]

    def _follow(self, t: torch.Tensor, key) -> None:
        self._refs[key][1] += 1
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.flops += int(count(*args, **kwargs, out_val=out))
        inputs = {k for k in (_storage_key(a) for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor))
                  if k is not None}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            key = _storage_key(t)
            if key is None:
                continue
            if key in self._refs:              # a view or in-place result of a storage made in here
                self._follow(t, key)
            elif key not in inputs:            # a fresh allocation
                nbytes = t.untyped_storage().nbytes()
                self._refs[key] = [nbytes, 0]
                self.live += nbytes
                self.total += nbytes
                self.peak = max(self.peak, self.live)
                self._follow(t, key)
        return out


# glibc's malloc options (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# what glibc's dynamic thresholds settle at once large blocks have been freed (DEFAULT_MMAP_THRESHOLD_MAX on
# 64-bit systems; the trim threshold follows at twice the mmap threshold)
_SETTLED_MMAP, _SETTLED_TRIM = 32 * 2**20, 64 * 2**20
_LIBC = None


def _glibc():
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        try:
            import ctypes
            import ctypes.util
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
                _LIBC = libc
        except OSError:
            pass
    return _LIBC or None


@contextlib.contextmanager
def heap_reuse(device: torch.device):
    """Serve large CPU tensors from the heap while the block runs, then return the freed memory to the system.

    glibc's malloc maps every block above 32 MiB fresh from the kernel and unmaps it when freed, so each large
    tensor of a Taylor-mode call (the K-fold tangent batches) pays a page fault per 4 KiB page on first touch —
    several times the arithmetic of a 1×1 convolution. Inside the block the mmap and trim thresholds are raised
    so that freed blocks are reused; on exit they return to the values glibc's own adjustment settles at
    (32 MiB, 64 MiB) and ``malloc_trim(0)`` hands the free pages back. No effect off glibc, on a GPU, or with
    ``LAMDA_HEAP_REUSE=0``.
    """
    libc = _glibc() if device.type == "cpu" and os.environ.get("LAMDA_HEAP_REUSE", "1") != "0" else None
    if libc is None:
        yield
        return
    big = 2**31 - 1
    libc.mallopt(_M_MMAP_THRESHOLD, big)
    libc.mallopt(_M_TRIM_THRESHOLD, big)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _SETTLED_MMAP)
        libc.mallopt(_M_TRIM_THRESHOLD, _SETTLED_TRIM)
        libc.malloc_trim(0)
