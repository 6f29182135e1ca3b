"""`torchrun … -m lamda run` (gloo, 2 CPU ranks): grids spread over ranks equal one process, a killed rank
resumes without redoing finished cells, and `--ddp` training equals one process with the same global batch.

Tolerances: grid cells run the same code with one thread in both set-ups, so their numbers must agree to
rtol 1e-10 (in practice bit for bit); DDP runs in float64 and must agree to 1e-12 in every parameter (the only
difference is the order in which gloo sums the two ranks' gradients).
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

from lamda import result_files
from lamda.cli import main
from tests._helpers import DRAFT

HERE = pathlib.Path(__file__).resolve().parent

pytestmark = [pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="torch.distributed with gloo is not available"),
              pytest.mark.xdist_group("torchrun")]      # the one-process references are computed once

TIME_COLUMNS = {"train_time_s", "epoch_time_s", "train_time_s_mean", "train_time_s_std", "train_time_s_n",
                "hessian_time_s"}


def torchrun(args: list[str], *, restarts: int = 0, env_extra: dict | None = None, timeout: int = 300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", str(restarts), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-4000:])
    return done.stdout + done.stderr


def done_lines(log: str, tag: str) -> dict[str, list[int]]:
    """cell key -> the ranks that logged it as done."""
    out: dict[str, list[int]] = {}
    for rank, key in re.findall(rf"\[{tag}\] rank (\d+)/2: (\S+) done in", log):
        out.setdefault(key, []).append(int(rank))
    return out


def assert_same_csv(a: pathlib.Path, b: pathlib.Path) -> None:
    ra, rb = result_files.read_csv(a), result_files.read_csv(b)
    assert len(ra) == len(rb) and ra and list(ra[0]) == list(rb[0]), a
    for x, y in zip(ra, rb):
        for k in x:
            if k in TIME_COLUMNS:
                continue
            if isinstance(x[k], float) or isinstance(y[k], float):
                np.testing.assert_allclose(x[k], y[k], rtol=1e-10, atol=1e-12, err_msg=f"{a} {k}")
            else:
                assert x[k] == y[k], (a, k)


def assert_same_npz(a: pathlib.Path, b: pathlib.Path) -> None:
    za, zb = result_files.read_npz(a), result_files.read_npz(b)
    assert sorted(za) == sorted(zb)
    for k in za:
        if za[k].dtype.kind in "fc":
            np.testing.assert_allclose(za[k], zb[k], rtol=1e-10, atol=1e-12, err_msg=k)
        else:
            np.testing.assert_array_equal(za[k], zb[k], err_msg=k)


SMOKE = {      # experiment -> its smoke flags (each grid has at least one cell per rank)
    "probe": ["--preset", "smoke", "--optimizers", "sgd,probe,sgd_matched", "--epochs", "1"],
    "spectrum": ["--preset", "smoke", "--hidden", "32,32", "--k", "4", "--hessian-samples", "64"],
}


def _args(exp, data_root, out):
    return ["-m", "lamda", "run", exp, *SMOKE[exp], "--data-root", str(data_root), "--out", str(out),
            "--no-progress", *DRAFT]


@pytest.fixture(scope="module")
def single(data_root, tmp_path_factory):
    """Each smoke preset once in one plain process (the reference), computed on first use."""
    torch.set_num_threads(1)
    done = {}

    def get(exp):
        if exp not in done:
            out = tmp_path_factory.mktemp("single") / exp
            assert main(_args(exp, data_root, out)[2:]) == 0
            done[exp] = out
        return done[exp]
    return get


def assert_same_results(out: pathlib.Path, ref: pathlib.Path) -> None:
    """Every CSV, npz and npy file of ``ref`` (outside dot-folders) has the same numbers in ``out``; the
    checkpoints' weights too. Time columns are left out."""
    files = [f for f in sorted(ref.rglob("*")) if f.is_file()
             and not any(p.startswith(".") for p in f.relative_to(ref).parts)]
    checked = 0
    for f in files:
        g = out / f.relative_to(ref)
        assert g.is_file(), g
        if f.suffix == ".csv":
            assert_same_csv(g, f)
        elif f.suffix == ".npz":
            assert_same_npz(g, f)
        elif f.suffix == ".npy":
            np.testing.assert_allclose(np.load(g), np.load(f), rtol=1e-10, atol=1e-12)
        elif f.name == "final_model.pt":
            a, b = result_files.load_checkpoint(g)["model"], result_files.load_checkpoint(f)["model"]
            for k in b:
                torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12)
        else:
            continue
        checked += 1
    assert checked >= 3, f"only {checked} result files compared under {ref}"


