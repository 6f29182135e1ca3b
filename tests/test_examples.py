"""Every script in ``examples/`` runs to completion on small settings and prints (or draws) what it promises.

Each example runs in its own process, as a user would start it, with flags that shrink it to seconds; the
documentation's outputs come from the same scripts at larger settings (``docs/examples/generate.py``).
MNIST and CIFAR-10 are read from the offline data root when one is found; otherwise the examples fall back
to scikit-learn's digits data set, which needs no files.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch.distributed as dist

from tests.conftest import find_data_root

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

# script -> (small-setting flags, lines the output must contain, figure it writes under --out or None)
CASES = {
    "first_lambda_mnist.py": (
        ["--train", "128", "--epochs", "1", "--points", "6", "--directions", "3", "--order", "4"],
        ["d_n: shape [6, 3, 4]", "λ per direction:", "λ mean"], "lambda_fit.png"),
    "lambda_during_training.py": (
        ["--train", "128", "--steps", "4", "--every", "2", "--points", "6", "--directions", "3", "--order", "4"],
        ["step", "λ mean ± std"], "lambda_during_training.png"),
    "lambda_penalty.py": (
        ["--train", "128", "--steps", "2", "--points", "8"],
        ["plain", "penalised"], None),
    "resnet_hessian.py": (
        ["--blocks", "1", "--images", "4", "--epochs", "0", "--k", "1", "--max-iter", "4", "--tol", "0.5",
         "--probes", "2", "--density-iters", "3", "--density-probes", "1"],
        ["θ_1 =", "residual", "trace (Hutchinson, 2 probes", "density"], "hessian_density.png"),
    "loss_landscape.py": (
        ["--train", "128", "--epochs", "1", "--resolution", "3", "--steps", "3"],
        ["loss surface (3×3", "barrier"], "loss_landscape.png"),
    "transformer_lambda.py": (
        ["--train", "64", "--epochs", "1", "--points", "4", "--directions", "2", "--order", "3",
         "--check-points", "1"],
        ["backend='auto'", "backend='taylor'", "largest relative difference"], None),
}
TORCHRUN_FLAGS = ["--images", "16", "--points", "4", "--directions", "2", "--order", "3", "--k", "1",
                  "--tol", "0.5", "--max-iter", "4", "--probes", "2"]


def run(cmd: list[str], timeout: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    root = find_data_root()
    if root is not None:
        env["LAMDA_DATA_ROOT"] = str(root)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd[1:])} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_every_example_has_a_case():
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    # torchrun_spectrum.py: its own tests below; hf_lambda.py: tests/test_hf.py (needs transformers)
    assert scripts == set(CASES) | {"torchrun_spectrum.py", "hf_lambda.py"}, \
        "add a case for every example (and only for those)"


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script, tmp_path):
    flags, expected, figure = CASES[script]
    out = run([sys.executable, str(EXAMPLES / script), *flags]
              + (["--out", str(tmp_path)] if figure else []), timeout=240)
    for text in expected:
        assert text in out, f"{script}: {text!r} missing from its output:\n{out}"
    assert "nan" not in out.lower(), f"{script} printed a NaN:\n{out}"
    if figure:
        png = tmp_path / figure
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{script} did not write {figure}"


def test_torchrun_example_equals_one_process():
    """The 2-process run (gloo) prints what one process prints: the same λ and, to rounding, the same spectrum."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    script = str(EXAMPLES / "torchrun_spectrum.py")
    one = run([sys.executable, script, *TORCHRUN_FLAGS], timeout=240)
    two = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               script, *TORCHRUN_FLAGS], timeout=240)
    lam = [ln.split(" in ")[0].replace("world size 1", "") for ln in one.splitlines() if "λ over" in ln]
    lam2 = [ln.split(" in ")[0].replace("world size 2", "") for ln in two.splitlines() if "λ over" in ln]
    assert lam and lam == lam2, f"one process:\n{one}\ntwo processes:\n{two}"
    assert "(8 on rank 0)" in two and "(16 on rank 0)" in one, two
