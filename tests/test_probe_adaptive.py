"""CurvatureAdaptiveLR with a running reference curvature (EMA of log c): the lr rule against hand-computed values."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from lamda.landscape import CurvatureAdaptiveLR, CurvatureEstimate


class _ScriptedProbe:
    """A stand-in probe returning given curvatures (to test the lr rule exactly)."""

    def __init__(self, values):
        self.values = list(values)
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, x, y):
        c = self.values.pop(0)
        return CurvatureEstimate(c, c, [c])


def _steps(wrap, p, n):
    lrs = []
    for _ in range(n):
        p.grad = torch.ones(1, dtype=torch.float64)
        before = p.item()
        wrap.step(batch=(None, None))
        lrs.append(before - p.item())        # SGD: Δ = lr · grad
    return lrs


def test_running_reference_rule_hand_computed():
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    c = [1.0, 4.0, 0.25, 0.25, 100.0, 100.0]
    wrap = CurvatureAdaptiveLR(torch.optim.SGD([p], lr=0.1), _ScriptedProbe(c), every=1, power=0.5, min_scale=0.2,
                               max_scale=2.0, reference_decay=0.5)
    lrs = _steps(wrap, p, 6)
    # reference before each probe: the first probe, then the geometric EMA r ← r^0.5 · c^0.5 of the earlier probes
    r1 = 1.0
    r2 = math.sqrt(r1 * 1.0)             # = 1
    r3 = math.sqrt(r2 * 4.0)             # = 2
    r4 = math.sqrt(r3 * 0.25)            # = 0.7071
    r5 = math.sqrt(r4 * 0.25)            # = 0.4204
    r6 = math.sqrt(r5 * 100.0)           # = 6.484
    refs = [r1, r2, r3, r4, r5, r6]
    clip = lambda v: min(2.0, max(0.2, v))
    scales = [clip(math.sqrt(r / x)) for r, x in zip(refs, c)]
    assert scales == pytest.approx([1.0, 0.5, 2.0, math.sqrt(r4 / 0.25), 0.2, math.sqrt(r6 / 100.0)], rel=1e-12)
    np.testing.assert_allclose(lrs, [0.1 * s for s in scales], rtol=1e-12)
    assert [h["reference"] for h in wrap.history] == pytest.approx(refs, rel=1e-12)
    assert [h["scale"] for h in wrap.history] == pytest.approx(scales, rel=1e-12)
    assert wrap.reference == pytest.approx(math.sqrt(r6 * 100.0), rel=1e-12)


def test_running_reference_moves_both_ways_fixed_one_saturates():
    # curvature falling from its initial value and fluctuating: a fixed first-probe reference keeps the
    # scale at its cap; the running reference gives scales above and below 1
    c = [10.0] + [1.3 if i % 2 else 0.7 for i in range(30)]
    scales = {}
    for decay in (None, 0.8):
        p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        wrap = CurvatureAdaptiveLR(torch.optim.SGD([p], lr=0.1), _ScriptedProbe(c), every=1, max_scale=2.0,
                                   reference_decay=decay)
        _steps(wrap, p, len(c))
        scales[decay] = np.array([h["scale"] for h in wrap.history])
    assert np.all(scales[None][1:] == 2.0)
    s = scales[0.8][10:]
    assert (s > 1).any() and (s < 1).any() and np.all(s < 2.0)


def test_running_reference_state_round_trip_and_bad_values():
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    a = CurvatureAdaptiveLR(torch.optim.SGD([p], lr=0.1), _ScriptedProbe([1.0, 3.0, 0.5, 2.0]), every=1,
                            reference_decay=0.9)
    _steps(a, p, 2)
    q = nn.Parameter(p.detach().clone())
    b = CurvatureAdaptiveLR(torch.optim.SGD([q], lr=0.1), _ScriptedProbe([0.5, 2.0]), every=1, reference_decay=0.9)
    b.load_state_dict(a.state_dict())
    _steps(a, p, 2)
    _steps(b, q, 2)
    assert [h["scale"] for h in a.history] == [h["scale"] for h in b.history]
    assert a.reference == b.reference
    with pytest.raises(ValueError, match="reference_decay"):
        CurvatureAdaptiveLR(torch.optim.SGD([p], lr=0.1), _ScriptedProbe([]), reference_decay=1.0)
    with pytest.raises(ValueError, match="reference_decay"):
        c = CurvatureAdaptiveLR(torch.optim.SGD([p], lr=0.1), _ScriptedProbe([]), reference_decay=0.5)
        c.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="reference"):
        CurvatureAdaptiveLR(torch.optim.SGD([p], lr=0.1), _ScriptedProbe([]), reference=float("inf"))
    wrap = CurvatureAdaptiveLR(torch.optim.SGD([p], lr=0.1), _ScriptedProbe([float("nan")]), every=1)
    with pytest.raises(FloatingPointError, match="curvature"):
        _steps(wrap, p, 1)
