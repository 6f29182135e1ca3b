"""Command line: ``lamda run <experiment> [flags]`` and ``lamda analyze DIR``.

Experiments come from :mod:`lamda.experiments` (each module registers itself).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from . import io as lio
from .experiments import broken, get, registry

__all__ = ["main", "build_parser"]


def _add_common(p: argparse.ArgumentParser, exp) -> None:
    p.add_argument("--preset", choices=exp.presets, default=exp.default_preset,
                   help=f"problem size (default {exp.default_preset}): smoke = minutes-scale check that writes every "
                        "file, quick = CPU-sized, full = the published settings")
    p.add_argument("--out", default=f"runs/{exp.name}", help="results folder (default runs/%(prog)s)".replace("%(prog)s", exp.name))
    p.add_argument("--data-root", default=None, help="data folder (default $LAMDA_DATA_ROOT, then ./data)")
    p.add_argument("--download", action="store_true", help="let torchvision download missing data (needs internet)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (cuda when available)")
    p.add_argument("--shard", default=None, help="i/n: run only every n-th run of the grid, starting at i")
    p.add_argument("--seed", type=int, default=42, help="global seed (default 42)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamda", description="lamda_ext experiments: curvature rate λ, "
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
    sub.add_parser("list", help="list the experiments")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for name, exp in registry().items():
            print(f"{name:12s} {exp.help}")
        for name, err in broken().items():
            print(f"{name:12s} BROKEN: {err}")
        return 0
    if args.command == "run":
        try:
            return int(get(args.experiment).run(args) or 0)
        except (ValueError, FileNotFoundError, TypeError) as exc:
            print(f"lamda run {args.experiment}: error: {exc}", file=sys.stderr)
            return 2
    out = pathlib.Path(args.dir)
    cfg_path = out / "experiment_config.json"
    if not cfg_path.is_file():
        print(f"lamda analyze: {out} has no experiment_config.json (not a results folder of `lamda run`)",
              file=sys.stderr)
        return 2
    name = lio.read_json(cfg_path).get("experiment")
    try:
        exp = get(name)
    except ValueError as exc:
        print(f"lamda analyze: {exc}", file=sys.stderr)
        return 2
    if exp.analyze is None:
        print(f"lamda analyze: experiment {name!r} has no post-hoc analysis", file=sys.stderr)
        return 2
    try:
        return int(exp.analyze(out) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lamda analyze: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
