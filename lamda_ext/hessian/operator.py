"""``HessianOperator``: the Hessian of a model's loss over a data set as a matrix-free operator.

``H = Σ_b n_b H_b / Σ_b n_b`` where ``H_b`` is the Hessian (w.r.t. the chosen parameters) of the
batch-mean loss of batch b with n_b samples (``reduction="mean"``), or ``H = Σ_b n_b H_b``, the Hessian
of the summed loss (``reduction="sum"``). The loss is ``loss(model(x), y)`` for ``(x, y)`` batches, or any
``loss_fn(model, batch) -> scalar`` (models with dict or several tensor inputs).

Products are forward-over-reverse HVPs (:mod:`lamda_ext.hvp`). Every product of a spectral method uses
the same batches, so each batch is linearised once (:class:`lamda_ext.hvp.LinearizedHVP`: one primal
forward and backward, the intermediates kept) and every later product replays only the tangent pass,
as long as the kept intermediates fit in ``memory_budget``; batches beyond it are recomputed per product.
The cache is dropped when a parameter changes (in-place update) or a batch differs from the cached one.

Quadratic forms ``zᵀHz`` (Hutchinson probes) need no HVP: ``zᵀHz = d²/dt² L(θ + t z)`` at t = 0, the
second directional derivative. :meth:`quadratic_forms` computes it for ``(x, y)`` batches when every
trainable parameter is differentiated (else by HVPs): one reverse pass per batch gives the adjoint of every
op output, and each probe then needs only a first-order Taylor pass whose second-order terms are contracted
with those adjoints where they arise (:mod:`lamda_ext.taylor.quadratic`); models or losses that contraction
does not cover take the plain order-2 Taylor run (:func:`lamda_ext.directional_derivs`).

With ``torch.distributed`` initialised, every rank evaluates its share of the data
(batches ``i % world == rank``, or a contiguous slice of the samples of a single batch) and the
sample-weighted partial products are all-reduced, so every rank gets the same ``H @ v`` and the
Lanczos / trace / density routines run data-parallel unchanged (gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .._ext import build_info
from .._state import fresh_input, outside_inference_mode
from ..checks import check_hvp_inputs, check_int, check_reduction, check_vector_like
from ..derivs import directional_derivs
from ..hvp import LinearizedHVP, loss_hvp
from ..losses import LossSpec, resolve_loss
from ..taylor.impl import Composite, Fused
from ..taylor.quadratic import QuadraticForms
from ..batches import holds_batches, own_loss_fn
from ..params import functional_state, model_loss_fn, select_parameters
from .data import (
    batch_samples,
    check_deterministic,
    dist_info,
    map_tensors,
    shard_batches,
    shard_loss_batches,
    tensor_leaves,
)

__all__ = ["HessianOperator", "as_operator"]


def _all_reduce_sum(acc: torch.Tensor, count: int, world: int) -> float:
    """Sum ``acc`` (in place) and the sample ``count`` over the ranks; the total sample count (ValueError when 0)."""
    total = torch.tensor([float(count)], dtype=torch.float64, device=acc.device)
    if world > 1:
        torch.distributed.all_reduce(acc)
        torch.distributed.all_reduce(total)
    if total.item() == 0:
        raise ValueError("data yielded no samples")
    return float(total.item())


_TAYLOR_SAMPLES = 2048   # probes × samples per Taylor pass (bounds its memory: activations [probes·B, ...])


def _default_budget(device: torch.device) -> int:
    """A quarter of the physical memory on the CPU; half of the free memory on a GPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] // 2)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4)
    except (ValueError, OSError, AttributeError):
        return 2 ** 31


