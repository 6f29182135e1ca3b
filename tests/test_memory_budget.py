"""memory_budget and plans: a split call gives the unsplit call's numbers and gradients, the plan predicts
the peak, and a budget too small is refused with the smallest one that works."""
from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

import lamda_ext
from lamda_ext.memory import AllocationTracker, resolve_budget
from lamda_ext.planning import SAFETY
from lamda_ext.split import Job
from lamda_ext.checks import check_forward
from lamda_ext.hvp import HVP_KEEP, HVP_ROW_PARAMS, HVP_ROW_POINT, hvp_chunks
from tests._helpers import needs_backend, rel_err
from tests._models import build

DT = torch.float64


class Block(nn.Module):
    """A pre-norm transformer block with dropout, on [B, T, D] tokens, and a classification head."""

    def __init__(self, dim=8, classes=4):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.2, batch_first=True, norm_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.enc(x).mean(dim=1))


def _case(name):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "block":
        m, x = Block().double(), torch.randn(3, 5, 8, generator=g, dtype=DT)
        return m, x, torch.randint(0, 4, (3,), generator=g)
    if name == "mobilenet":
        m = torchvision.models.mobilenet_v3_small(num_classes=5).double()
        x = torch.randn(3, 3, 32, 32, generator=g, dtype=DT)
        return m, x, torch.randint(0, 5, (3,), generator=g)
    m, x, y = build(name)
    return m, x, y


def _split_budget(model, x, y, grad: bool = False, **kw) -> int:
    """A budget that makes the call take several chunks (twice the smallest one that works, for a
    differentiable call when ``grad``)."""
    with torch.set_grad_enabled(grad):
        p = lamda_ext.plan(model, x, y, memory_budget=2**40, **kw)
    return 2 * (p.min_backward_budget if grad else p.min_budget)


CASES = ["functional", "cifar_resnet", "block", "mobilenet"]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("wrt", ["input", "params"])
def test_split_equals_unsplit(name, train, wrt):
    m, x, y = _case(name)
    m.train(train)
    order, K = 3, 5
    kw = dict(order=order, directions=K, wrt=wrt, generator=torch.Generator().manual_seed(3))
    dirs = (lamda_ext.random_directions(x, K, kw.pop("generator")) if wrt == "input"
            else lamda_ext.random_param_directions(m, K, kw.pop("generator")))
    kw["directions"] = dirs
    budget = _split_budget(m, x, y, **kw)
    with torch.no_grad():
        p = lamda_ext.plan(m, x, y, memory_budget=budget, **kw)
        assert p.n_chunks > 1, str(p)
        torch.manual_seed(5)
        split = lamda_ext.directional_derivs(m, x, y, memory_budget=budget, **kw)
        torch.manual_seed(5)
        whole = lamda_ext.directional_derivs(m, x, y, memory_budget=2**40, **kw)
    assert rel_err(split, whole) <= 1e-12
    if not train and wrt == "input":   # chunks of points and directions reproduce every entry
        assert torch.equal(split, whole) or rel_err(split, whole) <= 1e-14


@pytest.mark.parametrize("name", ["functional", "block"])
@pytest.mark.parametrize("wrt", ["input", "params"])
def test_recomputed_backward_equals_graph(name, wrt):
    """A differentiable call whose graph does not fit recomputes chunk by chunk in backward: the same values,
    parameter gradients and loss gradients as the graph of the unsplit call (dropout masks replayed)."""
    m, x, y = _case(name)
    m.train()
    x = x.clone().requires_grad_(wrt == "input")
    kw = dict(order=3, directions=4, wrt=wrt, generator=torch.Generator().manual_seed(2), return_loss=True)
    budget = _split_budget(m, x, y, grad=True, **{k: v for k, v in kw.items() if k != "return_loss"})
    params = [p for p in m.parameters() if p.requires_grad]
    results = []
    for b in (budget, 2**40):
        kw["generator"] = torch.Generator().manual_seed(2)
        torch.manual_seed(7)
        d, loss = lamda_ext.directional_derivs(m, x, y, memory_budget=b, **kw)
        obj = d.pow(2).sum() + loss.sum()
        inputs = params + ([x] if wrt == "input" else [])
        results.append((d.detach(), torch.autograd.grad(obj, inputs), torch.get_rng_state()))
    (d1, g1, r1), (d2, g2, r2) = results
    assert rel_err(d1, d2) <= 1e-12
    for a, b in zip(g1, g2):
        assert rel_err(a.reshape(-1, 1), b.reshape(-1, 1)) <= 1e-11   # on the scale of the whole tensor
    assert torch.equal(r1, r2)   # the RNG ends where the unsplit call leaves it


