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
from torch._subclasses.fake_tensor import FakeTensor
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
    if isinstance(t, FakeTensor):                 # tracing on fake tensors allocates nothing
        return None
    try:
        st = t.untyped_storage()
        ptr = st.data_ptr()
    except (RuntimeError, NotImplementedError):   # tensors without storage (meta, sparse, functorch wrappers)
        return None
    return (t.device, ptr) if ptr else None


class _Storage:
    """A storage made inside the tracker: its bytes, the tensor objects alive that refer to it, a weak reference."""

    __slots__ = ("nbytes", "objects", "_weak", "_free")

    def __init__(self, st: torch.UntypedStorage):
        self.nbytes = st.nbytes()
        self.objects = 0
        self._weak = st._weak_ref()
        self._free = torch.UntypedStorage._free_weak_ref

    def freed(self) -> bool:
        """Whether nothing refers to the storage any more (its memory is returned)."""
        return torch.UntypedStorage._expired(self._weak)

    def __del__(self):
        self._free(self._weak)


class AllocationTracker(TorchDispatchMode):
    """Follow the storages created inside the mode.

    ``peak`` (bytes alive at once), ``total`` (bytes allocated) and ``flops`` (of the matrix products, convolutions and
    attention kernels, by the formulas `torch.utils.flop_counter.FlopCounterMode` uses).

    A storage counts from the op that creates it (an output that does not alias an input) until it is freed;
    outputs that alias an input (views, in-place ops) keep an already-counted storage alive and add nothing. A
    storage whose tensor objects are all garbage may still be held elsewhere (a tensor autograd saved for a
    backward pass, a traced graph's constant): it is followed by a weak reference and counts until it is freed,
    so ``peak`` holds under grad mode and inside ``torch.func`` transforms too. ``live``: bytes alive now.
    """

    def __init__(self):
        super().__init__()
        self._live = 0
        self.peak = 0
        self.total = 0
        self.flops = 0
        self._refs: dict = {}          # storage key -> _Storage
        self._held: set = set()        # keys whose tensor objects are garbage but whose storage may be held

    @property
    def live(self) -> int:
        """Bytes of the storages made inside the mode that are alive now."""
        self._sweep()
        return self._live

    def _drop(self, key) -> None:
        self._live -= self._refs.pop(key).nbytes
        self._held.discard(key)

    def _sweep(self) -> None:
        """Forget the held storages that have been freed since."""
        for key in [k for k in self._held if self._refs[k].freed()]:
            self._drop(key)

    def _release(self, key) -> None:
        ref = self._refs.get(key)
        if ref is None:
            return
        ref.objects -= 1
        if ref.objects == 0:
            self._held.add(key)        # the storage outlives its last tensor object while it is being freed

    def _follow(self, t: torch.Tensor, key) -> None:
        self._refs[key].objects += 1
        self._held.discard(key)
        weakref.finalize(t, self._release, key)

    def _allocated(self, t: torch.Tensor, key) -> None:
        ref = _Storage(t.untyped_storage())
        if self._live + ref.nbytes > self.peak:   # a new peak only if the held storages are still alive
            self._sweep()
        self._refs[key] = ref
        self._live += ref.nbytes
        self.total += ref.nbytes
        self.peak = max(self.peak, self._live)
        self._follow(t, key)

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
            if key in self._held and self._refs[key].freed():   # the address of a freed storage, reused
                self._drop(key)
            if key in self._refs:              # a view or in-place result of a storage made in here
                self._follow(t, key)
            elif key not in inputs:            # a fresh allocation
                self._allocated(t, key)
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
