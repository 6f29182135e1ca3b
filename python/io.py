"""Atomic file writes (CSV, JSON, npz, PNG/GIF, checkpoints) and safe checkpoint loading.

Every writer writes a temporary file in the target's folder and then moves it into
place with :func:`os.replace`, so a killed process leaves either the old file or the
new one, never a half-written file.  Checkpoints are loaded with
``torch.load(weights_only=True)``; a corrupt or foreign file raises
:class:`CheckpointError` (a ``ValueError``) that names the file.
"""
from __future__ import annotations

import contextlib
import csv
import io as _io
import json
import math
import os
import pathlib
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = ["atomic_path", "write_bytes", "write_text", "write_json", "read_json", "write_csv", "read_csv",
           "write_npz", "read_npz", "save_figure", "save_checkpoint", "load_checkpoint", "CheckpointError",
           "CHECKPOINT_FORMAT", "remove_stale_temp_files"]

CHECKPOINT_FORMAT = "lamda-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or not a lamda checkpoint."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success move it onto ``path`` (atomic on POSIX).

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=(suffix if suffix is not None else path.suffix)
                               + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield pathlib.Path(tmp)
        with open(tmp, "rb+") as fh:   # make the content durable before the rename
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(folder, recursive: bool = False) -> list[pathlib.Path]:
    """Delete the ``.<name>.*.tmp`` files that :func:`atomic_path` leaves when a process is killed mid-write.

    Call it only on folders no other process is writing to.  Returns the removed paths.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    removed = []
    for p in found:
        if p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    return obj


def write_json(path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (numpy/torch values converted; NaN/inf written as null)."""
    write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path) -> Any:
    with open(path, "r", encoding="utf-8") as fh:
        return json.load(fh)


def write_csv(path, rows: Sequence[Mapping[str, Any]], fieldnames: Iterable[str] | None = None) -> None:
    """Write a list of dict rows as CSV; columns are ``fieldnames`` or the union of keys in order."""
    if fieldnames is None:
        fieldnames = []
        for r in rows:
            for k in r:
                if k not in fieldnames:
                    fieldnames.append(k)
    fieldnames = list(fieldnames)
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction="raise", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_value(r.get(k)) for k in fieldnames})
    write_text(path, buf.getvalue())


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return "" if not math.isfinite(f) else repr(f)
    if isinstance(v, torch.Tensor):
        return _csv_value(v.item())
    return v


def read_csv(path) -> list[dict[str, Any]]:
    """Read a CSV written by :func:`write_csv`; numeric cells become float/int, empty cells None."""
    with open(path, "r", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: _parse_cell(v) for k, v in r.items()} for r in rows]


def _parse_cell(v: str):
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def write_npz(path, **arrays) -> None:
    """Write numpy arrays (or tensors) to an ``.npz`` atomically (uncompressed)."""
    conv = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in arrays.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **conv)


def read_npz(path) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` into memory (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def save_figure(fig, path, dpi: int = 150) -> None:
    """Save a matplotlib figure atomically (format from the suffix) and close it."""
    import matplotlib.pyplot as plt
    path = pathlib.Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    finally:
        plt.close(fig)


def save_checkpoint(path, payload: Mapping[str, Any]) -> None:
    """Save ``payload`` (tensors, numbers, strings, lists, dicts only) as a lamda checkpoint, atomically.

    The payload is tagged with ``format = CHECKPOINT_FORMAT`` so that :func:`load_checkpoint`
    can tell a lamda checkpoint from a foreign ``.pt`` file.
    """
    data = dict(payload)
    data["format"] = CHECKPOINT_FORMAT
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the file is missing, truncated/corrupt, needs unpickling of arbitrary
            objects (not a weights-only file), or is not a lamda checkpoint.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError / UnpicklingError / EOFError / zipfile errors
        raise CheckpointError(
            f"cannot load checkpoint {path}: the file is corrupt, truncated or not a weights-only torch file "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Delete it and rerun; "
            f"the run restarts from scratch.") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a lamda checkpoint (expected a dict with "
                              f"format={CHECKPOINT_FORMAT!r})")
    return data