class _LossCall(nn.Module):
    """``loss_fn(model, batch)`` as a module, so that ``functional_call`` can substitute the model's parameters."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.fn = loss_fn

    def forward(self, batch):
        return self.fn(self.model, batch)


class HessianOperator:
    """The loss Hessian of ``model`` on ``data`` as a symmetric ``[P, P]`` operator.

    Args:
        model: an ``nn.Module`` (its mode is used as it is).
        loss: ``"cross_entropy"`` (the default, also when None), ``"mse"`` or a callable
            ``(output, y) -> [B]`` per-sample loss; with ``loss_fn`` leave it None.
        data: an ``(x, y)`` pair or an iterable of pairs (e.g. a ``DataLoader`` without shuffling);
            with ``loss_fn``: one batch (a tensor, a dict, or a tuple of tensors) or an iterable of batches
            of any form. Batches that are mappings of the model's keyword arguments (dicts, Hugging Face
            ``BatchEncoding``) with neither ``loss`` nor ``loss_fn`` given: the model's own loss from their
            ``labels``, as the mean (``reduction="sum"``: the sum) of the per-sample losses of
            :func:`lamda_ext.batches.sample_losses`. Batches are moved to the parameters' device; iterables are re-iterated on every product.
        loss_fn: ``loss_fn(model, batch) -> scalar`` instead of ``loss``: the batch-mean loss
            (``reduction="mean"``; batches are weighted by their sample count, the leading size of the
            batch's first tensor) or the batch's summed loss (``reduction="sum"``).
        reduction: ``"mean"`` (Hessian of the mean loss over all samples) or ``"sum"`` (of the summed loss).
        params: the parameters to differentiate: tensors, names of parameters or submodules, a predicate
            ``f(name) -> bool`` or a submodule (:func:`lamda_ext.params.select_parameters`; default every
            parameter with ``requires_grad``); P counts them flattened in ``model.parameters()`` order.
        label_smoothing: for cross-entropy.
        allow_nondeterministic: skip the refusal of active dropout, train-mode batch norm and
            shuffling loaders (which make repeated products disagree; such a setup is never cached).
        shard: with ``torch.distributed`` initialised, split ``data`` across ranks (default). Pass
            ``False`` when every rank already holds only its own share (e.g. a ``DistributedSampler``);
            the products are all-reduced in both cases.
        chunk: the most directions one vmapped tangent evaluation takes at once (bounds memory; all
            directions share one primal pass); None = one at a time on the CPU, all at once on a GPU.
        memory_budget: bytes of linearised batches to keep between products (see the module docstring);
            None = a quarter of the physical memory (CPU) or half of the free GPU memory; 0 = recompute
            every product.

    ``H @ V`` takes one vector ``[P]`` or rows ``[K, P]`` (the layout of :func:`lamda_ext.hvp`) and returns
    the same shape; ``to_scipy()`` gives a ``scipy.sparse.linalg.LinearOperator`` (float64 numpy in and out).
    """

    def __init__(self, model: nn.Module, loss: LossSpec | None = None, data=None, *, params=None,
                 label_smoothing: float = 0.0, allow_nondeterministic: bool = False,
                 shard: bool = True, chunk: int | None = None, loss_fn: Callable | None = None,
                 reduction: str = "mean", memory_budget: int | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if data is None:
            raise ValueError("data is required: an (x, y) pair or an iterable of (x, y) pairs "
                             "(with loss_fn: a batch or an iterable of batches)")
        check_int(chunk, "chunk", allow_none=True)
        if loss_fn is None and loss is None and holds_batches(data):    # keyword batches: the model's own loss
            loss_fn = own_loss_fn(reduction)
        if loss_fn is not None:
            if not callable(loss_fn):
                raise TypeError(f"loss_fn must be a callable loss_fn(model, batch) -> scalar, got {type(loss_fn).__name__}")
            if loss is not None:
                raise ValueError("pass either loss (with (x, y) batches) or loss_fn(model, batch), not both")
            if label_smoothing:
                raise ValueError("label_smoothing applies to loss='cross_entropy'; put it in loss_fn instead")
        check_reduction(reduction)
        if memory_budget is not None and (isinstance(memory_budget, bool) or int(memory_budget) < 0):
            raise ValueError(f"memory_budget must be a number of bytes ≥ 0 or None, got {memory_budget!r}")
        try:
            check_deterministic(model, data)
            deterministic = True
        except ValueError:
            if not allow_nondeterministic:
                raise
            deterministic = False
        self.model = model
        self.batch_loss_fn = loss_fn
        self.loss = None if loss_fn is not None else ("cross_entropy" if loss is None else loss)
        self.loss_fn = None if loss_fn is not None else resolve_loss(self.loss, label_smoothing)
        self.reduction = reduction
        self.data = data
        self.params = select_parameters(model, params)
        first = next(iter(self.params.values()))
        self.dtype = first.dtype
        self.device = first.device
        self.size = sum(p.numel() for p in self.params.values())
        self.shape = (self.size, self.size)
        self.shard = bool(shard)
        self.chunk = None if chunk is None else int(chunk)
        self.memory_budget = (_default_budget(self.device) if memory_budget is None else int(memory_budget)) \
            if deterministic else 0
        self.deterministic = deterministic
        self.label_smoothing = float(label_smoothing)
        self.n_products = 0       # number of Hessian-vector products evaluated (rows)
        self.n_quadratic_forms = 0  # zᵀHz evaluated by Taylor passes (without an HVP)
        self.n_linearizations = 0  # primal forward+backward passes kept for reuse
        self.local_samples = 0    # samples this rank evaluated in the last product
        self._cache: dict[int, tuple[list[torch.Tensor], LinearizedHVP]] = {}
        self._cache_key = None
        self._cache_full = False
        self._forms: dict[int, tuple[list[torch.Tensor], QuadraticForms]] = {}   # per batch: its adjoints

    # ------------------------------------------------------------------ distributed helpers
    @property
    def rank_world(self) -> tuple[int, int]:
        return dist_info()

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's copy of ``t`` on every rank (identity when not distributed)."""
        _, world = dist_info()
        if world > 1:
            t = t.contiguous()
            torch.distributed.broadcast(t, src=0)
        return t

    # ------------------------------------------------------------------ products
    def flat_params(self) -> torch.Tensor:
        """The current parameter vector ``[P]`` (detached)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params.values()])

    def clear_cache(self) -> None:
        """Forget the linearised batches (they are also dropped when a parameter changes)."""
        self._cache.clear()
        self._cache_key = None
        self._cache_full = False
        self._forms.clear()

    def _drop_stale_caches(self) -> None:
        """Forget every kept batch when a parameter changed since the first was kept (the values are compared:
        in-place updates through ``.data`` bump no version)."""
        if (self._cache or self._forms) and (
                self._cache_key is None or not torch.equal(self.flat_params(), self._cache_key)):
            self.clear_cache()

    def _kept(self, cache: dict, i: int, leaves: list):
        """What ``cache`` keeps for the i-th batch if that batch's tensors are still ``leaves``, else None."""
        hit = cache.get(i)
        if hit is not None and len(hit[0]) == len(leaves) and all(
                a.shape == b.shape and torch.equal(a, b) for a, b in zip(hit[0], leaves)):
            return hit[1]
        return None

    def _keep(self, cache: dict, i: int, leaves: list, value) -> None:
        """Keep ``value`` for the i-th batch (a copy of its tensors to recognise it; the parameter fingerprint is
        taken with the first batch kept in either cache)."""
        if not (self._cache or self._forms):
            self._cache_key = self.flat_params()
        cache[i] = ([t.detach().clone() for t in leaves], value)

    @property
    def cached_bytes(self) -> int:
        """Bytes held by the linearised batches (and the adjoints kept for quadratic forms)."""
        return sum(lin.nbytes for _, lin in self._cache.values()) + sum(f.nbytes for _, f in self._forms.values())

    def _batches(self):
        """``(batch on the device, samples, loss function of the parameter dict)`` for this rank's share."""
        rank, world = dist_info()
        shard_rank, shard_world = (rank, world) if self.shard else (0, 1)
        to_dev = lambda t: t.to(self.device, non_blocking=True)
        names = list(self.params)
        if self.batch_loss_fn is None:
            for x, y in shard_batches(self.data, shard_rank, shard_world):
                x = to_dev(x)
                y = to_dev(y) if isinstance(y, torch.Tensor) else y
                if x.shape[0] == 0:
                    continue
                if x.is_inference():     # data made under torch.inference_mode(): usable outside it as a copy
                    x = x.clone()
                # the output/target check (one plain forward) runs on the first product only
                y = check_hvp_inputs(self.model, x, y, self.loss, "params", forward=self.n_products == 0)
                yield (x, y), x.shape[0], model_loss_fn(self.model, x, y, self.loss_fn, names)
            return
        wrapper = _LossCall(self.model, self.batch_loss_fn)
        state = {f"model.{k}": v for k, v in functional_state(self.model, set(names)).items()}
        for batch in shard_loss_batches(self.data, shard_rank, shard_world):
            batch = map_tensors(to_dev, batch)
            n = batch_samples(batch)
            if n == 0:
                continue

            def f(p, batch=batch):
                out = functional_call(wrapper, ({f"model.{k}": v for k, v in p.items()}, state), (fresh_input(batch),))
                if not isinstance(out, torch.Tensor) or out.dim() != 0:
                    raise ValueError("loss_fn(model, batch) must return a scalar tensor (the batch's mean or "
                                     f"summed loss), got {type(out).__name__} of shape "
                                     f"{list(getattr(out, 'shape', []))}")
                return out
            yield batch, n, f


    def _batch_hvp(self, i: int, batch, f, V: torch.Tensor) -> torch.Tensor:
        """``H_f V`` for the i-th batch, from its cached linearisation when there is one (or room for one)."""
        if self.memory_budget > 0:
            leaves = tensor_leaves(batch)
            kept = self._kept(self._cache, i, leaves)
            if kept is not None:
                return kept(V, self.chunk)
            if not self._cache_full:
                lin = LinearizedHVP(f, self.params)
                self.n_linearizations += 1
                out = lin(V, self.chunk)
                self._cache.pop(i, None)      # a different batch at this position: its old linearisation goes
                if self.cached_bytes + lin.nbytes <= self.memory_budget:
                    self._keep(self._cache, i, leaves, lin)
                else:
                    self._cache_full = True
                return out
        with torch.enable_grad():
            return loss_hvp(f, self.params, V, self.chunk)

    def _rows(self, V: torch.Tensor) -> torch.Tensor:
        """``H`` applied to each row of ``V`` ``[K, P]`` → ``[K, P]`` (over all data)."""
        _, world = dist_info()
        self._drop_stale_caches()
        acc = torch.zeros_like(V)
        count = 0
        # (x, y) batches give batch-mean Hessians: weight n_b for both reductions; a loss_fn gives the
        # batch's mean (weight n_b) or sum (weight 1)
        unit = self.batch_loss_fn is not None and self.reduction == "sum"
        for i, (batch, n, f) in enumerate(self._batches()):
            hv = self._batch_hvp(i, batch, f, V)
            acc.add_(hv.detach(), alpha=1.0 if unit else float(n))
            count += n
        total = _all_reduce_sum(acc, count, world)
        self.local_samples = count
        self.n_products += V.shape[0]
        return acc / total if self.reduction == "mean" else acc

    @property
    def taylor_quadratic_forms(self) -> bool:
        """Whether :meth:`quadratic_forms` uses Taylor passes (``(x, y)`` data, all trainable parameters,
        a deterministic setup) rather than HVPs."""
        return (self.batch_loss_fn is None and self.deterministic and self._taylor_ok
                and list(self.params) == [n for n, p in self.model.named_parameters() if p.requires_grad])

    _taylor_ok = True

    def quadratic_forms(self, Z: torch.Tensor) -> torch.Tensor:
        """``z_iᵀ H z_i`` for each row of ``Z`` ``[n, P]`` → ``[n]`` float64 on the CPU.

        By second directional derivatives (Taylor mode, forward passes only) where
        :attr:`taylor_quadratic_forms` holds, else by HVPs; the two agree to rounding.
        """
        check_vector_like(Z, self.dtype, self.device, "parameters")
        if Z.dim() != 2 or Z.shape[1] != self.size:
            raise ValueError(f"Z must have shape [n, P]=[n, {self.size}], got {list(Z.shape)}")
        if self.taylor_quadratic_forms:
            try:
                return self._taylor_forms(Z)
            except NotImplementedError as err:   # an op without a Taylor rule: HVPs still work
                warnings.warn(f"HessianOperator.quadratic_forms: {err} Using HVPs instead.", RuntimeWarning,
                              stacklevel=2)
                self._taylor_ok = False
        return (Z.to(torch.float64) * self.matvec(Z).to(torch.float64)).sum(dim=1).cpu()

    def _taylor_forms(self, Z: torch.Tensor) -> torch.Tensor:
        rank, world = dist_info()
        shard_rank, shard_world = (rank, world) if self.shard else (0, 1)
        info = build_info()
        fused = info["cpu"] if self.device.type == "cpu" else info["cuda_available"]
        backend = "fused" if fused else "taylor"
        acc = torch.zeros(Z.shape[0], dtype=torch.float64, device=self.device)
        count = 0
        self._drop_stale_caches()
        for bi, (x, y) in enumerate(shard_batches(self.data, shard_rank, shard_world)):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True) if isinstance(y, torch.Tensor) else y
            n = x.shape[0]
            if n == 0:
                continue
            step = max(1, _TAYLOR_SAMPLES // n)
            forms = self._contracted_forms(bi, x, y, backend)
            with torch.no_grad():
                for i in range(0, Z.shape[0], step):
                    if forms is not None:
                        q = forms(Z[i:i + step])
                    else:
                        q = directional_derivs(self.model, x, y, order=2, directions=Z[i:i + step], loss=self.loss,
                                               wrt="params", backend=backend,
                                               label_smoothing=self.label_smoothing)[:, 1]
                    acc[i:i + step] += float(n) * q.to(torch.float64)
            count += n
        total = _all_reduce_sum(acc, count, world)
        self.n_quadratic_forms += Z.shape[0]
        return (acc / total if self.reduction == "mean" else acc).cpu()

    _contract_ok = True

    def _contracted_forms(self, i: int, x, y, backend: str):
        """:class:`~lamda_ext.taylor.quadratic.QuadraticForms` for the i-th batch (one adjoint pass, then
        first-order Taylor passes per block of probes; kept for later calls on the same batch and parameters
        within ``memory_budget``), or None where the model or loss needs the plain order-2 Taylor run (the
        same numbers, more arithmetic). A new batch is checked first (one plain forward)."""
        if not self._contract_ok:
            return None
        leaves = tensor_leaves((x, y))
        kept = self._kept(self._forms, i, leaves)
        if kept is not None:
            return kept
        y = check_hvp_inputs(self.model, x, y, self.loss, "params", forward=True)
        try:
            forms = QuadraticForms(self.model, x, y, self.loss, self.label_smoothing,
                                   Fused() if backend == "fused" else Composite())
        except (NotImplementedError, RuntimeError):
            self._contract_ok = False
            return None
        self._forms.pop(i, None)
        if self.cached_bytes + forms.nbytes <= self.memory_budget:
            self._keep(self._forms, i, leaves, forms)
        return forms

    @outside_inference_mode
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for one vector ``v`` ``[P]``, or ``H v_k`` for each row of ``V`` ``[K, P]`` (same shape out)."""
        check_vector_like(v, self.dtype, self.device, "parameters")
        P = self.size
        if v.dim() == 1 and v.shape[0] == P:
            return self._rows(v.unsqueeze(0))[0]
        if v.dim() == 2 and v.shape[1] == P and v.shape[0] >= 1:
            return self._rows(v)
        if v.dim() == 2 and v.shape[0] == P:
            raise ValueError(f"v has shape {list(v.shape)}, the old column layout [P, K]: the operator takes "
                             f"vectors as rows [K, P]=[K, {P}] (as lamda_ext.hvp does); pass v.T and transpose "
                             "the result")
        raise ValueError(f"v must have shape [P]=[{P}] or [K, P]=[K, {P}], got {list(v.shape)}")

    __matmul__ = matvec
    mv = matvec

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` of shape ``(P, P)`` and dtype float64 (``matmat`` takes
        scipy's column layout ``[P, K]``)."""
        from scipy.sparse.linalg import LinearOperator

        def _mv(a):
            t = torch.as_tensor(np.ascontiguousarray(a).reshape(-1), dtype=self.dtype).to(self.device)
            return self.matvec(t).detach().to("cpu", torch.float64).numpy().reshape(a.shape)

        def _mm(a):
            t = torch.as_tensor(np.ascontiguousarray(np.asarray(a).T), dtype=self.dtype).to(self.device)
            return np.ascontiguousarray(self.matvec(t).detach().to("cpu", torch.float64).numpy().T)

        return LinearOperator(self.shape, matvec=_mv, rmatvec=_mv, matmat=_mm, rmatmat=_mm, dtype=np.float64)

    def __repr__(self) -> str:
        return (f"HessianOperator(P={self.size}, dtype={self.dtype}, device={self.device}, "
                f"loss={self.loss if self.batch_loss_fn is None else self.batch_loss_fn!r}, "
                f"reduction={self.reduction!r}, world={dist_info()[1]})")


def as_operator(model, loss, data, **kw) -> HessianOperator:
    """``model`` itself when it is already a :class:`HessianOperator`, else a new one."""
    if isinstance(model, HessianOperator):
        if data is not None or kw:
            raise ValueError("model is already a HessianOperator: pass data and operator options when building it")
        return model
    return HessianOperator(model, loss, data, **kw)
