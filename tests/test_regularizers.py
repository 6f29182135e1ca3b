"""Regularisers as composable pieces (lamda.regularizers), checked against autograd references."""
import pytest
import torch
import torch.nn.functional as F

import lamda_ext
from lamda_ext.checks import MAX_ORDERS
from lamda.models import MnistCNN, SigmoidMLP
from lamda.regularizers import (Augmentation, Dropout, InputGradientPenalty, LabelSmoothing, LambdaPenalty,
                                RegularizerSet, SAM, WeightDecay)


def _mlp():
    torch.manual_seed(0)
    return SigmoidMLP(in_features=16, hidden=(8,), num_classes=3).double()


def _batch(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def test_dropout_sets_every_dropout_module():
    m = MnistCNN(dropout=0.0, dropout_fc=0.0)
    Dropout(0.7).configure_model(m)
    assert [mod.p for mod in m.modules() if isinstance(mod, torch.nn.Dropout)] == [0.7, 0.7]
    with pytest.raises(ValueError, match="no nn.Dropout"):
        Dropout(0.5).configure_model(SigmoidMLP())
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_set_hooks_and_validation():
    regs = RegularizerSet([WeightDecay(1e-3), LabelSmoothing(0.1), SAM(0.05)])
    assert regs.optimizer_kwargs() == {"weight_decay": 1e-3}
    assert regs.label_smoothing == 0.1 and regs.sam_rho == 0.05 and not regs.has_penalty
    assert RegularizerSet([]).sam_rho is None and RegularizerSet([]).label_smoothing == 0.0
    with pytest.raises(ValueError, match="at most one"):
        RegularizerSet([WeightDecay(1e-3), WeightDecay(1e-2)])
    with pytest.raises(TypeError):
        RegularizerSet(["dropout"])
    with pytest.raises(ValueError):
        SAM(0.0)
    with pytest.raises(ValueError):
        LabelSmoothing(1.0)
    with pytest.raises(ValueError):
        WeightDecay(-1.0)


def test_augmentation_is_seeded():
    x = torch.randn(4, 1, 28, 28)
    aug = Augmentation.for_dataset("mnist")
    a = aug.transform(x, torch.Generator().manual_seed(3))
    b = aug.transform(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, x)


def test_input_gradient_penalty_matches_per_sample_reference():
    m, (x, y) = _mlp(), _batch()
    pen = InputGradientPenalty(0.3)
    val = pen.penalty(m, x, y)
    ref = 0.0
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(m(xi), y[i:i + 1]), xi)
        ref += g.pow(2).sum()
    torch.testing.assert_close(val, 0.3 * ref / x.shape[0])
    # differentiable w.r.t. the parameters: compare with a central finite difference along one weight
    val.backward()
    w = m.net[1].weight
    analytic = w.grad[0, 0].item()
    eps = 1e-6
    with torch.no_grad():
        w[0, 0] += eps
    up = pen.penalty(m, x, y).item()
    with torch.no_grad():
        w[0, 0] -= 2 * eps
    dn = pen.penalty(m, x, y).item()
    with torch.no_grad():
        w[0, 0] += eps
    assert analytic == pytest.approx((up - dn) / (2 * eps), rel=1e-5, abs=1e-10)


def test_lambda_penalty_matches_autograd_reference_and_selects_classes():
    m, (x, y) = _mlp(), _batch(8)
    y = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1])
    pen = LambdaPenalty(0.5, order=3, directions=2, classes=[1, 2], seed=11)
    val = pen.penalty(m, x, y)
    sel = torch.isin(y, torch.tensor([1, 2]))
    g = torch.Generator().manual_seed(11)
    d = lamda_ext.directional_derivs(m, x[sel], y[sel], order=3, directions=2, backend="autograd", generator=g)
    torch.testing.assert_close(val, 0.5 * d.abs().mean())
    # gradient flows to the parameters and equals the autograd backend's
    val.backward()
    got = m.net[1].weight.grad.clone()
    m.zero_grad()
    g = torch.Generator().manual_seed(11)
    ref = 0.5 * lamda_ext.directional_derivs(m, x[sel], y[sel], order=3, directions=2, backend="autograd",
                                              generator=g).abs().mean()
    ref.backward()
    torch.testing.assert_close(got, m.net[1].weight.grad)
    assert got.abs().sum() > 0