def test_recompute_mode_is_planned_when_the_graph_does_not_fit():
    m, x, y = _case("block")
    kw = dict(order=3, directions=4)
    budget = _split_budget(m, x, y, grad=True, **kw)
    p = lamda_ext.plan(m, x, y, memory_budget=budget, **kw)      # grad mode on, parameters require grad
    assert p.mode == "recompute" and len(p.recompute_chunks) >= 1
    with torch.no_grad():
        assert lamda_ext.plan(m, x, y, memory_budget=budget, **kw).mode == "measure"


@pytest.mark.parametrize("budget", [10**6, 1])
def test_budget_too_small_names_the_smallest_that_works(budget):
    m = torchvision.models.resnet18(num_classes=10).eval()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 10, (2,))
    with torch.no_grad(), pytest.raises(ValueError, match=r"too small .* smallest budget that works is about (\d+)"):
        lamda_ext.directional_derivs(m, x, y, order=2, directions=2, memory_budget=budget)
    with torch.no_grad():
        p = lamda_ext.plan(m, x, y, order=2, directions=2, memory_budget=2**40)
        d = lamda_ext.directional_derivs(m, x, y, order=2, directions=2, memory_budget=p.min_budget)
    assert d.shape == (2, 2, 2)


@pytest.mark.parametrize("bad, err", [("lots", TypeError), (-5, ValueError), (0, ValueError), (True, TypeError),
                                      (1.5, TypeError)])
def test_budget_argument_is_checked(bad, err):
    m, x, y = _case("functional")
    with pytest.raises(err, match="memory_budget"):
        lamda_ext.directional_derivs(m, x, y, order=2, directions=2, memory_budget=bad)


def test_auto_budget_is_a_fraction_of_free_memory():
    page = os.sysconf("SC_PAGE_SIZE")
    free, total = os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    b = resolve_budget("auto", torch.device("cpu"))
    assert 0.4 * free <= b <= 0.5 * total      # half of the available memory: at least the free pages, at most all
    assert resolve_budget(12345, torch.device("cpu")) == 12345


