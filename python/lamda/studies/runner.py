"""The resumable grid runner every experiment shares: cells, completion markers, a folder lock, shards, ranks.

An experiment is a list of [`Cell`][lamda.studies.runner.Cell] (one unit of work each: a training run, a model + its
Hessian, …), a ``work(cell)`` function that writes that cell's files under the results folder, and an ``analyze(out)``
that reads every cell's files and writes the aggregate tables, figures and ``summary.md``:

    run_grid("probe", out, cells, work, analyze, shard=args.shard)

- **Completion markers.** After ``work(cell)`` returns, ``out/.cells/<key>.done.json`` is written (atomically,
  last). It records the cell's settings and, for every path in ``cell.outputs``, the files found there and their
  sizes. A cell is complete when its marker exists, holds the same settings, and every recorded file is still
  there with its size; a cell that was finished but lost or changed a file is redone from scratch (its outputs
  are deleted first, so a work function that skips finished work does not skip it again).
- **Folder lock.** ``out/.lamda.lock`` holds the owner's pid, host and torchrun job id. A second process on the
  same folder is refused ([`FolderLockedError`][lamda.studies.runner.FolderLockedError]); a lock whose process has died
  is taken over; the ranks (and restarts) of one torchrun job share it.
- **Shards and ranks.** ``shard="i/n"`` keeps every n-th cell starting at i (array jobs); under ``torchrun``
  the shard's cells are dealt round-robin to the ranks. Each rank runs its cells (Hessian tools stay on the
  rank's own data: [`lamda_ext.hessian.rank_local`][lamda_ext.hessian.rank_local]), all ranks meet at a barrier, and
  rank 0 alone runs ``analyze(out)`` once every cell of the grid is complete.
- **Log.** One line per computed cell, naming the rank (``[tag] rank 1/2: <key> done in <t> s``); then each
  rank's time for its cells, and rank 0's time for the analysis, each phase on its own line.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from lamda_ext.hessian import rank_local

from .. import distributed
from .. import result_files

__all__ = ["Cell", "run_grid", "assigned", "parse_shard", "cell_is_complete", "require_complete", "recorded_cells",
           "folder_lock", "FolderLockedError", "CELLS_DIR", "LOCK_NAME"]

CELLS_DIR = ".cells"
LOCK_NAME = ".lamda.lock"
_GRID_FILE = "grid.json"
_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+,-]*$")


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/n"`` (0 ≤ i < n) → ``(i, n)``; None → ``(0, 1)``.

    Raises:
        ValueError: not of the form ``i/n`` with ``n >= 1`` and ``0 <= i < n``.
    """
    if spec is None or spec == "":
        return 0, 1
    try:
        i, n = (int(v) for v in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard i/n needs n >= 1 and 0 <= i < n, got {spec!r}")
    return i, n


class FolderLockedError(ValueError):
    """Another live process (not a rank of this torchrun job) is writing the results folder."""


@dataclass(frozen=True)
class Cell:
    """One unit of work of a grid.

    Attributes:
        key: unique, path-like id (``"mnist/wd_1e-4/seed_42"``, ``"model_17"``): parts of letters, digits and
            ``._=+,-`` joined by ``/``. Names the cell in logs and its marker ``out/.cells/<key>.done.json``.
        params: JSON-able settings ``work`` needs; stored in the marker (a marker of other settings does not
            count as complete).
        outputs: paths (files or folders, relative to ``out``) that belong to this cell alone. Their files are
            listed in the marker; a finished cell that lost one is redone, and these paths are deleted first.
    """

    key: str
    params: dict = field(default_factory=dict)
    outputs: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"Cell.key must be a non-empty string, got {self.key!r}")
        parts = self.key.split("/")
        if any(not _KEY_PART.match(p) for p in parts):
            raise ValueError(f"Cell.key {self.key!r} must be parts of letters, digits and ._=+,- (not starting "
                             f"with . or -) joined by '/'")
        if not isinstance(self.params, dict):
            raise TypeError(f"Cell.params must be a dict, got {type(self.params).__name__}")
        try:
            json.dumps(result_files.jsonable(self.params))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"Cell.params of {self.key!r} must be JSON-able: {exc}") from None
        outs = (self.outputs,) if isinstance(self.outputs, str) else tuple(self.outputs)
        for o in outs:
            p = pathlib.PurePosixPath(str(o))
            if p.is_absolute() or ".." in p.parts or str(o) in ("", "."):
                raise ValueError(f"Cell.outputs of {self.key!r} must be paths inside the results folder, got {o!r}")
        object.__setattr__(self, "outputs", tuple(str(o) for o in outs))