@pytest.mark.parametrize("exp", sorted(SMOKE))
def test_grid_over_two_ranks_equals_one_process(exp, data_root, tmp_path, single):
    out = tmp_path / exp
    log = torchrun(_args(exp, data_root, out))
    cells = result_files.read_json(out / ".cells" / "grid.json")["cells"]
    done = done_lines(log, exp)
    # each cell computed once, by the rank the round-robin gives it; both ranks worked
    assert done == {c["key"]: [j % 2] for j, c in enumerate(cells)}, done
    assert len(cells) >= 2
    for c in cells:
        assert result_files.read_json(out / ".cells" / f"{c['key']}.done.json")["world"] == 2
    # rank 0 alone wrote the aggregates, once
    assert log.count("rank 0 wrote the analysis") == 1 and "rank 1 wrote" not in log
    assert (out / "summary.md").is_file() and not (out / ".lamda.lock").exists()
    assert_same_results(out, single(exp))


def test_killed_rank_is_restarted_and_redoes_no_finished_cell(data_root, tmp_path, single):
    out = tmp_path / "probe"
    flag = tmp_path / "rank1_exited"
    args = [a for a in _args("probe", data_root, out) if a != "--no-progress"]   # log the skipped cells too
    # rank 1 dies right after its first cell's marker (tests/torchrun_crash_worker.py), once
    log = torchrun([str(HERE / "torchrun_crash_worker.py"), str(flag), "1", *args[2:]], restarts=1)
    assert flag.is_file() and "rank 1 exits after its first cell" in log
    done = done_lines(log, "probe")
    cells = [c["key"] for c in result_files.read_json(out / ".cells" / "grid.json")["cells"]]
    assert sorted(done) == sorted(cells)
    assert all(len(r) == 1 for r in done.values()), done             # no finished cell was computed twice
    # rank 1's first cell was finished before the crash and skipped after the restart
    assert f"rank 1/2: {cells[1]} finished earlier, skipped" in log
    assert log.count("rank 0 wrote the analysis") == 1
    assert_same_results(out, single("probe"))


def test_ddp_training_equals_one_process(tmp_path):
    from tests.torchrun_ddp_worker import VARIANTS, build
    torchrun([str(HERE / "torchrun_ddp_worker.py"), str(tmp_path / "ddp")])
    torch.set_num_threads(1)
    for v in VARIANTS:
        got = torch.load(tmp_path / "ddp" / f"{v}.pt")
        tr = build(v, ddp=False)
        init = {k: t.clone() for k, t in tr.model.state_dict().items()}
        res = tr.run(tmp_path / "single" / v)
        ref = tr.model.state_dict()
        assert max((init[k] - ref[k]).abs().max().item() for k in ref) > 1e-2     # training moved the weights
        for k in ref:
            torch.testing.assert_close(got["params"][k], ref[k], rtol=1e-12, atol=1e-12, msg=f"{v} {k}")
        for a, b in zip(got["rows"], res.rows):      # the logged global losses and penalties agree too
            for k in ("train_loss", "test_acc", "running_loss", "penalty_lambda_penalty"):
                if k in b:
                    assert a[k] == pytest.approx(b[k], rel=1e-12), (v, k)
        # rank 0 alone wrote the run folder: the finished run's files and no leftovers
        assert result_files.load_checkpoint(tmp_path / "ddp" / v / "final_model.pt")["complete"]
        assert not (tmp_path / "ddp" / v / "checkpoint.pt").exists()
