"""``HessianOperator``: a curvature matrix of a model's loss over a data set as a matrix-free operator.

``curvature`` chooses the matrix; each is the sample-weighted mean over batches of the batch matrices
(``reduction="mean"``: ``A = Σ_b n_b A_b / Σ_b n_b``) or the matrix of the summed loss (``reduction="sum"``):

* ``"hessian"``: the loss Hessian (HVPs, quadratic forms by Taylor passes:
  [`hessian_products`][lamda_ext.hessian.hessian_products]).
* ``"ggn"``: the generalised Gauss–Newton matrix ``Jᵀ ∇²ℓ J`` (J: the Jacobian of the model output).
* ``"fisher"``: the Fisher information of the model's predictive distribution (cross-entropy, MSE: equal to the GGN).
* ``"fisher_mc"``: its Monte-Carlo estimate with ``mc_samples`` targets per sample drawn from the predictive
  distribution, seeded by ``(mc_seed, batch position)``
  ([`lamda_ext.loss_curvature.sample_targets`][lamda_ext.loss_curvature.sample_targets]): a fixed matrix for a given
  seed, the same on any number of ranks and however the batches are cut into slices.
* ``"empirical_fisher"``: ``Σ_b g_b g_bᵀ`` (per ``reduction``) over the per-sample loss gradients ``g_b``.

The GGN-type curvatures are ``Jᵀ M J`` by a Jacobian–vector / vector–Jacobian pair
([`gauss_newton_products`][lamda_ext.hessian.gauss_newton_products]); ``ggn``, ``fisher`` and ``fisher_mc`` need ``(x,
y)`` batches and a ``loss`` (the output and the loss apart); the empirical Fisher also takes ``loss_fn(model, batch)``
(per-sample gradients of one-sample batches).

``memory_budget`` bounds the working memory of a product (and of a block of quadratic forms) together with what is
kept between products: the work is planned on the first batch, from one eager HVP's bound where the work is small
against the budget, else from measured trial slices ([`budget`][lamda_ext.hessian.budget]) — each batch is cut into slices of samples where its samples are independent,
and the rows go a chunk at a time — and the linearisation of a slice is kept ([`cache`][lamda_ext.hessian.cache]) only
in what the working memory leaves; kept values are dropped when a parameter changes or a slice differs from the kept
one. The numbers are those of the unsplit work up to the order of the float sums.

With ``torch.distributed`` initialised, every rank evaluates its share of the data (batches ``i % world == rank``,
or a contiguous slice of the samples of a single batch) and the sample-weighted partial products are all-reduced,
so every rank gets the same ``A @ v`` and the Lanczos / trace / density routines run data-parallel unchanged.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .._state import outside_inference_mode
from ..batches import holds_batches, own_loss_fn
from ..checks import check_hvp_inputs, check_int, check_reduction, check_vector_like
from ..losses import LossSpec, resolve_loss
from ..loss_curvature import check_curvature
from ..memory import Budget, format_bytes, resolve_budget
from ..params import select_parameters
from .budget import HessianPlan
from .cache import BatchCache
from .data import batch_samples, check_deterministic, dist_info, indexed_shards, map_tensors
from .gauss_newton_products import GaussNewtonProducts, PerSampleFisherProducts
from .hessian_products import HessianProducts
from .slicing import planned, run_slice, slices

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


def _check_loss_options(loss, loss_fn, label_smoothing, reduction, memory_budget, chunk, mc_samples) -> None:
    check_int(chunk, "chunk", allow_none=True)
    check_int(mc_samples, "mc_samples")
    if loss_fn is not None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be a callable loss_fn(model, batch) -> scalar, got {type(loss_fn).__name__}")
        if loss is not None:
            raise ValueError("pass either loss (with (x, y) batches) or loss_fn(model, batch), not both")
        if label_smoothing:
            raise ValueError("label_smoothing applies to loss='cross_entropy'; put it in loss_fn instead")
    check_reduction(reduction)
    if memory_budget != 0 and memory_budget is not None:
        resolve_budget(memory_budget, torch.device("cpu"))       # the checks of every entry point's budget


def _deterministic(model, data, curvature: str, allow: bool) -> bool:
    """Whether repeated products agree; a non-deterministic setup raises unless ``allow`` (Hessian only)."""
    try:
        check_deterministic(model, data, what="the Hessian" if curvature == "hessian" else f"curvature={curvature!r}")
        return True
    except ValueError as err:
        if curvature != "hessian":
            raise ValueError(f"{err} (allow_nondeterministic applies to curvature='hessian' only: J and Jᵀ of "
                             "the other curvatures must see one network)") from None
        if not allow:
            raise
        return False


class HessianOperator:
    """A curvature matrix (the loss Hessian by default) of ``model`` on ``data`` as a symmetric ``[P, P]`` operator.

    ``A @ V`` takes one vector ``[P]`` or rows ``[K, P]`` (the layout of [`hvp`][lamda_ext.hvp.hvp]) in the
    parameters' dtype and on their device, and returns the same shape, dtype and device (detached);
    ``quadratic_forms(Z)`` gives ``z_iᵀ A z_i`` for the rows of ``Z`` ``[n, P]`` as ``[n]`` float64 on the CPU;
    ``to_scipy()`` gives a ``scipy.sparse.linalg.LinearOperator`` (float64 numpy in and out);
    [`restrict`][lamda_ext.hessian.operator.HessianOperator.restrict] the same curvature on another parameter
    block. Nothing of size ``P × P`` is formed.

    Args:
        model: an ``nn.Module`` (its mode is used as it is).
        loss: ``"cross_entropy"`` (the default, also when None), ``"mse"`` or a callable ``(output, y) -> [B]``
            per-sample loss; with ``loss_fn`` leave it None.
        data: an ``(x, y)`` pair or an iterable of pairs (e.g. a ``DataLoader`` without shuffling), ``x`` ``[B, ...]``
            floating point, ``y`` the targets (``[B]`` int64 class labels for cross-entropy); with ``loss_fn``: one
            batch (a tensor, a dict, or a tuple of tensors) or an iterable of batches of any form. Batches that are
            mappings of the model's keyword arguments (dicts, Hugging Face ``BatchEncoding``) with neither ``loss`` nor
            ``loss_fn`` given: the model's own loss from their ``labels``, as the mean (``reduction="sum"``: the sum)
            of the per-sample losses of [`sample_losses`][lamda_ext.batches.sample_losses]. Batches are moved to the
            parameters' device; iterables are re-iterated on every product.
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"``, ``"fisher_mc"`` or ``"empirical_fisher"`` (module
            docstring). ``"fisher"``/``"fisher_mc"`` need ``loss="cross_entropy"`` or ``"mse"``.
        params: the parameters to differentiate: tensors, names of parameters or submodules, a predicate ``f(name)``
            or ``f(name, parameter) -> bool``, or a submodule
            ([`select_parameters`][lamda_ext.params.select_parameters]; default every parameter with
            ``requires_grad``); P counts them flattened in ``model.parameters()`` order.
        label_smoothing: for cross-entropy.
        allow_nondeterministic: ``curvature="hessian"`` only: skip the refusal of active dropout, train-mode batch
            norm and shuffling loaders (which make repeated products disagree; such a setup is never cached).
        shard: with ``torch.distributed`` initialised, split ``data`` across ranks (default). Pass ``False`` when
            every rank already holds only its own share (e.g. a ``DistributedSampler``); the products are all-reduced
            in both cases.
        chunk: the most directions one evaluation takes at once (a vmapped tangent pass, a Taylor pass of quadratic
            forms; all directions share one primal pass); None = products one at a time on the CPU, all at once on a
            GPU, quadratic forms up to 2048 probes × samples per Taylor pass; fewer where ``memory_budget`` demands.
        loss_fn: ``loss_fn(model, batch) -> scalar`` instead of ``loss``: the batch-mean loss (``reduction="mean"``;
            batches are weighted by their sample count, the leading size of the batch's first tensor) or the batch's
            summed loss (``reduction="sum"``). Curvatures ``"hessian"`` and ``"empirical_fisher"`` only.
        reduction: ``"mean"`` (the curvature of the mean loss over all samples) or ``"sum"`` (of the summed loss).
        memory_budget: bytes a product (or a block of quadratic forms) may use beyond the model, the data and the
            vectors in and out — its working memory together with the linearised slices kept between products — or
            ``"auto"`` (and None): half of the free memory of the parameters' device
            ([`resolve_budget`][lamda_ext.memory.resolve_budget]); 0 = keep nothing between products (the work
            within ``"auto"``). The first product (or block of forms) plans the work on the first batch
            ([`plan`][lamda_ext.hessian.budget.HessianPlan]): from one eager HVP on one or two samples where twice
            its bytes, per direction and the kept slice, fit the whole batch; else from the work measured on
            slices of 1, 4 and 8 samples. Each
            batch in slices of at most ``plan.sub_batch`` samples (``(x, y)`` batches, and batches of the
            ``loss_fn`` form whose every tensor has the leading sample size; with ``allow_nondeterministic`` batches
            are taken whole) and as many directions per evaluation as fit; the rest of the budget keeps slices'
            linearisations. A budget too small for one sample (a whole batch where it is not split) and one
            direction is refused (ValueError naming the smallest budget that works).
        mc_samples: ``curvature="fisher_mc"``: sampled targets per sample.
        mc_seed: ``curvature="fisher_mc"``: the seed of the sampled targets.

    Attributes:
        size: P.
        shape: ``(P, P)``.
        dtype: the parameters' dtype (of vectors in and out).
        device: the parameters' device.
        params: ``{name: parameter}`` of the differentiated parameters.
        curvature: the curvature's name.
        n_products: operator-vector products evaluated (rows).
        n_quadratic_forms: quadratic forms ``zᵀAz`` evaluated without a product.
        n_linearizations: linearised slices kept for reuse.
        plan: the [`HessianPlan`][lamda_ext.hessian.budget.HessianPlan] (slices, directions per evaluation, cache
            share), made by the first product or block of forms (None before; see `memory_plan`).

    Raises:
        ValueError: no or empty data, a non-deterministic setup (dropout active, batch norm in train mode, a shuffling
            loader: the message names the module; ``model.eval()`` fixes it), ``loss`` with ``loss_fn``, an unknown
            curvature or one the loss does not allow; at the first product, a ``memory_budget`` too small for one
            sample and one direction.
        TypeError: a model that is not an ``nn.Module``, a ``loss_fn`` that is not callable.

    Example:
        >>> import torch, lamda_ext
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
        >>> x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
        >>> H = lamda_ext.HessianOperator(model, "cross_entropy", (x, y))
        >>> H.shape
        (26, 26)
        >>> v = torch.randn(3, H.size, dtype=torch.float64)        # K = 3 directions as rows [K, P]
        >>> torch.allclose(H @ v, lamda_ext.hvp(model, x, y, v))
        True
        >>> dense = H @ torch.eye(H.size, dtype=torch.float64)      # P products: only for a tiny model
        >>> torch.allclose(dense, dense.T)
        True
        >>> G = lamda_ext.HessianOperator(model, "cross_entropy", (x, y), curvature="ggn")
        >>> F = lamda_ext.HessianOperator(model, "cross_entropy", (x, y), curvature="fisher")
        >>> torch.allclose(G @ v, F @ v)                           # for cross-entropy the Fisher is the GGN
        True
    """

    def __init__(self, model: nn.Module, loss: LossSpec | None = None, data=None, *, curvature: str = "hessian",
                 params=None, label_smoothing: float = 0.0, allow_nondeterministic: bool = False,
                 shard: bool = True, chunk: int | None = None, loss_fn: Callable | None = None,
                 reduction: str = "mean", memory_budget: Budget = "auto", mc_samples: int = 1, mc_seed: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if data is None:
            raise ValueError("data is required: an (x, y) pair or an iterable of (x, y) pairs "
                             "(with loss_fn: a batch or an iterable of batches)")
        if loss_fn is None and loss is None and holds_batches(data):    # keyword batches: the model's own loss
            loss_fn = own_loss_fn(reduction)
        _check_loss_options(loss, loss_fn, label_smoothing, reduction, memory_budget, chunk, mc_samples)
        self.loss = None if loss_fn is not None else ("cross_entropy" if loss is None else loss)
        self.curvature = check_curvature(curvature, self.loss, loss_fn is not None)
        self.deterministic = _deterministic(model, data, curvature, allow_nondeterministic)
        self._options = dict(curvature=curvature, label_smoothing=label_smoothing, shard=shard, chunk=chunk,
                             loss_fn=loss_fn, reduction=reduction, memory_budget=memory_budget,
                             mc_samples=mc_samples, mc_seed=mc_seed, allow_nondeterministic=allow_nondeterministic)
        self.model, self.data, self.batch_loss_fn, self.reduction = model, data, loss_fn, reduction
        self.loss_fn = None if loss_fn is not None else resolve_loss(self.loss, label_smoothing)
        self.params = select_parameters(model, params)
        first = next(iter(self.params.values()))
        self.dtype, self.device = first.dtype, first.device
        self.size = sum(p.numel() for p in self.params.values())
        self.shape = (self.size, self.size)
        self.shard = bool(shard)
        self.chunk = None if chunk is None else int(chunk)
        self.label_smoothing = float(label_smoothing)
        self.mc_samples, self.mc_seed = int(mc_samples), int(mc_seed)
        self._budget = resolve_budget("auto" if memory_budget == 0 else memory_budget, self.device)
        self.keeps = self.deterministic and memory_budget != 0    # whether slices are kept between products
        self.cache = BatchCache(0, self.flat_params)
        self.plan: HessianPlan | None = None
        self._unplanned: set = set()     # kinds of work with nothing to prepare (planned by their own calls)
        self._unverified: set = set()    # kinds planned whose first slice has not been measured yet
        self._widest = 0                 # the most samples a slice has had
        self._bound_points: list | None = []   # (samples, bytes) of the eager HVPs bounding the work; None: failed
        self.n_products = 0       # number of operator-vector products evaluated (rows)
        self.n_quadratic_forms = 0  # zᵀAz evaluated without a product
        self.n_linearizations = 0  # slices kept for reuse (linearisations, adjoints, per-sample gradients)
        self.local_samples = 0    # samples this rank evaluated in the last product
        if curvature == "hessian":
            self._work = HessianProducts(self)
        elif loss_fn is not None:
            self._work = PerSampleFisherProducts(self)
        else:
            self._work = GaussNewtonProducts(self)

    @property
    def memory_budget(self) -> int:
        """Bytes a product's working memory and the kept slices may use together."""
        return self._budget

    def memory_plan(self, kind: str = "products") -> HessianPlan:
        """The plan of ``kind`` (``"products"`` or ``"forms"``), measured on the first batch if not yet (no product).

        Measured on trial slices even where a product would plan from the bound of one eager HVP
        ([`HessianPlan.bounded`][lamda_ext.hessian.budget.HessianPlan]), so ``min_budget`` is the measured one.

        Raises:
            ValueError: a ``memory_budget`` too small for one sample and one direction.
        """
        if kind not in ("products", "forms"):
            raise ValueError(f"kind must be 'products' or 'forms', got {kind!r}")
        for _, shard, batch, n in self._shards():
            return planned(self, kind, shard, batch, n, measure=True)
        raise ValueError("data yielded no samples")

    def restrict(self, params) -> "HessianOperator":
        """The same curvature, data and options on another parameter selection (``params`` as in the constructor)."""
        return HessianOperator(self.model, self.loss if self.batch_loss_fn is None else None, self.data,
                               params=params, **self._options)

    # ------------------------------------------------------------------ distributed helpers
    @property
    def rank_world(self) -> tuple[int, int]:
        """``(rank, world size)`` of the default process group (``(0, 1)`` when not distributed)."""
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
        """Forget the kept batches (they are also dropped when a parameter changes)."""
        self.cache.clear()

    @property
    def cached_bytes(self) -> int:
        """Bytes held by the kept batches (linearisations, adjoints, per-sample gradients)."""
        return self.cache.nbytes

    def _shards(self):
        """``(position, shard, batch on the device, samples)`` for this rank's share of the data."""
        rank, world = dist_info()
        shard_rank, shard_world = (rank, world) if self.shard else (0, 1)
        to_dev = lambda t: t.to(self.device, non_blocking=True)   # noqa: E731
        loss_fn_form = self.batch_loss_fn is not None
        for i, shard in enumerate(indexed_shards(self.data, shard_rank, shard_world, loss_fn_form)):
            if loss_fn_form:
                batch = map_tensors(to_dev, shard.batch)
                n = batch_samples(batch)
            else:
                x, y = shard.batch
                x = to_dev(x)
                y = to_dev(y) if isinstance(y, torch.Tensor) else y
                n = x.shape[0]
                if n and x.is_inference():   # data made under torch.inference_mode(): usable outside it as a copy
                    x = x.clone()
                if n:   # the output/target check (one plain forward) runs on the first product only
                    y = check_hvp_inputs(self.model, x, y, self.loss, "params", forward=self.n_products == 0)
                batch = (x, y)
            if n:
                yield i, shard, batch, n

    def _accumulate(self, kind: str | None, like: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The sum over all ranks' slices of ``kind``'s weighted results for ``rows`` (``kind`` None: the diagonal).

        Divided by the sample count for ``reduction="mean"``.
        """
        _, world = dist_info()
        self.cache.check()
        acc = torch.zeros_like(like)
        count = 0
        for key, shard, batch, n in slices(self, kind):
            if kind is None:
                acc.add_(self._work.diagonal(key, shard, batch, n).detach())
            else:
                run_slice(self, acc, kind, key, shard, batch, n, rows)
            count += n
        total = _all_reduce_sum(acc, count, world)
        self.local_samples = count
        return acc.div_(total) if self.reduction == "mean" else acc

    def _rows(self, V: torch.Tensor) -> torch.Tensor:
        """``A`` applied to each row of ``V`` ``[K, P]`` → ``[K, P]`` (over all data)."""
        out = self._accumulate("products", V, V)
        self.n_products += V.shape[0]
        return out

    @property
    def taylor_quadratic_forms(self) -> bool:
        """Whether `quadratic_forms` of the Hessian uses Taylor passes rather than HVPs.

        It does for ``(x, y)`` data, all trainable parameters and a deterministic setup.
        """
        return self.curvature == "hessian" and self._work.forms_available

    @outside_inference_mode
    def quadratic_forms(self, Z: torch.Tensor) -> torch.Tensor:
        """``z_iᵀ A z_i`` for each row of ``Z`` ``[n, P]`` → ``[n]`` float64 on the CPU.

        Without a product where the curvature allows: the Hessian by second directional derivatives (Taylor
        mode, forward passes only; see
        [`taylor_quadratic_forms`][lamda_ext.hessian.operator.HessianOperator.taylor_quadratic_forms]), the GGN-type
        curvatures as ``(Jz)ᵀ M (Jz)`` (tangent forwards only); else from products. The ways agree to rounding.
        """
        check_vector_like(Z, self.dtype, self.device, "parameters")
        if Z.dim() != 2 or Z.shape[1] != self.size:
            raise ValueError(f"Z must have shape [n, P]=[n, {self.size}], got {list(Z.shape)}")
        if self._work.forms_available:
            like = torch.zeros(Z.shape[0], dtype=torch.float64, device=self.device)
            try:
                out = self._accumulate("forms", like, Z)
                self.n_quadratic_forms += Z.shape[0]
                return out.cpu()
            except NotImplementedError as err:   # an op without a Taylor rule: HVPs still work
                warnings.warn(f"HessianOperator.quadratic_forms: {err} Using HVPs instead.", RuntimeWarning,
                              stacklevel=2)
                self._work.disable_forms()
        return (Z.to(torch.float64) * self.matvec(Z).to(torch.float64)).sum(dim=1).cpu()

    @outside_inference_mode
    def exact_diagonal(self) -> torch.Tensor:
        """``diag(A)`` ``[P]`` of the Gauss–Newton-type curvatures, in the operator's dtype and on its device.

        From per-sample vector–Jacobian products: one pass over the data per output dimension (the empirical Fisher of a
        ``loss_fn``: one per-sample gradient pass).

        Raises:
            NotImplementedError: for ``curvature="hessian"`` (use
                [`hessian_diagonal`][lamda_ext.hessian.hessian_diagonal] with ``method="hutchinson"``).
        """
        if not hasattr(self._work, "diagonal"):
            raise NotImplementedError("the exact diagonal is available for curvature 'ggn', 'fisher', 'fisher_mc' "
                                      "and 'empirical_fisher'; for the Hessian use method='hutchinson'")
        like = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        return self._accumulate(None, like)

    @outside_inference_mode
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``A v`` for one vector ``v`` ``[P]``, or ``A v_k`` for each row of ``V`` ``[K, P]`` (same shape out)."""
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
        """The operator as a ``scipy.sparse.linalg.LinearOperator`` of shape ``(P, P)`` and dtype float64.

        ``matmat`` takes scipy's column layout ``[P, K]``.
        """
        from scipy.sparse.linalg import LinearOperator

        def _mv(a):
            t = torch.as_tensor(np.ascontiguousarray(a).reshape(-1), dtype=self.dtype).to(self.device)
            return self.matvec(t).detach().to("cpu", torch.float64).numpy().reshape(a.shape)

        def _mm(a):
            t = torch.as_tensor(np.ascontiguousarray(np.asarray(a).T), dtype=self.dtype).to(self.device)
            return np.ascontiguousarray(self.matvec(t).detach().to("cpu", torch.float64).numpy().T)

        return LinearOperator(self.shape, matvec=_mv, rmatvec=_mv, matmat=_mm, rmatmat=_mm, dtype=np.float64)

    def __repr__(self) -> str:
        plan = "not yet planned"
        if self.plan is not None:
            rows = ", ".join(f"{kind}: {'all' if k is None else k}" for kind, k in self.plan.chunk.items())
            plan = f"sub_batch={self.plan.sub_batch}, chunk={{{rows}}}"
        return (f"HessianOperator(P={self.size}, curvature={self.curvature!r}, dtype={self.dtype}, "
                f"device={self.device}, loss={self.loss if self.batch_loss_fn is None else self.batch_loss_fn!r}, "
                f"reduction={self.reduction!r}, world={dist_info()[1]}, memory_budget={format_bytes(self._budget)}, "
                f"{plan})")


def as_operator(model, loss, data, **kw) -> HessianOperator:
    """``model`` itself when it is already a `HessianOperator`, else a new one."""
    if isinstance(model, HessianOperator):
        if data is not None or kw:
            raise ValueError("model is already a HessianOperator: pass data and operator options when building it")
        return model
    return HessianOperator(model, loss, data, **kw)
