"""The per-op table: every registered Taylor rule has a case checked against nested autograd in float64
(coefficients up to order 4, K = 2 directions); a rule without a case fails ``test_every_rule_has_a_case``.

A case is ``(fn, shapes, domain)``: ``fn`` is called once on series (each input x + t·u_k) and once, for every
direction, on plain tensors inside ``HigherOrderSafe`` (the references' routing); ``domain`` is ``"pos"`` for
inputs that must be positive, ``"f32"`` for float32-representable ones. Outputs that carry no derivative
(comparisons, argmax, constants) must equal the plain result exactly.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import lamda_ext.taylor.op_table  # noqa: F401  (fills the rule table)
from lamda_ext.routing import HigherOrderSafe
from lamda_ext.taylor import recurrences
from lamda_ext.taylor.impl import Composite, Fused
from lamda_ext.taylor.series import RULES, RunContext, TaylorSeries, is_series

N = 4
A = (3, 4)
MASK = torch.tensor([True, False, True, True])
LABELS = torch.tensor([0, 3, -100])               # class labels of A-shaped logits, one ignored
LABELS_2D = torch.tensor([[0, 2, -100, 1]])       # of logits [1, 3 classes, 4 positions]


def _setitem(a, b):
    a = a * 1.0
    a[:, 1:3] = torch.exp(b)
    return a


def _inplace(name, *args):
    def fn(a):
        a = a * 1.0
        getattr(a, name)(*args)
        return a
    return fn


def _mha(q):
    w_in = torch.linspace(-0.5, 0.5, 27, dtype=q.dtype).view(9, 3)
    w_out = torch.linspace(-0.3, 0.4, 9, dtype=q.dtype).view(3, 3)
    return F.multi_head_attention_forward(q, q, q, 3, 1, w_in, None, None, None, False, 0.0, w_out, None,
                                          training=False, need_weights=False)[0]


CASES = {
    "abs": (lambda a: torch.abs(a) * a, [A], None),
    "adaptive_avg_pool1d": (lambda a: F.adaptive_avg_pool1d(a.exp(), 2), [(2, 3, 5)], None),
    "adaptive_avg_pool2d": (lambda a: F.adaptive_avg_pool2d(a.exp(), 2), [(2, 3, 5, 4)], None),
    "adaptive_avg_pool3d": (lambda a: F.adaptive_avg_pool3d(a.exp(), 1), [(1, 2, 3, 2, 2)], None),
    "add": (lambda a, b: torch.add(a, b.exp(), alpha=2.0) + 1.0, [A, A], None),
    "addbmm": (lambda c, a, b: torch.baddbmm(c, a, b.tanh()), [(2, 3, 4), (2, 3, 5), (2, 5, 4)], None),
    "addmm": (lambda c, a, b: torch.addmm(c, a, b.tanh(), beta=0.5), [(3, 4), (3, 5), (5, 4)], None),
    "all": (lambda a: torch.all(a > -5.0), [A], None),
    "any": (lambda a: torch.any(a > 0.0), [A], None),
    "argmax": (lambda a: torch.argmax(a, 1), [A], None),
    "argmin": (lambda a: torch.argmin(a, 1), [A], None),
    "argsort": (lambda a: torch.argsort(a, 1), [A], None),
    "avg_pool1d": (lambda a: F.avg_pool1d(a.tanh(), 2), [(2, 3, 6)], None),
    "avg_pool2d": (lambda a: F.avg_pool2d(a.tanh(), 2), [(2, 3, 4, 4)], None),
    "avg_pool3d": (lambda a: F.avg_pool3d(a.tanh(), 2), [(1, 2, 2, 4, 4)], None),
    "baddbmm": (lambda c, a, b: torch.baddbmm(c.exp(), a, b, alpha=0.5), [(2, 3, 4), (2, 3, 5), (2, 5, 4)], None),
    "batch_norm": (lambda a, w: F.batch_norm(a, None, None, w, None, True) +
                   F.batch_norm(a, torch.zeros(3, dtype=a.dtype), torch.ones(3, dtype=a.dtype), None, w),
                   [(4, 3, 2), (3,)], None),
    "bmm": (lambda a, b: torch.bmm(a, b.sigmoid()), [(2, 3, 5), (2, 5, 4)], None),
    "cat": (lambda a, b: torch.cat([a, b.exp(), torch.ones(3, 1, dtype=a.dtype), torch.tensor([], dtype=a.dtype)], 1),
            [A, (3, 2)], None),    # the empty 1-D tensor is skipped, as torch.cat skips it
    "chunk": (lambda a: torch.chunk(a.exp(), 2, 1)[1] * a[:, :2], [A], None),
    "clamp": (lambda a: torch.clamp(a * 2, -1.0, 1.0).exp(), [A], None),
    "clip": (lambda a: torch.clip(a * 2, min=-0.5).exp(), [A], None),
    "clone": (lambda a: a.exp().clone(), [A], None),
    "concat": (lambda a, b: torch.concat([a, b.exp()], 0), [A, A], None),
    "concatenate": (lambda a, b: torch.concatenate([a, b.exp()], 0), [A, A], None),
    "contiguous": (lambda a: a.exp().t().contiguous(), [A], None),
    "conv1d": (lambda a, w, b: F.conv1d(a, w.tanh(), b, padding=1), [(2, 3, 5), (4, 3, 3), (4,)], None),
    "conv2d": (lambda a, w, b: F.conv2d(a, w, b.exp(), stride=2), [(2, 2, 5, 5), (3, 2, 3, 3), (3,)], None),
    "conv3d": (lambda a, w: F.conv3d(a, w.exp(), groups=2), [(1, 2, 3, 3, 3), (4, 1, 2, 2, 2)], None),
    "copy": (_inplace("copy_", torch.ones(*A, dtype=torch.float64)), [A], None),
    "cross_entropy": (lambda a, b: F.cross_entropy(a * b, LABELS, reduction="none", label_smoothing=0.1)
                      + F.cross_entropy(a.exp(), LABELS) + F.cross_entropy(a.view(1, 3, 4), LABELS_2D, reduction="sum"),
                      [A, A], None),
    "detach": (lambda a: a.detach() * a, [A], None),
    "div": (lambda a, b: torch.div(a, b) / 2.0, [A, A], "pos"),
    "double": (lambda a: a.double().exp(), [A], None),
    "dropout": (lambda a: F.dropout(a, 0.0, True).exp() + F.dropout(a, 0.4, False), [A], None),
    "dropout1d": (lambda a: F.dropout1d(a, 0.0, False).exp(), [(2, 3, 4)], None),
    "dropout2d": (lambda a: F.dropout2d(a, 0.0, False).exp(), [(2, 3, 4, 4)], None),
    "dropout3d": (lambda a: F.dropout3d(a, 0.0, False).exp(), [(2, 3, 2, 2, 2)], None),
    "einsum": (lambda a, b: torch.einsum("ij,kj->ik", a, b.exp()), [A, (2, 4)], None),
    "elu": (lambda a: F.elu(a, 0.7), [A], None),
    "embedding": (lambda w: F.embedding(torch.tensor([[0, 2], [1, 1]]), w), [(3, 4)], None),
    "empty_like": (lambda a: torch.empty_like(a).shape == a.shape, [A], None),
    "eq": (lambda a: a == a, [A], None),
    "exp": (torch.exp, [A], None),
    "expand": (lambda a: a[:, :1].exp().expand(3, 5), [A], None),
    "expand_as": (lambda a, b: a[:, :1].exp().expand_as(b) * b, [A, A], None),
    "fill": (_inplace("fill_", 2.0), [A], None),
    "flatten": (lambda a: torch.flatten(a.exp(), 0), [A], None),
    "float": (lambda a: a.float().double(), [A], "f32"),
    "full_like": (lambda a: torch.full_like(a, 3.0), [A], None),
    "ge": (lambda a: a >= 0.1, [A], None),
    "gelu": (lambda a: F.gelu(a) + F.gelu(a, approximate="tanh"), [A], None),
    "getitem": (lambda a: a[1:, ::2].exp() + a[0, 1], [A], None),
    "greater": (lambda a: torch.greater(a, 0.0), [A], None),
    "gt": (lambda a: a > 0.0, [A], None),
    "hardsigmoid": (lambda a: F.hardsigmoid(4 * a).exp(), [A], None),
    "hardswish": (lambda a: F.hardswish(4 * a), [A], None),
    "hardtanh": (lambda a: F.hardtanh(2 * a, -0.5, 1.0).exp(), [A], None),
    "isfinite": (lambda a: torch.isfinite(a), [A], None),
    "isinf": (lambda a: torch.isinf(a), [A], None),
    "isnan": (lambda a: torch.isnan(a), [A], None),
    "layer_norm": (lambda a, w, b: F.layer_norm(a, (4,), w, b), [A, (4,), (4,)], None),
    "le": (lambda a: a <= 0.0, [A], None),
    "leaky_relu": (lambda a: F.leaky_relu(a, 0.2).exp(), [A], None),
    "less": (lambda a: torch.less(a, 0.0), [A], None),
    "linear": (lambda a, w, b: F.linear(a, w.exp(), b), [A, (2, 4), (2,)], None),
    "log": (torch.log, [A], "pos"),
    "log_softmax": (lambda a: F.log_softmax(a, 0), [A], None),
    "lt": (lambda a: a < 0.0, [A], None),
    "masked_fill": (lambda a: a.masked_fill(MASK, -1.0).exp(), [A], None),
    "matmul": (lambda a, b: torch.matmul(a, b.exp()), [(2, 3, 4), (4, 2)], None),
    "max_pool1d": (lambda a: F.max_pool1d(a, 2).exp(), [(2, 3, 6)], None),
    "max_pool2d": (lambda a: F.max_pool2d(a, 2).exp(), [(2, 2, 4, 4)], None),
    "mean": (lambda a: a.exp().mean(1, keepdim=True) + a.mean(), [A], None),
    "mm": (lambda a, b: torch.mm(a, b.tanh()), [A, (4, 2)], None),
    "moveaxis": (lambda a: torch.moveaxis(a.exp(), 0, 2), [(2, 3, 4)], None),
    "movedim": (lambda a: a.exp().movedim((0, 1), (2, 0)), [(2, 3, 4)], None),
    "mul": (lambda a, b: torch.mul(a, b) * 3.0, [A, A], None),
    "multi_head_attention_forward": (_mha, [(4, 2, 3)], None),
    "narrow": (lambda a: a.exp().narrow(1, 1, 2), [A], None),
    "ne": (lambda a: a != 0.0, [A], None),
    "neg": (lambda a: -a.exp(), [A], None),
    "new_empty": (lambda a: a.new_empty(2, 3).shape == (2, 3), [A], None),
    "new_full": (lambda a: a.new_full((2,), 4.0), [A], None),
    "new_ones": (lambda a: a.new_ones(2, 3), [A], None),
    "new_tensor": (lambda a: a.new_tensor([1.0, 2.0]), [A], None),
    "new_zeros": (lambda a: a.new_zeros(3), [A], None),
    "normalize": (lambda a: F.normalize(a, dim=-1), [A], None),
    "ones_like": (lambda a: torch.ones_like(a), [A], None),
    "pad": (lambda a: F.pad(a, (1, 1), value=0.5).exp(), [A], None),
    "permute": (lambda a: a.exp().permute(2, 0, 1), [(2, 3, 4)], None),
    "pow": (lambda a: torch.pow(a, 2.5) + a ** 3, [A], "pos"),
    "radd": (lambda a: 1.0 + a.exp(), [A], None),
    "rand_like": (lambda a: torch.rand_like(a).shape == a.shape, [A], None),
    "randn_like": (lambda a: torch.randn_like(a).shape == a.shape, [A], None),
    "reciprocal": (torch.reciprocal, [A], "pos"),
    "relu": (lambda a: F.relu(a).exp(), [A], None),
    "relu6": (lambda a: F.relu6(6 * a).exp(), [A], None),
    "repeat": (lambda a: a.exp().repeat(2, 1, 1), [A], None),
    "repeat_interleave": (lambda a: a.exp().repeat_interleave(2, 0), [A], None),
    "reshape": (lambda a: a.exp().reshape(4, 3), [A], None),
    "reshape_as": (lambda a, b: a.exp().reshape_as(b), [A, (4, 3)], None),
    "rmatmul": (lambda a: a.exp().__rmatmul__(torch.ones(2, 3, dtype=a.dtype)), [A], None),
    "rmul": (lambda a: 2.0 * a.exp(), [A], None),
    "roll": (lambda a: torch.roll(a.exp(), 1, 1), [A], None),
    "rsqrt": (torch.rsqrt, [A], "pos"),
    "rsub": (lambda a: 1.0 - a.exp(), [A], None),
    "rtruediv": (lambda a: 2.0 / a, [A], "pos"),
    "scaled_dot_product_attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                     [(2, 3, 4), (2, 3, 4), (2, 3, 4)], None),
    "select": (lambda a: a.exp().select(1, 2), [A], None),
    "setitem": (_setitem, [A, (3, 2)], None),
    "sigmoid": (torch.sigmoid, [A], None),
    "sign": (lambda a: torch.sign(a) * a, [A], None),
    "silu": (F.silu, [A], None),
    "softmax": (lambda a: torch.softmax(a, 0), [A], None),
    "softplus": (lambda a: F.softplus(a, beta=2.0), [A], None),
    "split": (lambda a: torch.split(a.exp(), [1, 3], 1)[1], [A], None),
    "sqrt": (torch.sqrt, [A], "pos"),
    "square": (torch.square, [A], None),
    "squeeze": (lambda a: a[:1].exp().squeeze(0), [A], None),
    "stack": (lambda a, b: torch.stack([a, b.exp()], 1), [A, A], None),
    "sub": (lambda a, b: torch.sub(a, b.exp(), alpha=0.5) - 1.0, [A, A], None),
    "sum": (lambda a: a.exp().sum(0) + a.sum(), [A], None),
    "swapaxes": (lambda a: a.exp().swapaxes(0, 1), [A], None),
    "swapdims": (lambda a: a.exp().swapdims(0, 1), [A], None),
    "t": (lambda a: a.exp().t(), [A], None),
    "tanh": (torch.tanh, [A], None),
    "to": (lambda a: a.to(torch.float64).exp(), [A], None),
    "type": (lambda a: a.type(torch.float32).type("torch.DoubleTensor") * (a.type() == "torch.DoubleTensor"),
             [A], "f32"),
    "transpose": (lambda a: a.exp().transpose(0, 1), [A], None),
    "type_as": (lambda a, b: a.type_as(b).exp(), [A, A], None),
    "unbind": (lambda a: a.exp().unbind(1)[2], [A], None),
    "unflatten": (lambda a: a.exp().unflatten(1, (2, 2)), [A], None),
    "unsqueeze": (lambda a: a.exp().unsqueeze(1), [A], None),
    "view": (lambda a: a.exp().view(2, 6), [A], None),
    "view_as": (lambda a, b: a.exp().view_as(b), [A, (6, 2)], None),
    "where": (lambda a, b: torch.where(MASK, a.exp(), b), [A, A], None),
    "zero": (_inplace("zero_"), [A], None),
    "zeros_like": (lambda a: torch.zeros_like(a), [A], None),
}


def test_every_rule_has_a_case():
    missing = sorted(set(RULES) - set(CASES))
    assert not missing, f"Taylor rules without a case in tests/test_op_table.py: {missing}"
    assert not sorted(set(CASES) - set(RULES)), "cases for names that are not rules"


def test_every_kind_is_a_rule():
    assert set(recurrences.UNARY_KINDS) <= set(RULES)


def _inputs(shapes, domain, seed):
    g = torch.Generator().manual_seed(seed)
    xs, us = [], []
    for s in shapes:
        x = torch.randn(*s, generator=g, dtype=torch.float64)
        u = torch.randn((2,) + tuple(s), generator=g, dtype=torch.float64) * 0.5
        if domain == "f32":   # float32-exact values: the cast loses nothing
            x, u = x.float().double(), u.float().double()
        xs.append(x.abs() + 0.5 if domain == "pos" else x)
        us.append(u)
    return xs, us


def _check(name, impl):
    fn, shapes, domain = CASES[name]
    xs, us = _inputs(shapes, domain, hash(name) % 1000)
    ctx = RunContext(N, 2, impl)
    with ctx.active():
        out = fn(*[TaylorSeries(x, u.unsqueeze(0)) for x, u in zip(xs, us)])
    with HigherOrderSafe():
        plain = fn(*xs)
    if not is_series(out):        # no derivative: the plain result, exactly
        if isinstance(plain, torch.Tensor):
            assert torch.equal(torch.as_tensor(out), plain)
            assert not plain.is_floating_point() or name in {"zeros_like", "ones_like", "full_like", "new_full",
                                                             "new_ones", "new_tensor", "new_zeros"}
        else:
            assert out == plain
        return
    terms = out.terms()
    torch.testing.assert_close(terms[0], plain, rtol=1e-12, atol=1e-12)
    g = torch.Generator().manual_seed(1)
    for k in range(2):
        t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        with HigherOrderSafe():
            y = fn(*[x + t * u[k] for x, u in zip(xs, us)])
        w = torch.randn(y.shape, generator=g, dtype=torch.float64).float().double()   # exact under casts
        s = (y * w).sum()
        for n in range(1, N + 1):
            s = torch.autograd.grad(s, t, create_graph=True)[0] if s.requires_grad else torch.zeros(())
            got = ((terms[n][k] if terms[n].shape[0] > 1 else terms[n][0]) * w).sum() if n < len(terms) else 0.0
            want = s / math.factorial(n)
            assert abs(float(got) - float(want)) <= 1e-10 * max(1.0, abs(float(want))), (name, k, n)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_matches_autograd(name):
    _check(name, Composite())


@pytest.mark.parametrize("name", sorted(recurrences.UNARY_KINDS) + ["gelu", "softplus"])
def test_fused_unary_rules_match_autograd(name):
    from lamda_ext import ops
    if not ops.available():
        pytest.skip("extension not built")
    _check(name, Fused())