# ----------------------------------------------------------------------------------------- markers
def _marker_path(out: pathlib.Path, cell: Cell) -> pathlib.Path:
    return pathlib.Path(out) / CELLS_DIR / f"{cell.key}.done.json"


def _normalised(params: dict):
    return json.loads(json.dumps(result_files.jsonable(params)))


def _manifest(out: pathlib.Path, cell: Cell) -> dict[str, int]:
    """``{relative file path: size}`` of the files under ``cell.outputs`` (temporary files left out)."""
    files: dict[str, int] = {}
    for o in cell.outputs:
        p = out / o
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and not (f.name.startswith(".") and f.name.endswith(".tmp")):
                    files[f.relative_to(out).as_posix()] = f.stat().st_size
        elif p.is_file():
            files[pathlib.PurePath(o).as_posix()] = p.stat().st_size
        else:
            raise ValueError(f"cell {cell.key!r}: its work function returned without writing the output {o!r} "
                             f"it declares (under {out})")
    return files


def _write_marker(out: pathlib.Path, cell: Cell, seconds: float, rank: int, world: int) -> None:
    result_files.write_json(_marker_path(out, cell), {
        "key": cell.key, "params": cell.params, "outputs": _manifest(out, cell), "rank": rank, "world": world,
        "host": socket.gethostname(), "pid": os.getpid(), "seconds": seconds,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})


def _problem(out: pathlib.Path, cell: Cell) -> str | None:
    """None when ``cell`` is complete, else why not (``"not finished"`` when it has no marker)."""
    out = pathlib.Path(out)
    mp = _marker_path(out, cell)
    if not mp.is_file():
        return "not finished"
    try:
        rec = result_files.read_json(mp)
        files = rec["outputs"]
        same = rec["key"] == cell.key and _normalised(rec["params"]) == _normalised(cell.params)
    except (ValueError, KeyError, TypeError, OSError):
        return f"its completion marker {mp} is damaged"
    if not same:
        return f"its completion marker {mp} records other settings"
    for rel, size in files.items():
        p = out / rel
        if not p.is_file():
            return f"its file {rel} is missing"
        if p.stat().st_size != size:
            return f"its file {rel} changed size ({size} → {p.stat().st_size} bytes)"
    return None


def cell_is_complete(out: pathlib.Path, cell: Cell) -> bool:
    """True when ``cell`` finished in ``out`` (marker present, same settings, every recorded file intact)."""
    return _problem(pathlib.Path(out), cell) is None


def require_complete(out: pathlib.Path, cells: Sequence[Cell]) -> None:
    """Raise ``ValueError`` naming the cells of ``cells`` that are not complete in ``out`` (and why)."""
    bad = [(c.key, r) for c in cells if (r := _problem(pathlib.Path(out), c)) is not None]
    if bad:
        shown = "; ".join(f"{k} ({r})" for k, r in bad[:5]) + (f"; … {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"{out}: {len(bad)} of {len(cells)} cell(s) are not complete: {shown}. Resume them by "
                         f"repeating the `lamda run` command with --out {out}")


