"""A study's results folder and its seeds: ``config.json``/``experiment_config.json`` and ``--seeds``.

- [`parse_seeds`][lamda.studies.folders.parse_seeds]: ``--seeds 42,43`` → ``[42, 43]`` (default: ``n`` seeds from
  ``--seed``).
- [`open_results_folder`][lamda.studies.folders.open_results_folder]: writes ``experiment_config.json`` (which ``lamda
  analyze DIR`` reads) and a copy in ``config.json`` or, on a restart, checks that the folder holds the same settings.
"""
from __future__ import annotations

import pathlib
from typing import Sequence

from ..result_files import jsonable, read_json, write_json
from .argtypes import SEED_MAX

__all__ = ["parse_seeds", "open_results_folder"]


def parse_seeds(spec: str | None, base: int, n: int) -> list[int]:
    """``"42,43,44"`` → ``[42, 43, 44]``; None/"" → ``[base, base + 1, …]`` (``n`` seeds).

    Raises:
        ValueError: not a comma-separated list of distinct integers in ``[0, SEED_MAX]``.
    """
    if spec is None or str(spec).strip() == "":
        return [int(base) + i for i in range(int(n))]
    try:
        seeds = [int(s) for s in str(spec).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be a comma-separated list of integers, got {spec!r}") from None
    if not seeds:
        raise ValueError(f"--seeds holds no seed: {spec!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds repeats a seed: {spec!r}")
    bad = [s for s in seeds if not 0 <= s <= SEED_MAX]
    if bad:
        raise ValueError(f"--seeds must lie in [0, {SEED_MAX}], got {bad[0]}")
    return seeds


def open_results_folder(out: pathlib.Path, config: dict, identity: Sequence[str], copy: bool = True) -> None:
    """Write ``experiment_config.json`` (and, with ``copy``, the same in ``config.json``) under ``out``.

    On a restart compare the ``identity`` keys with the folder's.

    Raises:
        ValueError: ``out`` already holds a run with other settings (resuming needs the same ones).
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / "experiment_config.json"
    if path.exists():
        old = read_json(path)
        new = jsonable(config)
        diff = [k for k in identity if old.get(k) != new.get(k)]
        if diff:
            raise ValueError(f"{out} holds a different run ({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); "
                             f"choose another --out or repeat the same settings to resume")
    write_json(path, config)
    if copy:
        write_json(out / "config.json", config)
