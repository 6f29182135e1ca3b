"""Run every example at its documentation settings and keep what it printed and drew for the site.

    python docs/examples/generate.py                 # all examples (minutes on a CPU)
    python docs/examples/generate.py resnet_hessian  # one

Writes ``docs/examples/output/<example>.txt`` (the printout, with the command line on top) and the figures
into ``docs/examples/figures/``. The example pages include both, so rerun this after changing an example
and commit the results. ``tests/test_examples.py`` runs the same scripts at small settings.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
OUTPUT = REPO / "docs" / "examples" / "output"
FIGURES = REPO / "docs" / "examples" / "figures"

# example -> list of runs; each run: (launcher prefix, flags); the documentation settings are the defaults
# unless listed here
RUNS = {
    "first_lambda_mnist": [([], ["--out", "FIGURES"])],
    "lambda_during_training": [([], ["--out", "FIGURES"])],
    "lambda_penalty": [([], [])],
    # one BasicBlock per stage, 64 images and fewer Lanczos steps than the defaults: minutes on a CPU
    "resnet_hessian": [([], ["--blocks", "1", "--images", "64", "--k", "3", "--max-iter", "24",
                             "--density-iters", "24", "--out", "FIGURES"])],
    "loss_landscape": [([], ["--out", "FIGURES"])],
    "transformer_lambda": [([], [])],
    "hf_lambda": [([], [])],
    "torchrun_spectrum": [([], []),
                          (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], [])],
}


def run(name: str) -> None:
    lines = []
    for prefix, flags in RUNS[name]:
        flags = [str(FIGURES) if f == "FIGURES" else f for f in flags]
        cmd = [sys.executable, *prefix, str(REPO / "examples" / f"{name}.py"), *flags]
        shown = " ".join(["torchrun --standalone --nproc_per_node 2" if prefix else "python",
                          f"examples/{name}.py", *["docs/examples/figures" if f == str(FIGURES) else f
                                                   for f in flags]])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
        if proc.returncode != 0:
            raise SystemExit(f"{shown} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        out = proc.stdout.replace(str(FIGURES), "docs/examples/figures")
        lines += [f"$ {shown}", out.rstrip(), ""]
        print(f"{shown}: {time.perf_counter() - t0:.0f} s", flush=True)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / f"{name}.txt").write_text("\n".join(lines))


def main() -> None:
    names = sys.argv[1:] or list(RUNS)
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        raise SystemExit(f"unknown example(s) {unknown}; known: {sorted(RUNS)}")
    FIGURES.mkdir(parents=True, exist_ok=True)
    for name in names:
        run(name)


if __name__ == "__main__":
    main()
