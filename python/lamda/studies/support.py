"""Plumbing shared by the ``selective``, ``landscape``, ``spectrum`` and ``probe`` experiments.

- :func:`parse_seeds`: ``--seeds 42,43`` → ``[42, 43]`` (default: ``n`` seeds from ``--seed``).
- :func:`open_results_folder`: writes ``config.json`` (and ``experiment_config.json``, which
  ``lamda analyze DIR`` reads) or, on a restart, checks that the folder holds the same settings.
- :func:`load_mnist_like`: MNIST from the data root, or the offline ``digits`` set when it is absent.
- :func:`group_mean_std`, :func:`markdown_table`, :func:`pm`: tables for ``summary.md``.
- :func:`my_cells`, :func:`run_seeded_grid`: thin wrappers over :mod:`lamda.experiments.runner`.
- :func:`group_mean_ci`, :func:`fmt_ci`: mean ± 95 % Student-t CI over seeds ("± n/a" for one seed).
- :func:`arg_number`: argparse types that refuse values outside a range (and inf/NaN).
"""
from __future__ import annotations

import pathlib
import warnings
from typing import Callable, Iterable, Sequence

import numpy as np

from .. import result_files as lio
from ..stats import fmt, fmt_ci, t_halfwidth
from ..data import load_dataset
from ..trainer import run_is_complete
from .runner import Cell, assigned, run_grid

__all__ = ["parse_seeds", "open_results_folder", "load_mnist_like", "group_mean_std", "markdown_table", "pm",
           "my_cells", "run_seeded_grid", "fmt", "finite_mean_std", "finite_mean_ci",
           "group_mean_ci", "fmt_ci", "arg_number"]


SEED_MAX = 2**31 - 1        # every seed (and the offsets experiments add to it) fits torch's and numpy's seeds


def parse_seeds(spec: str | None, base: int, n: int) -> list[int]:
    """``"42,43,44"`` → ``[42, 43, 44]``; None/"" → ``[base, base + 1, …]`` (``n`` seeds)."""
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


