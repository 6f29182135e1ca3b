"""lamda_ext.linearize: a traced tangent graph replays the same map on every call, also for functions that write in
place into values of the point: torchvision's ResNet (``out += identity``, in-place ReLU), a model that changes
its input (``x.flatten(1).add_(1)``, ``x.flatten(1)[:, :3].mul_(2)``), and ``relu_`` with ``r += tanh(h)`` and dropout in train mode.

References, float64: one eager ``jvp`` per direction (``loss_hvp`` along a single direction) and the dense Hessian
(``torch.autograd.functional.hessian``, reverse-over-reverse) of the same function, with the same dropout mask.
"""
from __future__ import annotations

import functools
import importlib

import pytest
import torch
from torch import nn

import lamda_ext
from lamda_ext.hvp import LinearizedHVP, loss_hvp
from lamda_ext.hvp_reference import hvp_double_backward
from lamda_ext.linearize import linearize
from lamda_ext.losses import resolve_loss
from lamda_ext.params import flatten_params, model_loss_fn, unflatten_params

from tests._models import torchvision_resnet
from tests.test_caller_tensors import Net

DT = torch.float64
SEED = 123
DETERMINISTIC = ["tv_resnet", "inplace_input", "inplace_slice"]
CASES = DETERMINISTIC + ["dropout_residual"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class DropoutResidual(nn.Module):
    """``h = relu_(fc1(x))``, ``r = fc2(h)``, ``r += tanh(h)``, dropout, ``fc3``: in place, in train mode."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 4)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        h = self.fc1(x).relu_()
        r = self.fc2(h)
        r += torch.tanh(h)
        return self.fc3(self.drop(r))


def make(name: str, device: str = "cpu"):
    """``(model, x, y, names of the differentiated parameters)`` on ``device``; ResNet-18 differentiates a subset (its
    first and last layers' parameters: the tangents still pass through every block) so that its dense Hessian is
    small."""
    model, x, y, names = _make(name)
    return model.to(device), x.to(device), y.to(device), names


def _make(name: str):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "tv_resnet":
        model = torchvision_resnet().to(DT).eval()
        x, y = torch.randn(2, 3, 16, 16, generator=g, dtype=DT), torch.randint(0, 10, (2,), generator=g)
        return model, x, y, ["bn1.weight", "fc.bias"]
    if name in ("inplace_input", "inplace_slice"):
        model = Net("flatten_add_" if name == "inplace_input" else "slice_mul_").to(DT)
        x, y = torch.randn(3, 2, 6, generator=g, dtype=DT), torch.randint(0, 4, (3,), generator=g)
    else:
        model = DropoutResidual().to(DT).train()
        x, y = torch.randn(5, 6, generator=g, dtype=DT), torch.randint(0, 4, (5,), generator=g)
    return model, x, y, [n for n, _ in model.named_parameters()]


def loss_and_point(model, x, y, names):
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    return model_loss_fn(model, x, y, resolve_loss("cross_entropy"), names), params


@functools.lru_cache(maxsize=None)
def references(name: str):
    """``(V [3, P], eager [3, P], V @ H)``: one eager jvp per direction and the dense Hessian, each evaluation
    after ``torch.manual_seed(SEED)`` (the dropout mask of the HVPs under test)."""
    model, x, y, names = make(name)
    f, params = loss_and_point(model, x, y, names)
    flat = flatten_params(params)
    V = torch.randn(3, flat.numel(), generator=torch.Generator().manual_seed(2), dtype=DT)
    eager = []
    for v in V:
        torch.manual_seed(SEED)
        eager.append(loss_hvp(f, params, v))
    torch.manual_seed(SEED)
    H = torch.autograd.functional.hessian(lambda th: f(unflatten_params(th, params)), flat)
    return V, torch.stack(eager), V @ H


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def snapshot(model, x, y):
    return [t.clone() for t in (x, y, *model.state_dict().values())]


def unchanged(before, model, x, y) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, (x, y, *model.state_dict().values())))


@pytest.mark.parametrize("name", CASES[1:])
def test_the_traced_graph_writes_into_values_of_the_point(name):
    """The models here do write in place into direction-independent values: the raw traced graph is refused."""
    from lamda_ext._hvp_ops import ForwardOverReverseOps
    from lamda_ext.linearize import _trace_jvp, replays_consistently
    from lamda_ext.routing import torch_jvp_warning_filtered
    model, x, y, names = make(name)
    f, params = loss_and_point(model, x, y, names)
    with ForwardOverReverseOps(), torch_jvp_warning_filtered():
        gm = _trace_jvp(torch.func.grad(f), params)[0]
    assert not replays_consistently(gm)


CASES_ON_DEVICES = [(n, "cpu") for n in CASES] + [(n, d) for n in DETERMINISTIC for d in DEVICES[1:]]


@pytest.mark.parametrize("name,device", CASES_ON_DEVICES)
def test_linearized_hvp_replays_match_eager_jvps_and_dense_hessian(name, device):
    """K = 3 directions through one LinearizedHVP, chunk 1, 3 and the device's default (all at once on a GPU),
    each twice: every replay is the same map (the references are computed on the CPU)."""
    V, eager, dense = (t.to(device) for t in references(name))
    model, x, y, names = make(name, device)
    before = snapshot(model, x, y)
    f, params = loss_and_point(model, x, y, names)
    lin = LinearizedHVP(f, params)
    assert lin.replays and lin.nbytes > 0
    first = None
    for chunk in (1, 3, None, 1, 3, None):
        if name == "dropout_residual":     # one direction per call, after the seed: the references' mask
            out = []
            for v in V:
                torch.manual_seed(SEED)
                out.append(lin(v, chunk_size=chunk))
            got = torch.stack(out)
        else:
            got = lin(V, chunk_size=chunk)
        assert rel(got, eager) <= 1e-10 and rel(got, dense) <= 1e-10
        first = got if first is None else first
        assert rel(got, first) <= 1e-12
    assert unchanged(before, model, x, y)


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("name", CASES[1:])
def test_batched_hvp_takes_the_linearised_path(name, chunk):
    """loss_hvp with K = 3 (one linearisation, replays restarted at the seed): equal to the eager jvps."""
    V, eager, dense = references(name)
    model, x, y, names = make(name)
    before = snapshot(model, x, y)
    f, params = loss_and_point(model, x, y, names)
    torch.manual_seed(SEED)
    got = loss_hvp(f, params, V, chunk_size=chunk)
    assert rel(got, eager) <= 1e-10 and rel(got, dense) <= 1e-10
    assert unchanged(before, model, x, y)


@pytest.mark.parametrize("name,device", [(n, d) for n in DETERMINISTIC[:2] for d in DEVICES])
def test_hessian_operator_keeps_one_linearisation(name, device):
    """Products on the same batch replay the kept linearisation (n_linearizations stays 1), chunk 3 then 1."""
    V, eager, dense = (t.to(device) for t in references(name))
    model, x, y, names = make(name, device)
    before = snapshot(model, x, y)
    op = lamda_ext.HessianOperator(model, "cross_entropy", (x, y), params=names, chunk=3)
    first = op.matvec(V)
    assert rel(first, dense) <= 1e-10 and rel(first, eager) <= 1e-10
    assert rel(op.matvec(V), first) <= 1e-12
    op.chunk = 1
    assert rel(op.matvec(V), first) <= 1e-12
    assert op.n_linearizations == 1 and op.cached_bytes > 0
    assert unchanged(before, model, x, y)


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("name", ["inplace_input", "inplace_slice"])
def test_input_space_hvps_of_a_model_that_changes_its_input(name, chunk):
    """wrt="input", K = 3 (the model writes into its copy of the differentiated input): equal to one eager jvp per
    direction and to reverse-over-reverse; x stays as the caller passed it."""
    model, x, y, _ = make(name)
    U = torch.randn(3, *x.shape, generator=torch.Generator().manual_seed(3), dtype=DT)
    before = snapshot(model, x, y)
    got = lamda_ext.hvp(model, x, y, U, wrt="input", chunk_size=chunk)
    eager = torch.stack([lamda_ext.hvp(model, x, y, u, wrt="input") for u in U])
    assert rel(got, eager) <= 1e-10
    assert rel(got, hvp_double_backward(model, x, y, U, wrt="input")) <= 1e-10
    assert unchanged(before, model, x, y)


def test_a_write_into_a_closed_over_tensor_is_not_replayed():
    """A function that updates a tensor it closes over would count again on every replay: no tangent map."""
    buf = torch.zeros((), dtype=DT)

    def g(p):
        buf.add_(1.0)
        return torch.sin(p) * buf

    assert linearize(g, torch.randn(3, dtype=DT)) is None
    assert float(buf) == 1.0      # the trace ran the function once


def test_a_graph_that_cannot_be_functionalised_takes_one_jvp_per_direction(monkeypatch):
    """Where functionalisation fails, linearize warns and finds no tangent map; LinearizedHVP and loss_hvp then run
    one jvp per direction, with the right products."""
    V, eager, dense = references("dropout_residual")
    model, x, y, names = make("dropout_residual")
    f, params = loss_and_point(model, x, y, names)

    def fail(gm, tangents):
        raise NotImplementedError("an op without a functional form")

    monkeypatch.setattr(importlib.import_module("lamda_ext.linearize"), "_functionalized", fail)
    with pytest.warns(RuntimeWarning, match="could not be functionalised"):
        lin = LinearizedHVP(f, params)
    assert not lin.replays and lin.nbytes == 0
    torch.manual_seed(SEED)
    assert rel(lin(V[0]), dense[0]) <= 1e-10
    for chunk in (1, 3):
        torch.manual_seed(SEED)
        with pytest.warns(RuntimeWarning, match="could not be functionalised"):
            got = loss_hvp(f, params, V, chunk_size=chunk)
        assert rel(got, eager) <= 1e-10


def _layouts():
    """Tensors of one shape [4, 3, 5] in several memory layouts: contiguous, permuted (channels-last-like), and a
    dense block that starts at a storage offset."""
    g = torch.Generator().manual_seed(4)
    base = torch.randn(4, 3, 5, generator=g, dtype=DT)
    permuted = torch.randn(4, 5, 3, generator=g, dtype=DT).permute(0, 2, 1)
    offset = torch.randn(70, generator=g, dtype=DT)[10:].reshape(4, 3, 5)
    return {"contiguous": base, "permuted": permuted, "offset": offset}


# (size, stride, storage offset relative to the tensor's own): a full reshape, a row-major window, a transposed
# view, overlapping sliding windows
VIEWS = [((15, 4), (1, 15), 0), ((60,), (1,), 0), ((2, 10), (10, 1), 7), ((5, 3), (1, 5), 2),
         ((6, 4), (2, 1), 3)]


@pytest.mark.parametrize("layout", ["contiguous", "permuted", "offset"])
@pytest.mark.parametrize("view", range(len(VIEWS)))
def test_strided_op_forms_match_the_native_ops(layout, view):
    """The vmappable forms of as_strided / as_strided_scatter / copy give the native ops' values (and copy the
    layout of its destination); traced on one tensor and vmapped over others, they give the native ops' values on
    tensors of the traced layout (2 x keeps the layout of x)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from lamda_ext._functional_ops import DECOMPOSITIONS
    aten = torch.ops.aten
    x = _layouts()[layout]
    size, stride, rel_offset = VIEWS[view]
    offset = x.storage_offset() + rel_offset
    want = torch.as_strided(x, size, stride, offset)
    assert torch.equal(DECOMPOSITIONS[aten.as_strided.default](x, size, stride, offset), want)
    traced = make_fx(lambda a: torch.as_strided(a, size, stride, offset), DECOMPOSITIONS)(x)
    assert torch.equal(torch.func.vmap(traced)(torch.stack([x, 2 * x]))[1], 2 * want)
    src = torch.randn(size, generator=torch.Generator().manual_seed(5), dtype=DT)
    if layout != "offset" and view != 4:       # as_strided_scatter: offsets count in the copy's memory; no overlap
        want = torch.as_strided_scatter(x, src, size, stride, rel_offset)
        got = DECOMPOSITIONS[aten.as_strided_scatter.default](x, src, size, stride, rel_offset)
        assert torch.equal(got, want) and got.stride() == want.stride()
        traced = make_fx(lambda a, b: torch.as_strided_scatter(a, b, size, stride, rel_offset), DECOMPOSITIONS)(x, src)
        batched = torch.func.vmap(traced)(torch.stack([x, 2 * x]), torch.stack([src, -src]))
        assert torch.equal(batched[1], torch.as_strided_scatter(2 * x, -src, size, stride, rel_offset))
    for s in (torch.randn(3, 5, dtype=torch.float32), torch.randn(4, 3, 5, dtype=DT)):
        got = DECOMPOSITIONS[aten.copy.default](x, s)
        want = x.clone().copy_(s)
        assert torch.equal(got, want) and got.dtype == DT and got.stride() == want.stride()


def test_strided_op_forms_refuse_what_they_cannot_express():
    from lamda_ext._functional_ops import DECOMPOSITIONS
    expanded = torch.zeros(3, dtype=DT).expand(4, 3)
    with pytest.raises(NotImplementedError, match="not one dense block"):
        DECOMPOSITIONS[torch.ops.aten.as_strided.default](expanded, (12,), (1,), 0)
    with pytest.raises(NotImplementedError, match="reads outside"):
        DECOMPOSITIONS[torch.ops.aten.as_strided.default](torch.zeros(3, 4, dtype=DT), (4, 4), (4, 1), 0)
