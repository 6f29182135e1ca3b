"""Data-parallel Hessian tools: 2 CPU processes with gloo give the same numbers as one process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lamda_ext.hessian import HessianOperator, hessian_density, hessian_eigs, hessian_trace

from tests._helpers import DT, batch, mlp, train_briefly

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def _problem():
    model = mlp(seed=0)
    x, y = batch(model, B=60, seed=1)
    train_briefly(model, x, y, steps=20)
    return model, x, y


def _parts(x, y):
    return [(x[i:i + 13], y[i:i + 13]) for i in range(0, x.shape[0], 13)]


def _measure(model, data) -> dict:
    op = HessianOperator(model, "cross_entropy", data)
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(0), dtype=DT)
    vals, vecs = hessian_eigs(op, k=5, generator=torch.Generator().manual_seed(1))
    vals_s, _ = hessian_eigs(op, k=5, method="eigsh", generator=torch.Generator().manual_seed(1))
    hv = op @ v
    return {
        "hv": hv,
        "local_samples": op.local_samples,
        "eigs": vals,
        "eigs_eigsh": vals_s,
        "vec0": vecs[0] * torch.sign(vecs[0].sum()),
        "trace": torch.tensor(hessian_trace(op, probes=40, generator=torch.Generator().manual_seed(2))),
        "density": hessian_density(op, iters=10, probes=4, grid=50, generator=torch.Generator().manual_seed(3))[1],
        # the other curvatures shard the same way; the MC Fisher's draws are seeded per batch and sample position
        **{c: HessianOperator(model, "cross_entropy", data, curvature=c, mc_samples=2, mc_seed=4) @ v
           for c in ("ggn", "fisher_mc", "empirical_fisher")},
        "hutchpp": torch.tensor(hessian_trace(op, matvecs=12, method="hutch++",
                                              generator=torch.Generator().manual_seed(5))),
    }


def _worker(rank: int, world: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # a file rendezvous: no rank owns a store server that the other still needs while shutting down
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank,
                            world_size=world)
    try:
        model, x, y = _problem()
        single = _measure(model, (x, y))                                       # a single batch: split by samples
        multi = _measure(model, _parts(x, y))                                  # 5 uneven batches: split by batch
        torch.save({"single": single, "multi": multi}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()          # nobody tears gloo down while the other rank still exchanges messages
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    model, x, y = _problem()
    ref = _measure(model, (x, y))
    # the MC Fisher of 5 batches draws per batch position: another (fixed) matrix than that of one batch
    mc_multi = HessianOperator(model, "cross_entropy", _parts(x, y), curvature="fisher_mc", mc_samples=2,
                               mc_seed=4) @ torch.randn(ref["hv"].shape[0], generator=torch.Generator().manual_seed(0),
                                                        dtype=DT)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for res in results:
        for key in ("single", "multi"):
            got = res[key]
            torch.testing.assert_close(got["hv"], ref["hv"], rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(got["eigs"], ref["eigs"], rtol=1e-8, atol=1e-12)
            torch.testing.assert_close(got["eigs_eigsh"], ref["eigs"], rtol=1e-8, atol=1e-12)
            torch.testing.assert_close(got["vec0"], ref["vec0"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got["trace"], ref["trace"], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got["density"], ref["density"], rtol=1e-6, atol=1e-8)
            for c in ("ggn", "fisher_mc", "empirical_fisher", "hutchpp"):
                want = mc_multi if (key, c) == ("multi", "fisher_mc") else ref[c]
                torch.testing.assert_close(got[c], want, rtol=1e-10, atol=1e-13, msg=f"{key} {c}")
    # the data was really split: samples 0-29 / 30-59 of the single batch, batches {0, 2, 4} / {1, 3}
    assert [r["single"]["local_samples"] for r in results] == [30, 30]
    assert [r["multi"]["local_samples"] for r in results] == [13 + 13 + 8, 13 + 13]
    assert ref["local_samples"] == 60
    # both ranks hold identical results
    torch.testing.assert_close(results[0]["multi"]["eigs"], results[1]["multi"]["eigs"], rtol=0, atol=0)


_SHUTDOWN_SCRIPT = """
import gc, weakref
import torch, torch.distributed as dist
from lamda import distributed
assert distributed.init_from_env("cpu")
t = torch.ones(3)
dist.all_reduce(t)
import torch._dynamo  # what torch.func and fake tensors import on first use
group = weakref.ref(dist.group.WORLD)
distributed.shutdown()
gc.collect()
print("group freed" if group() is None else "group alive")
"""


def test_shutdown_frees_the_group_after_torch_dynamo_is_imported():
    """After `lamda.distributed.shutdown` no module still holds the process group (its gloo worker threads end
    there, not at interpreter exit, where one still releasing a finished collective aborts the process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _SHUTDOWN_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "group freed", done.stdout