def open_results_folder(out: pathlib.Path, config: dict, identity: Sequence[str]) -> None:
    """Write ``config.json`` + ``experiment_config.json`` under ``out``; on a restart compare ``identity`` keys.

    Raises ``ValueError`` when ``out`` already holds a run with other settings (resuming needs the same ones).
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / "experiment_config.json"
    if path.exists():
        old = lio.read_json(path)
        new = lio._jsonable(config)
        diff = [k for k in identity if old.get(k) != new.get(k)]
        if diff:
            raise ValueError(f"{out} holds a different run ({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); "
                             f"choose another --out or repeat the same settings to resume")
    lio.write_json(path, config)
    lio.write_json(out / "config.json", config)


MNIST_LIKE = ("auto", "mnist", "digits")


def add_mnist_like_argument(p) -> None:
    """The ``--dataset`` option of the experiments that read their data through :func:`load_mnist_like`."""
    p.add_argument("--dataset", choices=MNIST_LIKE, default="auto",
                   help="auto (default): MNIST when found under the data root, else the offline digits set")


def load_mnist_like(dataset: str, root, *, train_size: int | None, test_size: int | None, seed: int,
                    label_noise: float = 0.0, download: bool = False):
    """``dataset`` = ``"mnist"``, ``"digits"`` or ``"auto"`` (MNIST when found under ``root``, else digits).

    Returns ``(data, name, note)``; ``note`` says why digits were used ("" otherwise). Subset sizes larger
    than the digits set are clipped for digits (it has 1200 train / 597 test images).
    """
    if dataset not in MNIST_LIKE:
        raise ValueError(f"dataset must be auto, mnist or digits, got {dataset!r}")
    if dataset in ("auto", "mnist"):
        try:
            data = load_dataset("mnist", root=root, train_size=train_size, test_size=test_size, seed=seed,
                                label_noise=label_noise, download=download)
            return data, "mnist", ""
        except FileNotFoundError as exc:
            if dataset == "mnist":
                raise
            note = f"MNIST not found ({str(exc).splitlines()[0]}); used the offline digits set instead"
            warnings.warn(note)
    else:
        note = "the offline digits set was asked for"
    tr = None if train_size is None else min(train_size, 1200)
    te = None if test_size is None else min(test_size, 597)
    data = load_dataset("digits", train_size=tr, test_size=te, seed=seed, label_noise=label_noise)
    return data, "digits", note


def finite_mean_std(values: Iterable) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; 0 for one value) and count of the finite values (NaN, NaN, 0 when none)."""
    v = np.array([float(x) if x is not None else np.nan for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def group_mean_std(rows: list[dict], key: str, columns: Sequence[str], order: Sequence | None = None) -> list[dict]:
    """One row per value of ``key``: ``{key, n, <col>_mean, <col>_std, <col>_n}`` over the finite values."""
    groups = list(order) if order is not None else list(dict.fromkeys(r[key] for r in rows))
    out = []
    for g in groups:
        sel = [r for r in rows if r[key] == g]
        if not sel:
            continue
        row = {key: g, "n": len(sel)}
        for c in columns:
            m, s, n = finite_mean_std(r.get(c) for r in sel)
            row[f"{c}_mean"], row[f"{c}_std"], row[f"{c}_n"] = m, s, n
        out.append(row)
    return out


def pm(mean, std, spec: str = ".3f") -> str:
    """``"m ± s"`` (``"n/a"`` for missing values)."""
    if mean is None or not np.isfinite(float(mean)):
        return "n/a"
    return f"{fmt(mean, spec)} ± {fmt(std, spec)}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def my_cells(cells: list, shard_spec: str | None) -> list:
    """The cells (in order) this process runs: those ``--shard i/n`` keeps (every n-th, starting at i), dealt
    round-robin over the ranks under ``torchrun`` (:func:`lamda.experiments.runner.assigned`)."""
    return assigned(cells, shard_spec)


def run_seeded_grid(tag: str, out: pathlib.Path, cells: list, shard_spec: str | None,
                    train_cell: Callable[[str, int, pathlib.Path], None], analyze: Callable) -> int:
    """Train every (name, seed) cell into ``out/runs/<name>/seed_<seed>`` through :func:`runner.run_grid`
    (cell key ``<name>/seed_<seed>``; the run folder is the cell's output), then ``analyze(out)`` once every
    cell of every shard and rank is finished. A run folder finished before the runner existed (its
    ``final_model.pt`` is complete, no marker yet) is adopted, not retrained."""
    def rel(name, seed):
        return f"runs/{name}/seed_{seed}"

    grid = [Cell(f"{name}/seed_{seed}", {"name": name, "seed": int(seed)}, (rel(name, seed),))
            for name, seed in cells]

    def work(cell: Cell) -> None:
        rd = out / rel(cell.params["name"], cell.params["seed"])
        if not run_is_complete(rd):
            train_cell(cell.params["name"], cell.params["seed"], rd)

    return run_grid(tag, out, grid, work, analyze, shard=shard_spec)


# ------------------------------------------------------------------ 95 % confidence intervals over seeds
def finite_mean_ci(values: Iterable) -> tuple[float, float, int]:
    """Mean, 95 % CI half-width (:func:`lamda.analysis.stats.t_halfwidth`) and count of the finite values (NaN, NaN, 0 when none)."""
    m, s, n = finite_mean_std(values)
    return m, t_halfwidth(s, n), n


def group_mean_ci(rows: list[dict], key: str, columns: Sequence[str], order: Sequence | None = None) -> list[dict]:
    """:func:`group_mean_std` plus ``<col>_ci95`` (95 % CI half-width of the mean; NaN when fewer than 2 values)."""
    table = group_mean_std(rows, key, columns, order)
    for row in table:
        for c in columns:
            row[f"{c}_ci95"] = t_halfwidth(row[f"{c}_std"], row[f"{c}_n"])
    return table




# ------------------------------------------------------------------ argparse types that check ranges
def arg_number(kind: type = float, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type=`` that parses a finite ``kind`` (int or float) inside ``[low, high]`` (None: unbounded;
    ``low_open``/``high_open`` exclude the bound); anything else (inf, NaN, out of range, not a number) is an
    ``ArgumentTypeError`` whose message names the allowed range, so ``lamda run`` exits 2 with an error line."""
    import argparse
    import math

    if low is not None and high is not None:
        rng = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        rng = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        rng = f"{'<' if high_open else '<='} {high:g}"
    else:
        rng = "(any value)"
    what = "an integer" if kind is int else "a finite number"

    def parse(text: str):
        try:
            v = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what} {rng}, got {text!r}") from None
        if (kind is float and not math.isfinite(v)) or (low is not None and (v < low or (low_open and v == low))) \
                or (high is not None and (v > high or (high_open and v == high))):
            raise argparse.ArgumentTypeError(f"expected {what} {rng}, got {text!r}")
        return v

    parse.__name__ = kind.__name__          # argparse names the type in its messages
    return parse
