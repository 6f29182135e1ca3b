"""Atomic file writes (CSV, JSON, npz, PNG/GIF, checkpoints) and safe checkpoint loading.

Every writer writes a temporary file in the target's folder and then moves it into
place with `os.replace`, so a killed process leaves either the old file or the
new one, never a half-written file.  Checkpoints are loaded with
``torch.load(weights_only=True)``; a corrupt or foreign file raises
[`CheckpointError`][lamda.result_files.CheckpointError] (a ``ValueError``) that names the file.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import pathlib
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = ["atomic_path", "write_bytes", "write_text", "write_json", "read_json", "write_csv", "read_csv",
           "write_npz", "read_npz", "save_checkpoint", "load_checkpoint", "CheckpointError",
           "CHECKPOINT_FORMAT", "remove_stale_temp_files", "MissingEntryError", "read_json_object",
           "check_output_folder", "jsonable"]

CHECKPOINT_FORMAT = "lamda-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or not a lamda checkpoint."""


class MissingEntryError(KeyError, ValueError):
    """A JSON object or an ``.npz`` read from a file lacks an entry the reader asked for."""

    def __str__(self):                  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class _FileDict(dict):
    """A dict read from ``path``: a missing key raises `MissingEntryError` naming the file."""

    def __init__(self, data, path, what):
        super().__init__(data)
        self._path, self._what = path, what

    def __missing__(self, key):
        have = ", ".join(map(str, list(self)[:12])) + (", …" if len(self) > 12 else "")
        raise MissingEntryError(f"{self._path} has no {self._what} {key!r} (it has: {have or 'nothing'}); the file "
                                f"is incomplete or from another version — rerun the command that writes it")

    def __reduce__(self):               # pickles/copies as a plain dict
        return (dict, (dict(self),))


def check_output_folder(path) -> pathlib.Path:
    """Create the results folder ``path`` (with parents) and check that files can be written there.

    Raises ValueError (one line) when ``path`` is a file, lies under a file, or is not writable.
    """
    path = pathlib.Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"--out {path}: {parent} is a file, not a folder; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ValueError(f"--out {path} is not writable ({exc.strerror or exc}); choose another --out") from None
    return path


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
    """Delete the ``.<name>.*.tmp`` files that `atomic_path` leaves when a process is killed mid-write.

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
    """Write ``data`` to ``path`` atomically (a temporary file, then a rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (a temporary file, then a rename)."""
    write_bytes(path, text.encode("utf-8"))


def jsonable(obj: Any):
    """``obj`` with mappings, sequences, numpy/torch values and paths turned into JSON types (NaN/inf → None)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    return obj


def write_json(path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (numpy/torch values converted; NaN/inf written as null)."""
    write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path) -> Any:
    """Parse a JSON file; objects come back as dicts whose missing keys raise `MissingEntryError`.

    Raises ValueError naming the file when it is not valid JSON (truncated, garbage).
    """
    path = pathlib.Path(path)
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh, object_hook=lambda d: _FileDict(d, path, "entry"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the file is damaged — rerun the command that "
                         f"writes it") from None


def read_json_object(path, required: Sequence[str] = ()) -> dict:
    """`read_json` for a file that must hold a JSON object with the keys ``required``."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a JSON {type(obj).__name__}, not an object; the file is damaged")
    missing = [k for k in required if k not in obj]
    if missing:
        raise ValueError(f"{path} has no {', '.join(map(repr, missing))} entry; the file is incomplete")
    return obj


def write_csv(path, rows: Sequence[Mapping[str, Any]], fieldnames: Iterable[str] | None = None) -> None:
    """Write a list of dict rows as CSV; columns are ``fieldnames`` or the union of keys in order."""
    if fieldnames is None:
        fieldnames = []
        for r in rows:
            for k in r:
                if k not in fieldnames:
                    fieldnames.append(k)
    fieldnames = list(fieldnames)
    buf = io.StringIO()
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


def read_csv(path, numeric: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Read a CSV written by `write_csv`; numeric cells become float/int, empty cells None.

    ``numeric``: columns whose cells must be numbers (or empty); those present are checked.
    Raises ValueError naming the file and line for a row whose field count differs from the header (a file
    cut mid-row) and for a non-numeric cell in a ``numeric`` column.
    """
    path = pathlib.Path(path)
    try:
        with open(path, "r", encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            raw = [(reader.line_num, r) for r in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path} is not a readable CSV file ({exc}); the file is damaged") from None
    if not header:
        raise ValueError(f"{path} is empty (no header line); the file is damaged")
    rows = []
    for line, r in raw:
        if len(r) != len(header):
            raise ValueError(f"{path} line {line}: {len(r)} field(s) where the header has {len(header)} "
                             f"(the file was cut or edited); rerun the command that writes it")
        rows.append({k: _parse_cell(v) for k, v in zip(header, r)})
    for col in [c for c in numeric if c in header]:
        for n, (line, _) in enumerate(raw):
            v = rows[n][col]
            if v is not None and not isinstance(v, (int, float)):
                raise ValueError(f"{path} line {line}: column {col!r} holds {v!r} where numbers are expected; "
                                 f"the file is damaged or was edited")
    return rows


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
    """Load every array of an ``.npz`` into memory (never unpickling anything).

    Returns a dict whose missing keys raise [`MissingEntryError`][lamda.result_files.MissingEntryError] naming the file.
    Raises ValueError naming the file when it is truncated, not an npz, or holds object arrays.
    """
    path = pathlib.Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("a single .npy array, not an .npz archive")
            return _FileDict({k: z[k] for k in z.files}, path, "array")
    except FileNotFoundError:
        raise
    except Exception as exc:      # zipfile/EOF/OSError/ValueError: all mean a damaged file
        why = "it holds object arrays" if "pickle" in str(exc).lower() else f"{type(exc).__name__}"
        raise ValueError(f"{path} is not a readable .npz file ({why}: truncated, damaged or not written by "
                         f"lamda); delete it and rerun the command that writes it") from None


def save_checkpoint(path, payload: Mapping[str, Any]) -> None:
    """Save ``payload`` (tensors, numbers, strings, lists, dicts only) as a lamda checkpoint, atomically.

    The payload is tagged with ``format = CHECKPOINT_FORMAT`` so that
    [`load_checkpoint`][lamda.result_files.load_checkpoint] can tell a lamda checkpoint from a foreign ``.pt`` file.
    """
    data = dict(payload)
    data["format"] = CHECKPOINT_FORMAT
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` with ``torch.load(weights_only=True)``.

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
