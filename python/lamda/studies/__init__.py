"""Experiment registry: every module in this package registers itself; ``lamda.cli`` reads the registry.

To add an experiment, add a module here that calls :func:`register` at import time::

    register(Experiment(name="selective", help="...", add_arguments=add_args, run=run, analyze=analyze))

``add_arguments(parser)`` adds the experiment's own flags (the common ones — ``--preset``, ``--out``,
``--data-root``, ``--device``, ``--shard``, ``--download``, ``--seed``, ``--no-progress`` — are added by the CLI);
``run(args)`` runs it; ``analyze(out_dir)`` (optional) regenerates its analyses from the files on disk.
The results folder's ``experiment_config.json`` names the experiment so ``lamda analyze DIR`` finds it.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["Experiment", "register", "registry", "get", "parse_shard", "broken"]


@dataclass(frozen=True)
class Experiment:
    name: str
    help: str
    add_arguments: Callable
    run: Callable
    analyze: Optional[Callable] = None
    presets: tuple[str, ...] = ("smoke", "quick", "full")
    default_preset: str = "quick"
    ddp: bool = False       # trains its runs through lamda.trainer.Trainer, so `lamda run --ddp` applies


_REGISTRY: dict[str, Experiment] = {}
_BROKEN: dict[str, str] = {}        # module name -> import error (one broken module must not hide the others)
_LOADED = False


def register(exp: Experiment) -> Experiment:
    if exp.name in _REGISTRY and _REGISTRY[exp.name] is not exp:
        raise ValueError(f"experiment {exp.name!r} is registered twice")
    _REGISTRY[exp.name] = exp
    return exp


def registry() -> dict[str, Experiment]:
    """All experiments, importing every study subpackage of this package once."""
    global _LOADED
    if not _LOADED:
        for mod in pkgutil.iter_modules(__path__):
            if mod.ispkg:
                try:
                    importlib.import_module(f"{__name__}.{mod.name}")
                except Exception as exc:  # noqa: BLE001 - reported by get() and `lamda list`
                    _BROKEN[mod.name] = f"{type(exc).__name__}: {exc}"
        _LOADED = True
    return dict(sorted(_REGISTRY.items()))


def broken() -> dict[str, str]:
    """Experiment modules that failed to import, with their errors."""
    registry()
    return dict(_BROKEN)


def get(name: str) -> Experiment:
    reg = registry()
    if name not in reg:
        if name in _BROKEN:
            raise ValueError(f"experiment module {name!r} failed to import: {_BROKEN[name]}")
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(reg) or 'none'}")
    return reg[name]


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/n"`` (0 ≤ i < n) → ``(i, n)``; None → ``(0, 1)``."""
    if spec is None or spec == "":
        return 0, 1
    try:
        i, n = (int(v) for v in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard i/n needs n >= 1 and 0 <= i < n, got {spec!r}")
    return i, n