def recorded_cells(out: pathlib.Path) -> list[Cell] | None:
    """The grid that `run_grid` recorded in ``out/.cells/grid.json`` (None when there is none)."""
    p = pathlib.Path(out) / CELLS_DIR / _GRID_FILE
    if not p.is_file():
        return None
    try:
        rec = result_files.read_json(p)
        return [Cell(c["key"], c["params"], tuple(c["outputs"])) for c in rec["cells"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{p} is damaged ({type(exc).__name__}: {exc}); repeat the `lamda run` command with "
                         f"--out {pathlib.Path(out)} to rewrite it") from None


def _clear(out: pathlib.Path, cell: Cell) -> None:
    """Delete a damaged finished cell's marker and outputs so that it is redone from scratch."""
    _marker_path(out, cell).unlink(missing_ok=True)
    for o in cell.outputs:
        p = out / o
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


# ----------------------------------------------------------------------------------------- lock
_HELD: dict[str, int] = {}      # lock path -> nesting depth in this process


def _owner() -> dict:
    job = distributed.job_id()
    # under torchrun's elastic agent the lock belongs to the agent (a restarted rank is a new process)
    pid = os.getppid() if job is not None and os.environ.get("TORCHELASTIC_RUN_ID") else os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "job": job,
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(out: pathlib.Path):
    """Hold ``out/.lamda.lock`` for the block (re-entrant in one process; shared by one torchrun job's ranks).

    Raises:
        FolderLockedError: a live process of another job holds it (or one on another host: its liveness
            cannot be checked — the message names the file to delete when it is left over).
    """
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    key = str(lock.resolve())
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    me = _owner()
    with _guard(out):
        rec = _read_lock(lock)
        if rec is not None and not (me["job"] is not None and rec.get("job") == me["job"]):
            same_host = rec.get("host") == me["host"]
            pid = rec.get("pid")
            if not isinstance(pid, int) or (same_host and not _alive(pid)):
                rec = None                                      # stale: its process is gone
            else:
                where = "" if same_host else f" on host {rec.get('host')}"
                raise FolderLockedError(
                    f"{out} is in use by another lamda process (pid {pid}{where}, since {rec.get('since')}); wait "
                    f"for it to finish or choose another --out" + ("" if same_host else
                                                                   f" (if it is gone, delete {lock})"))
        if rec is None:
            result_files.write_json(lock, me)
    _HELD[key] = 1
    try:
        yield
    finally:
        _HELD.pop(key, None)
        rank = distributed.rank_world()[0]
        if rank == 0:
            with _guard(out):
                rec = _read_lock(lock)
                if rec is not None and rec.get("host") == me["host"] and rec.get("pid") == me["pid"]:
                    lock.unlink(missing_ok=True)


@contextlib.contextmanager
def _guard(out: pathlib.Path):
    """An exclusive ``flock`` around reading and replacing the lock file (no two processes take it at once)."""
    with open(out / (LOCK_NAME + ".guard"), "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_lock(lock: pathlib.Path) -> dict | None:
    if not lock.is_file():
        return None
    try:
        rec = result_files.read_json(lock)
    except (ValueError, OSError):
        return {"pid": None}        # unreadable: treated as stale
    return rec if isinstance(rec, dict) else {"pid": None}


# ----------------------------------------------------------------------------------------- runner
def _log(tag: str, msg: str) -> None:
    print(f"[{tag}] {msg}", flush=True)


def _record_grid(out: pathlib.Path, tag: str, cells: Sequence[Cell]) -> None:
    result_files.write_json(out / CELLS_DIR / _GRID_FILE, {
        "tag": tag, "cells": [{"key": c.key, "params": c.params, "outputs": list(c.outputs)} for c in cells]})


def _run_cell(tag, out, c: Cell, work, progress: bool, rank: int, world: int) -> bool:
    """Run one cell on this rank alone (Hessian tools local to the rank) and write its marker.

    False when it was finished earlier.
    """
    why = _problem(out, c)
    if why is None:
        if progress:
            _log(tag, f"rank {rank}/{world}: {c.key} finished earlier, skipped")
        return False
    if why != "not finished":
        _log(tag, f"rank {rank}/{world}: {c.key} redone from scratch: {why}")
        _clear(out, c)
    if progress:
        _log(tag, f"rank {rank}/{world}: {c.key} started")
    t = time.perf_counter()
    with rank_local():
        work(c)
    _write_marker(out, c, time.perf_counter() - t, rank, world)
    _log(tag, f"rank {rank}/{world}: {c.key} done in {time.perf_counter() - t:.1f} s")
    return True


def _run_together(tag, out, cells, work, shard, rank: int, world: int) -> int:
    """``--ddp``: every rank runs every cell of the shard together.

    Rank 0 clears, marks and logs. Returns the number of cells computed.
    """
    i, n = parse_shard(shard)
    computed = 0
    for c in [c for j, c in enumerate(cells) if j % n == i]:
        why = _problem(out, c)
        distributed.barrier()                       # nobody has changed this cell's files while others looked
        if why is None:
            if rank == 0:
                _log(tag, f"rank 0/{world} (all ranks, DDP): {c.key} finished earlier, skipped")
            continue
        if why != "not finished" and rank == 0:
            _log(tag, f"rank 0/{world} (all ranks, DDP): {c.key} redone from scratch: {why}")
            _clear(out, c)
        distributed.barrier()
        t = time.perf_counter()
        work(c)
        distributed.barrier()
        if rank == 0:
            _write_marker(out, c, time.perf_counter() - t, rank, world)
            _log(tag, f"rank 0/{world} (all ranks, DDP): {c.key} done in {time.perf_counter() - t:.1f} s")
        computed += 1
    return computed


def assigned(cells: Sequence, shard: str | None = None) -> list:
    """The items of ``cells`` this process runs.

    Every n-th from i for ``shard="i/n"``, and of those every world-th from this rank's index under a ``torchrun``
    process group (all of them for one plain process).
    """
    i, n = parse_shard(shard)
    rank, world = distributed.rank_world()
    return [c for j, c in enumerate(cells) if j % n == i][rank::world]


def run_grid(tag: str, out: pathlib.Path, cells: Sequence[Cell], work: Callable[[Cell], None],
             analyze: Callable[[pathlib.Path], int] | None, *, shard: str | None = None,
             progress: bool = True) -> int:
    """Run this process's unfinished cells of ``cells`` into ``out``, then (rank 0, once all are complete) ``analyze``.

    Args:
        tag: the experiment's name, for log lines.
        out: the results folder (locked for the call).
        cells: the whole grid, in a fixed order (the same in every process: shards and ranks index into it).
        work: writes one cell's files; must not write other cells' files. Runs with the Hessian tools local to
            this rank. An exception propagates (the cell stays unfinished and is redone on resume).
        analyze: reads the folder and writes the aggregates; called by rank 0 when every cell is complete.
        shard: ``"i/n"`` — only every n-th cell starting at i (array jobs without torchrun).
        progress: also log a line when a cell starts and when it was found finished (a computed cell's
            "done" line, naming the rank, is always logged).

    Returns:
        ``analyze``'s exit code (0 when it is None, or when cells of other shards are still unfinished).
    """
    out = pathlib.Path(out)
    cells = list(cells)
    keys = [c.key for c in cells]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"{tag}: cell keys must be unique; repeated: {', '.join(dup)}")
    parse_shard(shard)                      # a bad spec fails before anything is written
    distributed.init_from_env()
    rank, world = distributed.rank_world()
    t0 = time.perf_counter()
    with folder_lock(out):
        if rank == 0:
            _record_grid(out, tag, cells)
        if distributed.ddp_requested():
            computed = _run_together(tag, out, cells, work, shard, rank, world)
        else:
            computed = sum(_run_cell(tag, out, c, work, progress, rank, world) for c in assigned(cells, shard))
        _log(tag, f"rank {rank}/{world}: the cell phase took {time.perf_counter() - t0:.1f} s "
                  f"({computed} cell(s) computed)")
        distributed.barrier()
        rc = _analyze_complete_grid(tag, out, cells, analyze) if rank == 0 else 0
        distributed.barrier()
    return rc


def _analyze_complete_grid(tag: str, out: pathlib.Path, cells: Sequence[Cell], analyze) -> int:
    """Rank 0 after the cells: ``analyze(out)`` (timed on its own) when every cell of the grid is complete."""
    missing = [c for c in cells if not cell_is_complete(out, c)]
    if missing:
        _log(tag, f"{len(missing)} cell(s) of other shards are not finished; run `lamda analyze {out}` "
                  f"when every shard is done")
        return 0
    if analyze is None:
        return 0
    t = time.perf_counter()
    rc = int(analyze(out) or 0)
    _log(tag, f"rank 0 wrote the analysis in {time.perf_counter() - t:.1f} s; see {out}")
    return rc