def _wide(name):
    """Models whose working memory dwarfs their inputs (the input checks of a call then do not matter)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "mlp":
        m = nn.Sequential(nn.Linear(8, 512), nn.GELU(), nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 4))
        x = torch.randn(12, 8, generator=g)
    elif name == "cnn":
        m = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3),
                          nn.SiLU(), nn.Flatten(), nn.Linear(32 * 6 * 6, 4))
        x = torch.randn(12, 1, 8, 8, generator=g)
    else:
        m = nn.Sequential(nn.TransformerEncoderLayer(16, 2, 256, dropout=0.0, batch_first=True), nn.Flatten(),
                          nn.Linear(4 * 16, 4))
        x = torch.randn(12, 4, 16, generator=g)
    return m.double().eval(), x.double(), torch.randint(0, 4, (12,), generator=g)


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_plan_predicts_the_peak(name, monkeypatch):
    """The predicted peak of a split call is within 25 % of the largest peak measured on its chunks (the
    working memory the budget bounds; the call's input checks come before it)."""
    m, x, y = _wide(name)
    kw = dict(order=4, directions=lamda_ext.random_directions(x, 6, torch.Generator().manual_seed(0)))
    peaks = []
    run = Job.run

    def tracked(job):
        with AllocationTracker() as tr:
            out = run(job)
        peaks.append(tr.peak)
        return out

    with torch.no_grad():
        budget = 3 * lamda_ext.plan(m, x, y, memory_budget=2**40, **kw).min_budget
        p = lamda_ext.plan(m, x, y, memory_budget=budget, **kw)
        monkeypatch.setattr(Job, "run", tracked)
        lamda_ext.directional_derivs(m, x, y, memory_budget=budget, **kw)
    assert p.n_chunks > 1 and len(peaks) == p.n_chunks
    assert abs(p.predicted_peak - max(peaks)) <= 0.25 * max(peaks), (p.predicted_peak, peaks)
    assert max(peaks) <= budget


def test_plan_is_logged_at_debug_level(caplog):
    m, x, y = _case("functional")
    with caplog.at_level(logging.DEBUG, logger="lamda_ext"), torch.no_grad():
        lamda_ext.directional_derivs(m, x, y, order=2, directions=3, memory_budget=2**40)
    assert any(r.getMessage().startswith("plan: B=3 points") for r in caplog.records)


def test_allocation_tracker_counts_what_is_alive():
    with AllocationTracker() as tr:
        a = torch.empty(1000, dtype=torch.float64)       # 8000 bytes
        b = a.view(10, 100)                               # a view: no new storage
        c = torch.empty(500, dtype=torch.float32)         # 2000 bytes
        del a, c
        assert tr.live == 8000                            # b keeps a's storage alive
        del b
        d = torch.empty(100, dtype=torch.float64)         # 800 bytes
    assert (tr.peak, tr.total, tr.live) == (10000, 10800, 800)
    del d
    assert tr.live == 0


@pytest.mark.parametrize("name, wrt", [("functional", "params"), ("functional", "input"), ("cifar_resnet", "params")])
def test_hvp_split_equals_unsplit(name, wrt):
    """hvp within a budget that splits the points (eval mode) and the directions gives the unsplit numbers."""
    m, x, y = _case(name)
    m.eval()
    g = torch.Generator().manual_seed(4)
    P = sum(p.numel() for p in m.parameters())
    v = torch.randn((3, P) if wrt == "params" else (3,) + tuple(x.shape), generator=g, dtype=DT)
    whole = lamda_ext.hvp(m, x, y, v, wrt=wrt, memory_budget=2**40)
    forward = check_forward(m, x, y, "cross_entropy") / x.shape[0]
    pbytes = P * 8 if wrt == "params" else 0
    budget = int((forward * (HVP_KEEP + HVP_ROW_POINT)
                  + HVP_ROW_PARAMS * pbytes) / SAFETY) + 1     # one point, one direction
    assert hvp_chunks(x.shape[0], 3, forward, pbytes, budget, True) == (1, 1)
    split = lamda_ext.hvp(m, x, y, v, wrt=wrt, memory_budget=budget)
    assert rel_err(split.reshape(3, -1), whole.reshape(3, -1), dim=0) <= 1e-12
    with pytest.raises(ValueError, match="smallest budget that works"):
        lamda_ext.hvp(m, x, y, v, wrt=wrt, memory_budget=budget // 2)


@pytest.mark.skipif(os.environ.get("LAMDA_SLOW_TESTS") != "1", reason="a ViT-B-width model in float64 against nested "
                    "torch.func.jvp at order 6: minutes; set LAMDA_SLOW_TESTS=1")
def test_vit_split_matches_func_and_one_direction_at_a_time():
    """A ViT-B-width 2-block ViT (float64, 64×64 images, patch 16) split within a budget matches nested
    torch.func.jvp and the same directions taken one at a time."""
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(64, 16, 2, 12, 768, 3072, num_classes=10)
    nn.init.normal_(m.heads.head.weight, std=0.05)
    m = m.double().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 3, 64, 64, generator=g, dtype=DT), torch.randint(0, 10, (1,), generator=g)
    u = lamda_ext.random_directions(x, 3, g)
    with torch.no_grad():
        budget = 2 * lamda_ext.plan(m, x, y, order=6, directions=u, memory_budget=2**40).min_budget
        split = lamda_ext.directional_derivs(m, x, y, order=6, directions=u, memory_budget=budget)
        single = torch.cat([lamda_ext.directional_derivs(m, x, y, order=6, directions=u[k:k + 1])
                            for k in range(3)], dim=1)
    ref = lamda_ext.directional_derivs(m, x, y, order=6, directions=u, backend="func")
    assert rel_err(split, ref) <= 1e-8
    assert rel_err(split, single) <= 1e-12


@pytest.mark.skipif(os.environ.get("LAMDA_SLOW_TESTS") != "1", reason="ViT-B/16 at 224×224, K = 15 and 15 single "
                    "directions, fused and taylor: minutes; set LAMDA_SLOW_TESTS=1")
@pytest.mark.parametrize("backend", ["fused", "taylor"])
def test_vit_b_16_all_directions_equal_one_at_a_time(backend):
    """torchvision's ViT-B/16 (float32, one 224×224 image, eval) with default arguments: K = 15 directions at N = 6
    in one call give the numbers of the 15 directions taken one call each (≤ 1e-6 per order)."""
    needs_backend(backend)
    torch.manual_seed(0)
    m = torchvision.models.vit_b_16(num_classes=10).eval()
    nn.init.normal_(m.heads.head.weight, std=0.05)          # torchvision starts the head at zero: constant logits
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 3, 224, 224, generator=g), torch.randint(0, 10, (1,), generator=g)
    u = lamda_ext.random_directions(x, 15, g)
    with torch.no_grad():
        together = lamda_ext.directional_derivs(m, x, y, order=6, directions=u, backend=backend)
        single = torch.cat([lamda_ext.directional_derivs(m, x, y, order=6, directions=u[k:k + 1], backend=backend)
                            for k in range(15)], dim=1)
    assert together.shape == (1, 15, 6) and together.abs().amax() > 0
    assert rel_err(together, single) <= 1e-6


