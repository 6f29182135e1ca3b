"""lamda.sam.SAM against hand-computed SAM updates; lamda.calibration ECE against hand-computed values."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lamda.calibration import calibration_bins, expected_calibration_error, reliability_diagram
from lamda.sam import SAM, bn_frozen

from tests._helpers import DT

# ----------------------------------------------------------------------------------------------- SAM


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 5, generator=g, dtype=DT), torch.randint(0, 3, (16,), generator=g)


def _grads(model, x, y, params=None):
    if params is not None:
        model = copy.deepcopy(model)
        with torch.no_grad():
            for p, q in zip(model.parameters(), params):
                p.copy_(q)
    loss = nn.functional.cross_entropy(model(x), y)
    return torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_update_matches_hand_computation(adaptive):
    model = _model()
    x, y = _data()
    rho, lr = 0.3, 0.1
    w = [p.detach().clone() for p in model.parameters()]
    g = _grads(model, x, y)
    if adaptive:
        norm = torch.sqrt(sum(((wi.abs() * gi) ** 2).sum() for wi, gi in zip(w, g)))
        e = [rho * wi ** 2 * gi / norm for wi, gi in zip(w, g)]
    else:
        norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
        e = [rho * gi / norm for gi in g]
    g_adv = _grads(model, x, y, [wi + ei for wi, ei in zip(w, e)])
    expected = [wi - lr * gi for wi, gi in zip(w, g_adv)]

    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    for p, wi, ei in zip(model.parameters(), w, e):
        torch.testing.assert_close(p.detach(), wi + ei, rtol=1e-10, atol=1e-12)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)
    for p, ex in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), ex, rtol=1e-10, atol=1e-12)

    # step(closure) does the same two passes
    model2 = _model()
    opt2 = SAM(model2.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr)

    def closure():
        loss = nn.functional.cross_entropy(model2(x), y)
        loss.backward()
        return loss

    loss0 = opt2.step(closure)
    assert loss0.item() == pytest.approx(nn.functional.cross_entropy(_model()(x), y).item(), rel=1e-12)
    for p, ex in zip(model2.parameters(), expected):
        torch.testing.assert_close(p.detach(), ex, rtol=1e-10, atol=1e-12)


def test_sam_batch_norm_stats_come_from_unperturbed_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).to(DT).train()
    x, y = _data()
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref(x)  # one unperturbed train-mode pass
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, model=model)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    nn.functional.cross_entropy(model(x), y).backward()  # perturbed pass: must not touch the stats
    opt.second_step(zero_grad=True)
    bn, bn_ref = model[1], ref[1]
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var, rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == int(bn_ref.num_batches_tracked) == 1
    assert bn.momentum == 0.1
    with bn_frozen(model), torch.no_grad():
        model(x * 3 + 1)
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean, rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == 1 and bn.momentum == 0.1


@pytest.mark.filterwarnings("error::UserWarning")
def test_sam_works_with_schedulers_and_state_dict():
    model = _model()
    x, y = _data()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.2, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    for _ in range(2):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
        sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * (1 + np.cos(np.pi * 2 / 4)) / 2)
    st = opt.state_dict()
    opt2 = SAM(_model().parameters(), torch.optim.SGD, rho=0.05, lr=0.2, momentum=0.9)
    opt2.load_state_dict(st)
    assert opt2.base_optimizer.param_groups is opt2.param_groups
    with pytest.raises(ValueError, match="rho must be > 0"):
        SAM(model.parameters(), torch.optim.SGD, rho=0.0, lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        opt.step()


# ------------------------------------------------------------------------------------------------ ECE


def test_ece_hand_computed_with_confidence_one_and_bin_edges():
    # 5 bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]
    probs = torch.tensor([[1.0, 0.0],    # conf 1.0 (last bin), correct
                          [0.3, 0.7],    # conf 0.7, wrong
                          [0.6, 0.4],    # conf exactly 0.6: right-closed bin (.4, .6], correct
                          [0.1, 0.9]],   # conf 0.9, correct
                         dtype=DT)
    labels = torch.tensor([0, 0, 0, 1])
    b = calibration_bins(probs, labels, n_bins=5)
    assert b["counts"].tolist() == [0, 0, 1, 1, 2]
    # |1 - .95|·2/4 + |0 - .7|·1/4 + |1 - .6|·1/4
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.025 + 0.175 + 0.1, abs=1e-15)


def test_ece_confidence_zero_goes_to_first_bin():
    probs = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.2, 0.1]], dtype=DT)  # confidences 0, 0, 0.2
    labels = torch.tensor([0, 1, 1])   # argmax of a tie is class 0: correct, wrong; third is wrong
    b = calibration_bins(probs, labels, n_bins=5)
    assert b["counts"].tolist() == [3, 0, 0, 0, 0]   # 0 and exactly 0.2 both in (0, .2] ∪ {0}
    # one bin: accuracy 1/3, mean confidence 0.2/3
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(abs(1 / 3 - 0.2 / 3), abs=1e-15)
    assert expected_calibration_error(torch.tensor([[0.0]], dtype=DT), torch.tensor([0]), n_bins=15) == 1.0
    assert expected_calibration_error(torch.tensor([[1.0]], dtype=DT), torch.tensor([0]), n_bins=15) == 0.0


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_loop_reference(n_bins):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 4, generator=g, dtype=DT), dim=1)
    labels = torch.randint(0, 4, (500,), generator=g)
    conf, pred = probs.max(1)
    total = 0.0
    for i in range(n_bins):
        lo, hi = i / n_bins, (i + 1) / n_bins
        m = [(lo < c <= hi) or (i == 0 and c == 0) for c in conf.tolist()]
        m = torch.tensor(m)
        if m.any():
            total += m.sum().item() / 500 * abs((pred[m] == labels[m]).double().mean().item() - conf[m].mean().item())
    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(total, abs=1e-12)
    assert expected_calibration_error(probs.numpy(), labels.numpy(), n_bins) == pytest.approx(total, abs=1e-12)


def test_ece_bad_inputs():
    with pytest.raises(ValueError, match=r"shape \[N, C\]"):
        expected_calibration_error(torch.ones(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have shape"):
        expected_calibration_error(torch.ones(3, 2) / 2, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="not logits"):
        expected_calibration_error(torch.tensor([[2.0, -1.0]]), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(torch.ones(1, 2) / 2, torch.zeros(1, dtype=torch.long), n_bins=0)
    with pytest.raises(TypeError, match="integer class"):
        expected_calibration_error(torch.ones(1, 2) / 2, torch.zeros(1))


def test_reliability_diagram_png(tmp_path):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(200, 3, generator=g), dim=1)
    labels = torch.randint(0, 3, (200,), generator=g)
    path = reliability_diagram(probs, labels, tmp_path / "rel.png", n_bins=10, dpi=200)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert round(im.info["dpi"][0]) == 200
    assert not list(tmp_path.glob(".*tmp"))
