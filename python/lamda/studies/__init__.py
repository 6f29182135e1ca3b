"""The studies behind ``lamda run <name>`` and ``lamda analyze DIR``, and the registry the CLI reads.

Every study is a subpackage of this package that registers itself when imported (``register``):

```python
register(Experiment(name="selective", help="...", add_arguments=config.add_arguments, run=run.run,
                    analyze=analysis.analyze))
```

``add_arguments(parser)`` adds the study's own flags (the common ones — ``--preset``, ``--out``, ``--data-root``,
``--device``, ``--shard``, ``--download``, ``--seed``, ``--no-progress``, ``--ddp`` — are added by the CLI);
``run(args)`` runs it on the shared grid runner ([`lamda.studies.runner`][lamda.studies.runner]); ``analyze(out_dir)``
(optional) regenerates its analyses from the files on disk. The results folder's ``experiment_config.json`` names the
study so ``lamda analyze DIR`` finds it.

The modules of this package (not subpackages) are what the studies share: the grid runner, the argparse
types, the results folder and seeds, the MNIST-like data choice and the summary tables.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["Experiment", "register", "registry", "get", "broken"]


@dataclass(frozen=True)
class Experiment:
    """A study as the CLI sees it.

    Attributes:
        name: ``lamda run <name>``.
        help: one line for ``lamda list`` and ``--help``.
        add_arguments: ``add_arguments(parser)`` adds the study's own flags.
        run: ``run(args) -> int`` runs it (exit code).
        analyze: ``analyze(out_dir) -> int`` regenerates the analyses from disk (None: the study has none).
        presets: the ``--preset`` choices; default_preset: the default one.
        ddp: it trains through [`lamda.trainer.Trainer`][lamda.trainer.Trainer], so ``lamda run --ddp`` applies.
    """

    name: str
    help: str
    add_arguments: Callable
    run: Callable
    analyze: Optional[Callable] = None
    presets: tuple[str, ...] = ("smoke", "quick", "full")
    default_preset: str = "quick"
    ddp: bool = False


_REGISTRY: dict[str, Experiment] = {}
_BROKEN: dict[str, str] = {}        # subpackage name -> import error (one broken study must not hide the others)
_LOADED = False


def register(exp: Experiment) -> Experiment:
    """Add ``exp`` to the registry (a second, different experiment of the same name is a ``ValueError``)."""
    if exp.name in _REGISTRY and _REGISTRY[exp.name] is not exp:
        raise ValueError(f"experiment {exp.name!r} is registered twice")
    _REGISTRY[exp.name] = exp
    return exp


def registry() -> dict[str, Experiment]:
    """All experiments by name, importing every study subpackage of this package once."""
    global _LOADED
    if not _LOADED:
        for mod in pkgutil.iter_modules(__path__):
            if mod.ispkg:
                try:
                    importlib.import_module(f"{__name__}.{mod.name}")
                except Exception as exc:      # reported by get() and `lamda list`
                    _BROKEN[mod.name] = f"{type(exc).__name__}: {exc}"
        _LOADED = True
    return dict(sorted(_REGISTRY.items()))


def broken() -> dict[str, str]:
    """Study subpackages that failed to import, with their errors."""
    registry()
    return dict(_BROKEN)


def get(name: str) -> Experiment:
    """The experiment ``name``.

    Raises:
        ValueError: no such experiment (the message lists those there are), or its subpackage failed to import.
    """
    reg = registry()
    if name not in reg:
        if name in _BROKEN:
            raise ValueError(f"experiment module {name!r} failed to import: {_BROKEN[name]}")
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(reg) or 'none'}")
    return reg[name]
