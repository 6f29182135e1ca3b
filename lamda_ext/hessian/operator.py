"""``HessianOperator``: the Hessian of a model's loss over a data set as a matrix-free operator.

``H = Σ_b n_b H_b / Σ_b n_b`` where ``H_b`` is the Hessian (w.r.t. the chosen parameters) of the
batch-mean loss of batch b with n_b samples. Products are forward-over-reverse HVPs
(:func:`lamda_ext.hvp`), vmapped over the columns of a block.

With ``torch.distributed`` initialised, every rank evaluates its share of the data
(batches ``i % world == rank``, or a contiguous slice of the samples of a single batch) and the
sample-weighted partial products are all-reduced, so every rank gets the same ``H @ v`` and the
Lanczos / trace / density routines run data-parallel unchanged (gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .._state import outside_inference_mode
from ..checks import check_hvp_inputs, check_int, check_vector_like
from ..hvp import params_hvp
from ..params import trainable_parameters
from ..losses import LossSpec, resolve_loss
from .data import check_deterministic, dist_info, shard_batches

__all__ = ["HessianOperator", "as_operator"]


def _select_params(model: nn.Module, params) -> dict[str, torch.Tensor]:
    if params is None:
        sel = trainable_parameters(model)
        if not sel:
            raise ValueError("the model has no parameters with requires_grad=True")
        return sel
    named = dict(model.named_parameters())
    if isinstance(params, dict):
        wanted_ids = {id(p) for p in params.values()}
    else:
        wanted_ids = set()
        for p in params:
            if isinstance(p, str):
                if p not in named:
                    raise ValueError(f"params: the model has no parameter named {p!r}")
                wanted_ids.add(id(named[p]))
            elif isinstance(p, torch.Tensor):
                wanted_ids.add(id(p))
            else:
                raise TypeError(f"params must hold parameter tensors or names, got {type(p).__name__}")
    sel = {n: p for n, p in named.items() if id(p) in wanted_ids}
    if len(sel) != len(wanted_ids):
        raise ValueError("params: some of the given tensors are not parameters of the model")
    if not sel:
        raise ValueError("params is empty")
    return sel


class HessianOperator:
    """The loss Hessian of ``model`` on ``data`` as a symmetric ``[P, P]`` operator.

    Args:
        model: an ``nn.Module`` (its mode is used as it is).
        loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(output, y) -> [B]`` per-sample loss.
        data: an ``(x, y)`` pair or an iterable of pairs (e.g. a ``DataLoader`` without shuffling);
            batches are moved to the parameters' device; iterables are re-iterated on every product.
        params: the parameters to differentiate (tensors or names; default every parameter with
            ``requires_grad``); P counts them flattened in ``model.parameters()`` order.
        label_smoothing: for cross-entropy.
        allow_nondeterministic: skip the refusal of active dropout, train-mode batch norm and
            shuffling loaders (which make repeated products disagree).
        shard: with ``torch.distributed`` initialised, split ``data`` across ranks (default). Pass
            ``False`` when every rank already holds only its own share (e.g. a ``DistributedSampler``);
            the products are all-reduced in both cases.
        chunk: the most directions one vmapped tangent evaluation takes at once (bounds memory; all
            directions share one primal pass); None = one at a time on the CPU, all at once on a GPU.

    ``H @ v`` takes ``v`` of shape ``[P]`` or a block ``[P, K]`` and returns the same shape;
    ``to_scipy()`` gives a ``scipy.sparse.linalg.LinearOperator`` (float64 numpy in and out).
    """

    def __init__(self, model: nn.Module, loss: LossSpec = "cross_entropy", data=None, *, params=None,
                 label_smoothing: float = 0.0, allow_nondeterministic: bool = False,
                 shard: bool = True, chunk: int | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if data is None:
            raise ValueError("data is required: an (x, y) pair or an iterable of (x, y) pairs")
        check_int(chunk, "chunk", allow_none=True)
        if not allow_nondeterministic:
            check_deterministic(model, data)
        self.model = model
        self.loss = loss
        self.loss_fn = resolve_loss(loss, label_smoothing)
        self.data = data
        self.params = _select_params(model, params)
        first = next(iter(self.params.values()))
        self.dtype = first.dtype
        self.device = first.device
        self.size = sum(p.numel() for p in self.params.values())
        self.shape = (self.size, self.size)
        self.shard = bool(shard)
        self.chunk = None if chunk is None else int(chunk)
        self.n_products = 0       # number of Hessian-vector products evaluated (columns)
        self.local_samples = 0    # samples this rank evaluated in the last product

    # ------------------------------------------------------------------ distributed helpers
    @property
    def rank_world(self) -> tuple[int, int]:
        return dist_info()

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's copy of ``t`` on every rank (identity when not distributed)."""
        rank, world = dist_info()
        if world > 1:
            t = t.contiguous()
            torch.distributed.broadcast(t, src=0)
        return t

    # ------------------------------------------------------------------ products
    def flat_params(self) -> torch.Tensor:
        """The current parameter vector ``[P]`` (detached)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params.values()])

    def _rows(self, V: torch.Tensor) -> torch.Tensor:
        """``H`` applied to each row of ``V`` ``[K, P]`` → ``[K, P]`` (sample-weighted over all data)."""
        rank, world = dist_info()
        shard_rank, shard_world = (rank, world) if self.shard else (0, 1)
        acc = torch.zeros_like(V)
        count = 0
        for x, y in shard_batches(self.data, shard_rank, shard_world):
            x = x.to(self.device, non_blocking=True)
            if isinstance(y, torch.Tensor):
                y = y.to(self.device, non_blocking=True)
            n = x.shape[0]
            if n == 0:
                continue
            if x.is_inference():     # data made under torch.inference_mode(): usable outside it as a copy
                x = x.clone()
            # the output/target check (one plain forward) runs on the first product only
            y = check_hvp_inputs(self.model, x, y, self.loss, "params", forward=self.n_products == 0)
            with torch.enable_grad():
                hv = params_hvp(self.model, x, y, V, self.loss_fn, self.params, self.chunk)
            acc.add_(hv.detach(), alpha=float(n))
            count += n
        total = torch.tensor([float(count)], dtype=torch.float64, device=acc.device)
        if world > 1:
            torch.distributed.all_reduce(acc)
            torch.distributed.all_reduce(total)
        if total.item() == 0:
            raise ValueError("data yielded no samples")
        self.local_samples = count
        self.n_products += V.shape[0]
        return acc / float(total.item())

    @outside_inference_mode
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for ``v`` of shape ``[P]`` or a block ``[P, K]`` (same shape out)."""
        check_vector_like(v, self.dtype, self.device, "parameters")
        if v.dim() == 1 and v.shape[0] == self.size:
            return self._rows(v.unsqueeze(0))[0]
        if v.dim() == 2 and v.shape[0] == self.size:
            return self._rows(v.t().contiguous()).t()
        raise ValueError(f"v must have shape [P]=[{self.size}] or [P, K]=[{self.size}, K], got {list(v.shape)}")

    __matmul__ = matvec
    mv = matvec

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` of shape ``(P, P)`` and dtype float64."""
        from scipy.sparse.linalg import LinearOperator

        def _mv(a):
            t = torch.as_tensor(np.ascontiguousarray(a).reshape(-1), dtype=self.dtype).to(self.device)
            return self.matvec(t).detach().to("cpu", torch.float64).numpy().reshape(a.shape)

        def _mm(a):
            t = torch.as_tensor(np.ascontiguousarray(a), dtype=self.dtype).to(self.device)
            return self.matvec(t).detach().to("cpu", torch.float64).numpy()

        return LinearOperator(self.shape, matvec=_mv, rmatvec=_mv, matmat=_mm, rmatmat=_mm, dtype=np.float64)

    def __repr__(self) -> str:
        return (f"HessianOperator(P={self.size}, dtype={self.dtype}, device={self.device}, "
                f"loss={self.loss!r}, world={dist_info()[1]})")


def as_operator(model, loss, data, **kw) -> HessianOperator:
    """``model`` itself when it is already a :class:`HessianOperator`, else a new one."""
    if isinstance(model, HessianOperator):
        return model
    return HessianOperator(model, loss, data, **kw)