_FAULTS = """
import resource, torch
from lamda_ext.memory import _glibc, heap_reuse

def faults_per_tensor(n):
    out = []
    for _ in range(n):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(2**23, dtype=torch.float64)      # 64 MiB, freed at once
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return out

if _glibc() is None:
    print("not glibc")
else:
    outside = min(faults_per_tensor(3))
    with heap_reuse(torch.device("cpu")):
        inside = max(faults_per_tensor(8)[-3:])          # after the heap has grown
    print(inside, outside)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc options")
def test_heap_reuse_serves_large_tensors_without_page_faults():
    """In a fresh process (the heap's history decides where a block comes from), glibc maps and unmaps every
    64 MiB tensor — one page fault per page — while inside heap_reuse their pages are reused once the heap has
    grown."""
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "not glibc":
        pytest.skip("not glibc")
    inside, outside = map(int, out.stdout.split())
    pages = 2**26 // 4096
    assert inside < 0.1 * pages < 0.9 * pages < outside, (inside, outside)


class LongAttention(nn.Module):
    """One attention block over 96 tokens: the attention scores dominate the working memory."""

    def __init__(self, dim=8, classes=3):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.enc(x, is_causal=False).mean(dim=1))


def test_attention_rows_when_one_point_does_not_fit():
    """A budget below the smallest chunk's takes the attention scores a block of query rows at a time: the plan
    says so and the numbers are the unsplit call's."""
    torch.manual_seed(0)
    m = LongAttention().double().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 96, 8, generator=g, dtype=DT), torch.randint(0, 3, (2,), generator=g)
    kw = dict(order=4, directions=lamda_ext.random_directions(x, 2, g))
    with torch.no_grad():
        whole = lamda_ext.directional_derivs(m, x, y, memory_budget=2**40, **kw)
        unit = lamda_ext.plan(m, x, y, memory_budget=2**40, **kw).min_budget
        p = lamda_ext.plan(m, x, y, memory_budget=int(0.7 * unit), **kw)
        rows = lamda_ext.directional_derivs(m, x, y, memory_budget=int(0.7 * unit), **kw)
    assert p.attention_rows is not None and p.attention_rows < 96 and "query rows at a time" in str(p)
    assert rel_err(rows, whole) <= 1e-12


def test_a_backward_pass_that_does_not_fit_is_refused_when_asked_for():
    """Values within a budget too small for any chunk's autograd graph; the backward pass names the budget."""
    m, x, y = _case("block")
    kw = dict(order=3, directions=3)
    p = lamda_ext.plan(m, x, y, memory_budget=2**40, **kw)
    assert p.min_backward_budget > p.min_budget
    budget = (p.min_budget + p.min_backward_budget) // 2
    assert "would be refused" in str(lamda_ext.plan(m, x, y, memory_budget=budget, **kw))
    d = lamda_ext.directional_derivs(m, x, y, memory_budget=budget, **kw)
    assert d.requires_grad and torch.isfinite(d).all()
    with pytest.raises(ValueError, match="too small to differentiate .* smallest budget that works"):
        d.sum().backward()


# ---------------------------------------------------------------- HessianOperator within memory_budget

