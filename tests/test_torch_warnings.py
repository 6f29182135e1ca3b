"""No warning raised inside torch reaches a user of the HVP and Hessian tools: torch warns ("`torch.jit.script` is
deprecated") when a process makes its first dual tensor, so each case runs in a fresh process whose first use of
forward-mode AD is the call under test, with every warning turned into an error around it.

The processes fork from a server that has imported torch and lamda_ext and nothing else (multiprocessing's
``forkserver``): each case starts clean without paying for the imports again."""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

SETUP = """
import sys, warnings
import torch
from torch import nn
import lamda_ext
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
x = torch.randn(5, 4, dtype=torch.float64)
y = torch.randint(0, 3, (5,))
P = sum(p.numel() for p in model.parameters())
V = torch.randn(3, P, dtype=torch.float64)
assert "torch._decomp.decompositions_for_jvp" not in sys.modules, "forward-mode AD was used before the call"
with warnings.catch_warnings():
    warnings.simplefilter("error")
    {call}
assert "torch._decomp.decompositions_for_jvp" in sys.modules, "the call did not use forward-mode AD"
"""

CALLS = {
    "hvp_one_direction": "lamda_ext.hvp(model, x, y, V[0])",
    "hvp_k_directions": "lamda_ext.hvp(model, x, y, V)",
    "hvp_input": "lamda_ext.hvp(model, x, y, torch.randn(2, 5, 4, dtype=torch.float64), wrt='input')",
    "operator_kept_linearisation": "lamda_ext.HessianOperator(model, 'cross_entropy', (x, y)).matvec(V)",
    "operator_recomputed": "lamda_ext.HessianOperator(model, 'cross_entropy', (x, y), memory_budget=0).matvec(V)",
    "hessian_eigs": "lamda_ext.hessian_eigs(model, 'cross_entropy', (x, y), k=2)",
    "func_backend": "lamda_ext.directional_derivs(model, x, y, order=3, directions=2, backend='func')",
}


_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(["torch", "lamda_ext"])


def _run_case(code: str) -> None:
    exec(code, {})


@pytest.mark.parametrize("case", sorted(CALLS))
def test_no_torch_warning_escapes(case):
    with ProcessPoolExecutor(1, mp_context=_FORKS) as pool:      # a crashed process raises BrokenProcessPool
        pool.submit(_run_case, SETUP.format(call=CALLS[case])).result(timeout=300)
