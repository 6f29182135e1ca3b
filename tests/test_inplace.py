"""In-place ops on Taylor series: the mutation updates the series (views included) — checked
against nested autograd in float64 — or the op is refused with a NotImplementedError naming the op and module."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests._helpers import rel_err
from lamda_ext import directional_derivs


class Mutating(nn.Module):
    def __init__(self, case):
        super().__init__()
        self.fc, self.out, self.case = nn.Linear(6, 6), nn.Linear(6, 3), case

    def forward(self, x):
        t = self.fc(x)                     # a linear output: autograd allows mutating it
        c = self.case
        if c == "add_":
            t.add_(1.0)
            h = t * t
        elif c == "iadd_series":
            h = t
            h += torch.sigmoid(x)          # += rebinds h to the same (mutated) object
            h = h * t                      # t is h: sees the mutation
        elif c == "slice_mul_":
            t[:, :3].mul_(2.0)
            h = t
        elif c == "base_mutated_after_view":
            v = t[:, 2:]
            t.mul_(2.0)
            h = torch.cat([t[:, :2], v], 1) + v.sum(1, keepdim=True)
        elif c == "setitem":
            t[:, 1:4] = torch.sigmoid(x[:, :3]) * t[:, 2:5].clone()
            h = t
        elif c == "view_chain":
            v = t.view(-1).view(t.shape).transpose(0, 1)
            v.mul_(3.0)
            h = t * t
        elif c == "relu_inplace":
            F.relu(t, inplace=True)
            h = t + 1.0
        elif c == "dropout_inplace":
            F.dropout(t, 0.3, self.training, True)
            h = t * 1.0
        elif c == "masked_fill_":
            t.masked_fill_(torch.arange(6) % 2 == 0, 0.5)
            h = t
        return self.out(torch.tanh(h))


CASES = ["add_", "iadd_series", "slice_mul_", "base_mutated_after_view", "setitem", "view_chain", "relu_inplace",
         "dropout_inplace", "masked_fill_"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", ["taylor", "fused"])
def test_inplace_matches_autograd(case, backend):
    torch.manual_seed(0)
    model = Mutating(case).double().train()
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    u = torch.randn(2, 4, 6, dtype=torch.float64)
    torch.manual_seed(1)
    ref = directional_derivs(model, x, y, order=4, directions=u, backend="autograd")
    torch.manual_seed(1)
    got = directional_derivs(model, x, y, order=4, directions=u, backend=backend)
    assert rel_err(got, ref) < 1e-10


class IntoPlain(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.fc, self.how = nn.Linear(4, 3), how

    def forward(self, x):
        h = self.fc(x)
        z = torch.zeros_like(h)
        if self.how == "add_":
            z.add_(h)
        else:
            z[:, :2] = h[:, :2]
        return z


@pytest.mark.parametrize("how", ["add_", "setitem"])
def test_writing_a_series_into_a_plain_tensor_is_refused(how):
    model = IntoPlain(how).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match=r"in-place op '(add|setitem)'.*module '<root>' \(IntoPlain\)"):
        directional_derivs(model, x, torch.tensor([0, 1]), order=2, directions=2, backend="taylor")


def test_auto_falls_back_when_refused():
    model = IntoPlain("add_").double()
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="in-place op 'add'"):
        got = directional_derivs(model, x, torch.tensor([0, 1]), order=2, directions=2, backend="auto",
                                 generator=torch.Generator().manual_seed(0))
    ref = directional_derivs(model, x, torch.tensor([0, 1]), order=2, directions=2, backend="autograd",
                             generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, ref)