def _small_cnn(B=16, width=4, side=8, dropout=0.0):
    """A small CNN with batch norm (eval) on float64 images, its (x, y) and a list of two batches."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3),
              nn.Tanh(), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    m = nn.Sequential(*layers, nn.Linear(width * (side - 2) ** 2, 5)).double()
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    m.eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(B, 3, side, side, generator=g, dtype=DT), torch.randint(0, 5, (B,), generator=g)
    return m, x, y


def _split_pair(m, data, curvature, **kw):
    """The operator with a budget that fits everything unsplit, and one whose budget cuts the batches into slices."""
    whole = lamda_ext.HessianOperator(m, "cross_entropy", data, curvature=curvature, memory_budget=2**40, **kw)
    unit = whole.memory_plan().min_budget
    split = lamda_ext.HessianOperator(m, "cross_entropy", data, curvature=curvature, memory_budget=2 * unit, **kw)
    return whole, split


@pytest.mark.parametrize("curvature", ["hessian", "ggn", "fisher_mc", "empirical_fisher"])
def test_operator_split_equals_unsplit(curvature):
    """Within a budget that cuts each batch into slices of samples, products and quadratic forms are those of the
    unsplit operator (float64, ≤ 1e-12): the slices are weighted by their sample counts, and fisher_mc keeps the
    targets drawn for the whole batch (same seed, same matrix). Eigenvalues and traces too for the Hessian (they
    are built on products and forms; the GGN-type curvatures share one slicing, with another middle factor)."""
    m, x, y = _small_cnn()
    data = [(x[:10], y[:10]), (x[10:], y[10:])]
    whole, split = _split_pair(m, data, curvature, mc_samples=2, mc_seed=3)
    P = whole.size
    V = torch.randn(4, P, generator=torch.Generator().manual_seed(5), dtype=DT)
    a, b = whole @ V, split @ V
    assert split.plan.splits_samples and split.plan.sub_batch < 6, str(split.plan)
    assert whole.plan.sub_batch >= 10
    assert rel_err(b, a, dim=1) <= 1e-12
    assert rel_err(split.quadratic_forms(V), whole.quadratic_forms(V), dim=0) <= 1e-12
    if curvature == "fisher_mc":      # the targets matter: another seed is another matrix
        other = lamda_ext.HessianOperator(m, "cross_entropy", data, curvature=curvature, mc_samples=2, mc_seed=4)
        assert rel_err(other @ V, a, dim=1) > 1e-6
    if curvature != "hessian":
        return
    kw = dict(k=3, max_iter=40, tol=1e-10)
    ea = lamda_ext.hessian_eigs(whole, generator=torch.Generator().manual_seed(0), **kw).eigenvalues
    eb = lamda_ext.hessian_eigs(split, generator=torch.Generator().manual_seed(0), **kw).eigenvalues
    assert rel_err(eb, ea, dim=0) <= 1e-12
    ta = lamda_ext.hessian_trace(whole, probes=8, generator=torch.Generator().manual_seed(1))
    tb = lamda_ext.hessian_trace(split, probes=8, generator=torch.Generator().manual_seed(1))
    assert abs(float(tb) - float(ta)) <= 1e-12 * abs(float(ta))


def test_operator_peak_stays_within_the_budget():
    """The tracked peak of a product (the first: with the trials; the later ones: with kept linearisations) and of a
    block of quadratic forms stays within a budget that the unsplit product exceeds: one batch is cut into slices;
    as six smaller batches, some of them are kept and the rest recomputed."""
    m, x, y = _small_cnn(B=48, width=16, side=12)
    V = torch.randn(2, sum(p.numel() for p in m.parameters()), generator=torch.Generator().manual_seed(0),
                    dtype=DT)
    whole = lamda_ext.HessianOperator(m, "cross_entropy", (x, y), memory_budget=0)     # unsplit, nothing kept
    with AllocationTracker() as tr:
        ref = whole @ V
    unsplit_peak = tr.peak
    budget = unsplit_peak // 2
    op = lamda_ext.HessianOperator(m, "cross_entropy", (x, y), memory_budget=budget)
    assert op.memory_plan().min_budget < budget
    for _ in range(2):
        with AllocationTracker() as tr:
            out = op @ V
        assert tr.peak <= budget < unsplit_peak, (tr.peak, budget, unsplit_peak)
        assert rel_err(out, ref, dim=1) <= 1e-12
    assert 1 < op.plan.sub_batch < 48 and op.plan.corrected == 1.0
    Z = V.sign()
    with AllocationTracker() as tr:
        q = op.quadratic_forms(Z)
    assert tr.peak <= budget
    assert rel_err(q, whole.quadratic_forms(Z), dim=0) <= 1e-12
    parts = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 48, 8)]
    kept = lamda_ext.HessianOperator(m, "cross_entropy", parts, memory_budget=budget)
    for _ in range(3):
        with AllocationTracker() as tr:
            out = kept @ V
        assert tr.peak <= budget and rel_err(out, ref, dim=1) <= 1e-12
    assert 0 < kept.n_linearizations < 6 and 0 < kept.cached_bytes <= kept.plan.cache_limit


@pytest.mark.parametrize("curvature", ["hessian"])
def test_operator_budget_too_small_names_the_smallest_that_works(curvature):
    m, x, y = _small_cnn()
    V = torch.randn(2, sum(p.numel() for p in m.parameters()), dtype=DT)
    op = lamda_ext.HessianOperator(m, "cross_entropy", (x, y), curvature=curvature, memory_budget=1000)
    with pytest.raises(ValueError, match=r"memory_budget=1000 bytes .* too small for even one sample and one "
                       r"direction .* smallest budget that works is about (\d+) bytes") as err:
        op @ V
    need = int(err.value.args[0].split("works is about ")[1].split(" bytes")[0])
    ok = lamda_ext.HessianOperator(m, "cross_entropy", (x, y), curvature=curvature, memory_budget=need)
    ref = lamda_ext.HessianOperator(m, "cross_entropy", (x, y), curvature=curvature) @ V
    assert ok.memory_plan().sub_batch >= 1 and rel_err(ok @ V, ref, dim=1) <= 1e-12


def test_operator_does_not_split_dependent_samples():
    """With allow_nondeterministic (active dropout) the batch is taken whole and only the directions are split
    (the same masks: the unsplit numbers under the same seed); a loss_fn batch holding a tensor without the sample
    dimension is not cut either; the same data as (x, y) pairs is."""
    m, x, y = _small_cnn(dropout=0.3)
    m[-2].train()
    V = torch.randn(3, sum(p.numel() for p in m.parameters()), generator=torch.Generator().manual_seed(2),
                    dtype=DT)
    kw = dict(allow_nondeterministic=True, chunk=3)
    big = lamda_ext.HessianOperator(m, "cross_entropy", (x, y), memory_budget=2**40, **kw)
    plan = big.memory_plan()
    assert not plan.splits_samples and plan.sub_batch == x.shape[0] and plan.chunk["products"] == 3
    small = lamda_ext.HessianOperator(m, "cross_entropy", (x, y), memory_budget=plan.min_budget, **kw)
    assert small.memory_plan().chunk["products"] < 3
    torch.manual_seed(9)
    a = big @ V
    torch.manual_seed(9)
    b = small @ V
    assert rel_err(b, a, dim=1) <= 1e-12
    with pytest.raises(ValueError, match=r"a batch of 16 samples \(its samples cannot be taken apart\)"):
        lamda_ext.HessianOperator(m, "cross_entropy", (x, y), memory_budget=plan.min_budget // 2, **kw) @ V
    m.eval()
    weights = torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0], dtype=DT)

    def loss_fn(model, batch):
        return nn.functional.cross_entropy(model(batch["x"]), batch["y"], weight=batch["w"])

    tiny = 2 * lamda_ext.HessianOperator(m, "cross_entropy", (x, y), memory_budget=2**40).memory_plan().min_budget
    pairs = lamda_ext.HessianOperator(m, "cross_entropy", (x, y), memory_budget=tiny)
    assert pairs.memory_plan().splits_samples and pairs.plan.sub_batch < x.shape[0]
    dicts = lamda_ext.HessianOperator(m, data={"x": x, "y": y, "w": weights}, loss_fn=loss_fn,
                                      memory_budget=2**40)
    assert not dicts.memory_plan().splits_samples and dicts.plan.sub_batch == x.shape[0]
    assert not dicts.memory_plan().splits_samples


def test_operator_plan_is_readable_and_logged(caplog):
    m, x, y = _small_cnn()
    op = lamda_ext.HessianOperator(m, "cross_entropy", [(x[:10], y[:10]), (x[10:], y[10:])], memory_budget=2**30)
    assert "not yet planned" in repr(op)
    with caplog.at_level(logging.DEBUG, logger="lamda_ext"):
        op.quadratic_forms(torch.ones(2, op.size, dtype=DT))
        op @ torch.ones(op.size, dtype=DT)
    plans = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hessian plan:")]
    assert len(plans) == 2 and "forms" in plans[0] and "products" in plans[1], plans
    p = op.plan
    assert set(p.chunk) == {"forms", "products"} and p.sub_batch >= 10 and p.min_budget < 2**30
    assert f"sub_batch={p.sub_batch}" in repr(op) and "chunk={" in repr(op)
    assert "slices of ≤" in str(p) and "smallest budget" in str(p)


def test_allocation_tracker_follows_storages_past_their_python_objects():
    """Under torch.func transforms and tracing, storages outlive the tensor objects the tracker saw (a linearised
    HVP keeps the traced graph's constants): they count until freed, so the tracker sees what the linearisation
    keeps, and a forward-over-reverse pass is followed without error."""
    from torch.func import grad, jvp

    from lamda_ext.hvp import LinearizedHVP
    from lamda_ext.losses import resolve_loss
    from lamda_ext.params import model_loss_fn
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5)).double()
    x, y = torch.randn(32, 20, dtype=DT), torch.randint(0, 5, (32,))
    params = dict(m.named_parameters())
    with AllocationTracker() as tr:
        lin = LinearizedHVP(model_loss_fn(m, x, y, resolve_loss("cross_entropy", 0.0), list(params)), params)
    kept = tr.live
    assert kept >= 0.9 * lin.nbytes and tr.peak >= kept
    del lin
    gc.collect()
    assert tr.live == 0
    with AllocationTracker() as tr:
        jvp(grad(lambda t: torch.exp(torch.sin(t) * 2).sum()), (x[0],), (torch.ones_like(x[0]),))
    assert tr.peak > 0


@pytest.mark.parametrize("name,curvature", [("cifar_resnet", "hessian"), ("cifar_resnet", "ggn")])
def test_eager_hvp_bound_covers_the_measured_work(name, curvature):
    """The bound of one eager HVP (`bound_costs`, fitted on 1 and 2 samples) is at least the peak measured on trial
    slices of 1, 4, 8 and 16 samples, for one row and for the row cap at once, for products and quadratic forms."""
    from lamda_ext.hessian.budget import bound_costs, measure_costs
    m, x, y = build(name)
    m.eval()
    x, y = x.repeat(8, *[1] * (x.dim() - 1))[:16], y.repeat(8)[:16]
    op = lamda_ext.HessianOperator(m, "cross_entropy", (x, y), curvature=curvature, memory_budget=2**40)
    (_, shard, batch, n), = list(op._shards())
    like = torch.empty(0, op.size, dtype=DT)
    bound = bound_costs(op._work.probe, shard, batch, n, True, like, [], lambda c: False)
    kinds = ["products", "forms"]
    measured = {}
    for group in ([kinds] if curvature == "ggn" else [[k] for k in kinds]):
        measured.update(measure_costs(op._work, group, shard, batch, n, True, like, lambda k: (1, 2, 3), {},
                                      [1, 4, 8, 16]))
    assert set(measured) == set(kinds)
    for kind, cost in measured.items():
        cap = op._work.row_cap(kind, n)
        for b in (1, 4, 8, 16):
            for k in (1, cap):
                assert cost.peak(b, k) <= bound.peak(b, k), (kind, b, k, cost.peak(b, k), bound.peak(b, k))


def test_small_work_is_planned_from_the_eager_bound_without_trials(monkeypatch):
    """Where the bound fits half the budget, the first product plans from one eager HVP (no trial slice); the
    numbers are those of an operator that measured its trial slices; `memory_plan` measures them."""
    from lamda_ext.hessian import budget
    m, x, y = _small_cnn()
    V = torch.randn(2, sum(p.numel() for p in m.parameters()), generator=torch.Generator().manual_seed(0), dtype=DT)
    measured = lamda_ext.HessianOperator(m, "cross_entropy", (x, y), memory_budget=2**34)
    assert not measured.memory_plan().bounded
    ref = measured @ V
    calls = []
    monkeypatch.setattr(budget, "_measure_slice", lambda *a: calls.append(a))
    op = lamda_ext.HessianOperator(m, "cross_entropy", (x, y), memory_budget=2**34)
    out = op @ V
    q = op.quadratic_forms(V)
    assert not calls and op.plan.bounded == {"products", "forms"} and op.plan.sub_batch >= x.shape[0], str(op.plan)
    assert "bounded by an eager HVP" in str(op.plan) and len(op._bound_points) == 1
    assert rel_err(out, ref, dim=1) <= 1e-12 and rel_err(q, measured.quadratic_forms(V), dim=0) <= 1e-12