def test_lambda_penalty_no_selected_sample_is_zero_and_max_points():
    m, (x, _) = _mlp(), _batch(4)
    y = torch.zeros(4, dtype=torch.long)
    pen = LambdaPenalty(1.0, classes=[2])
    v = pen.penalty(m, x, y)
    assert v.item() == 0.0
    p2 = LambdaPenalty(1.0, max_points=2)
    assert p2.select(torch.tensor([0, 1, 2, 1])).tolist() == [True, True, False, False]
    p3 = LambdaPenalty(1.0, classes=[1], max_points=1)
    assert p3.select(torch.tensor([0, 1, 2, 1])).tolist() == [False, True, False, False]
    # the order follows the core's limit per backend (lamda_ext.checks.MAX_ORDERS)
    assert LambdaPenalty(1.0, order=MAX_ORDERS["taylor"]).order == MAX_ORDERS["taylor"]
    for order, backend in ((0, "auto"), (MAX_ORDERS["auto"] + 1, "auto"), (MAX_ORDERS["autograd"] + 1, "autograd")):
        with pytest.raises(ValueError, match="order must be in 1.."):
            LambdaPenalty(1.0, order=order, backend=backend)
    regs = RegularizerSet([pen, InputGradientPenalty(0.1)])
    assert regs.has_penalty and set(regs.penalties(m, x, y)) == {"lambda_penalty", "input_gradient_penalty"}


def test_lambda_penalty_within_a_memory_budget_gives_the_same_value_and_gradient():
    """A budget that splits the call (and recomputes its backward pass) changes neither the penalty nor its gradient."""
    m, (x, y) = _mlp(), _batch(8)
    kw = dict(order=3, directions=3)
    budget = lamda_ext.plan(m, x, y, memory_budget=2**40, **kw).min_backward_budget
    assert len(lamda_ext.plan(m, x, y, memory_budget=budget, **kw).chunks) > 1
    grads, vals = [], []
    for b in ("auto", budget):
        m.zero_grad()
        pen = LambdaPenalty(0.5, seed=4, memory_budget=b, **kw)
        val = pen.penalty(m, x, y)
        val.backward()
        vals.append(val.detach())
        grads.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]))
    torch.testing.assert_close(vals[1], vals[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-15)
    assert pen.describe()["memory_budget"] == budget
    too_small = lamda_ext.plan(m, x, y, memory_budget=2**40, **kw).min_budget // 4
    with pytest.raises(ValueError, match="smallest budget"):          # the budget reaches directional_derivs
        LambdaPenalty(0.5, memory_budget=too_small, **kw).penalty(m, x, y)
    with pytest.raises(ValueError, match="memory_budget"):
        LambdaPenalty(1.0, memory_budget=0)


def test_lambda_penalty_of_a_hugging_face_batch():
    """A dict batch: the model's own loss, directions in embedding space, the first max_points samples."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install .[hf])")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=23, n_positions=8, bos_token_id=0,
                                  eos_token_id=0, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(cfg).double().eval()
    ids = torch.randint(1, 23, (3, 5), generator=torch.Generator().manual_seed(1))
    batch = transformers.BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    pen = LambdaPenalty(0.5, order=3, directions=2, max_points=2, seed=7)
    val = pen.penalty(model, batch)
    g = torch.Generator().manual_seed(7)
    first = {k: v[:2] for k, v in batch.items()}
    d = lamda_ext.directional_derivs(model, first, None, order=3, directions=2, wrt="inputs_embeds",
                                     backend="autograd", generator=g)
    assert d.shape == (2, 2, 3)
    torch.testing.assert_close(val, 0.5 * d.abs().mean(), rtol=1e-10, atol=0)
    val.backward()
    assert model.transformer.h[0].mlp.c_fc.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="dict batch"):
        LambdaPenalty(1.0, classes=[1]).penalty(model, batch)
    with pytest.raises(TypeError, match="penalty_share"):
        pen.penalty_share(model, batch, None, (0, 1))
