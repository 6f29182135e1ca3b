"""Command line: ``lamda run <experiment> [flags]`` and ``lamda analyze DIR``.

Experiments come from [`lamda.studies`][lamda.studies] (each study subpackage registers itself). Under ``torchrun``
(``torchrun --nproc_per_node N -m lamda run …``) the process group is set up from the environment and the
experiment's grid is spread over the ranks ([`lamda.studies.runner`][lamda.studies.runner]); with ``--ddp`` all ranks
train each run together instead. Every error a user can act on is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys

from lamda_ext.hessian import rank_local

from . import distributed
from .plots import DPI, DPI_RANGE, figure_dpi
from .result_files import check_output_folder, read_json_object
from .studies import broken, get, registry
from .studies.argtypes import SEED_MAX, number, seed
from .studies.runner import folder_lock, parse_shard, recorded_cells, require_complete
from .trainer import resolve_device

__all__ = ["main", "build_parser"]

# what a user can act on (bad flags, damaged files, a busy folder, a diverged run): one line, exit code 2
_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, FloatingPointError, NotImplementedError)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``lamda run: error: …``; ``--help`` shows the usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_dpi(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dpi", type=number(int, low=DPI_RANGE[0], high=DPI_RANGE[1]), default=DPI,
                   help=f"resolution of the PNG figures, in [{DPI_RANGE[0]}, {DPI_RANGE[1]}] (default {DPI}, the "
                        "studies'; lower draws faster)")


def _add_common(p: argparse.ArgumentParser, exp) -> None:
    p.add_argument("--preset", choices=exp.presets, default=exp.default_preset,
                   help=f"problem size (default {exp.default_preset}): smoke = the smallest run that writes every "
                        "file, quick = CPU-sized, full = the published settings")
    p.add_argument("--out", default=f"runs/{exp.name}", help="results folder (default runs/%(prog)s)".replace("%(prog)s", exp.name))
    p.add_argument("--data-root", default=None, help="data folder (default $LAMDA_DATA_ROOT, then ./data)")
    p.add_argument("--download", action="store_true", help="let torchvision download missing data (needs internet)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (cuda when available)")
    p.add_argument("--shard", default=None, help="i/n: run only every n-th run of the grid, starting at i")
    p.add_argument("--ddp", action="store_true",
                   help="under torchrun: train each run over all ranks with DistributedDataParallel (one run at a "
                        "time) instead of giving each rank its own runs of the grid")
    p.add_argument("--seed", type=seed, default=42, help=f"global seed in [0, {SEED_MAX}] (default 42)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_dpi(p)


def build_parser() -> argparse.ArgumentParser:
    """The ``lamda`` argument parser: ``list``, ``run STUDY`` (with each study's flags) and ``analyze DIR``."""
    parser = _Parser(prog="lamda", description="lamda_ext experiments: curvature rate λ, "
                                     "Hessian spectra and the regularisers built on them")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment")
    exps = run.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, exp in registry().items():
        p = exps.add_parser(name, help=exp.help, description=exp.help)
        _add_common(p, exp)
        exp.add_arguments(p)
    an = sub.add_parser("analyze", help="re-run the post-hoc analyses of a results folder from the files on disk")
    an.add_argument("dir", help="a results folder written by `lamda run`")
    _add_dpi(an)
    sub.add_parser("list", help="list the experiments")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``lamda`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for name, exp in registry().items():
            print(f"{name:12s} {exp.help}")
        for name, err in broken().items():
            print(f"{name:12s} BROKEN: {err}")
        return 0
    if args.command == "run":
        return _run(args)
    with figure_dpi(args.dpi):
        return _analyze(pathlib.Path(args.dir))


def _fail(where: str, exc: BaseException) -> int:
    print(f"{where}: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
    return 2


def _run(args) -> int:
    where = f"lamda run {args.experiment}"
    try:
        exp = get(args.experiment)
        resolve_device(args.device)
        parse_shard(args.shard)
        out = check_output_folder(args.out)
        launched = distributed.init_from_env(args.device)
        if args.ddp and not launched:
            raise ValueError("--ddp needs torchrun (torchrun --nproc_per_node N -m lamda run … --ddp)")
        if args.ddp and not exp.ddp:
            raise ValueError(f"--ddp: {exp.name} trains with its own loop, not lamda.trainer.Trainer; run it "
                             f"without --ddp (its runs are then spread over the ranks)")
        distributed.request_ddp(args.ddp)
        # grid mode: each rank's cells are its own work (no Hessian sharding); --ddp: all ranks share each run
        scope = contextlib.nullcontext() if args.ddp else rank_local()
        with folder_lock(out), scope, figure_dpi(args.dpi):
            rc = int(exp.run(args) or 0)
    except _USER_ERRORS as exc:
        return _fail(where, exc)
    distributed.shutdown()
    return rc


def _analyze(out: pathlib.Path) -> int:
    where = "lamda analyze"
    try:
        if not out.is_dir():
            raise ValueError(f"{out} is not a folder (give a results folder written by `lamda run`)")
        cfg_path = out / "experiment_config.json"
        if not cfg_path.is_file():
            raise ValueError(f"{out} has no experiment_config.json (not a results folder of `lamda run`)")
        name = read_json_object(cfg_path, required=("experiment",))["experiment"]
        if not isinstance(name, str):
            raise ValueError(f"{cfg_path}: 'experiment' must be a name, got {name!r}; the file is damaged")
        exp = get(name)
        if exp.analyze is None:
            raise ValueError(f"experiment {name!r} has no post-hoc analysis")
        cells = recorded_cells(out)
        if cells is not None:
            require_complete(out, cells)
        with folder_lock(out):
            return int(exp.analyze(out) or 0)
    except _USER_ERRORS as exc:
        return _fail(where, exc)


if __name__ == "__main__":
    sys.exit(main())
