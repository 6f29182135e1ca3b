"""``torch.distributed`` for the research layer: process-group setup from the environment, rank queries, barrier.

``torchrun`` (and ``srun torchrun`` on SLURM) starts one process per rank and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` and ``TORCHELASTIC_RUN_ID``.
[`init_from_env`][lamda.distributed.init_from_env] turns that into a process group: gloo on CPU, NCCL on GPU with each
rank on its local GPU (``cuda`` then means that GPU). Without those variables every function here is a no-op that
reports rank 0 of 1, so the same code runs in one plain process.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

__all__ = ["launched", "init_from_env", "is_initialized", "rank_world", "local_rank", "is_main", "barrier",
           "shutdown", "job_id", "backend_for", "request_ddp", "ddp_requested"]

_TIMEOUT_ENV = "LAMDA_DIST_TIMEOUT_MIN"     # barrier/collective timeout; a grid's slowest rank may take hours
_DDP = False


def request_ddp(on: bool = True) -> None:
    """``lamda run --ddp``: every rank works on every cell together.

    One run over all ranks with DistributedDataParallel, instead of each rank taking its own cells.
    """
    global _DDP
    _DDP = bool(on)


def ddp_requested() -> bool:
    """True after [`request_ddp`][lamda.distributed.request_ddp] while a process group of more than one rank is up."""
    return _DDP and rank_world()[1] > 1


def launched() -> bool:
    """True when this process was started by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def local_rank() -> int:
    """``LOCAL_RANK`` (the rank's index on its node; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def backend_for(device: str | None) -> str:
    """The process-group backend for ``device``: ``"nccl"`` for a GPU when NCCL exists, else ``"gloo"``.

    ``device``: ``auto``/None, ``cuda``, ``cuda:i`` or ``cpu``.
    """
    wants_gpu = (device in (None, "", "auto") and torch.cuda.is_available()) or str(device).startswith("cuda")
    return "nccl" if wants_gpu and torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def _import_group_defaults() -> None:
    """Import the torch modules whose functions default to ``group=group.WORLD`` before the group exists.

    Such a default is evaluated at import: imported after ``init_process_group`` (``torch._dynamo`` imports
    ``torch.distributed.nn.functional`` on first use of ``torch.func`` or fake tensors), every one of them holds a
    reference to the group, ``destroy_process_group`` then leaves it (and gloo's worker threads) alive, and a worker
    still releasing a finished collective when the interpreter exits aborts the process ("terminate called without
    an active exception"). Imported first, they hold None.
    """
    import torch.distributed.nn.functional  # noqa: F401


def init_from_env(device: str | None = "auto") -> bool:
    """Initialise the default process group from the torchrun environment (``env://``), once.

    gloo when ``device`` is the CPU, NCCL (after ``torch.cuda.set_device(LOCAL_RANK)``) when it is a GPU.
    Returns True when a process group is active afterwards (False outside torchrun). Raises ValueError when
    torchrun asks for more ranks on a node than it has GPUs.
    """
    if is_initialized():
        return True
    if not launched():
        return False
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed; run without torchrun")
    backend = backend_for(device)
    if backend == "nccl":
        lr, n = local_rank(), torch.cuda.device_count()
        if lr >= n:
            raise ValueError(f"LOCAL_RANK {lr} has no GPU (this node has {n}); start at most {n} processes per "
                             f"node (--nproc_per_node) or use --device cpu")
        torch.cuda.set_device(lr)
    _import_group_defaults()
    timeout = datetime.timedelta(minutes=float(os.environ.get(_TIMEOUT_ENV, str(7 * 24 * 60))))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
    # torchrun's elastic agent keeps one store across restarts: without a per-attempt prefix a restarted rank
    # reads the dead ranks' addresses of the previous attempt and cannot connect
    store = dist.PrefixStore(f"lamda/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    kw = {"device_id": torch.device("cuda", local_rank())} if backend == "nccl" else {}
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout, **kw)
    return True


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` when none is initialised."""
    if is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process is rank 0 (or not distributed): the one that writes shared files."""
    return rank_world()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if not is_initialized():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (after a last barrier, so no rank tears it down while another still talks)."""
    if is_initialized():
        barrier()
        dist.destroy_process_group()


def job_id() -> str | None:
    """The id shared by every rank (and every restart) of one torchrun job: ``TORCHELASTIC_RUN_ID``; None outside."""
    if not launched():
        return None
    rid = os.environ.get("TORCHELASTIC_RUN_ID")
    if rid in (None, "", "none"):
        # a launcher without the elastic agent: every rank of the job sees the same rendezvous address
        rid = f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"
    return rid
