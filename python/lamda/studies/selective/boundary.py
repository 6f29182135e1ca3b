"""The selective study's measurement.

Test points near a class pair's boundary, and λ on them with per-point directions.

Boundary points of a pair (``rule="label"``, the study's): the point's true label is in the pair and its
top-class probability lies in [0.2, 0.8]; at most ``max_points`` of those are sampled at random (seeded). With
``rule="top2"``: the two most probable classes are the pair, top-class probability in [0.2, 0.8], the
``max_points`` smallest margins ``|p_a − p_b|``. A pair with fewer than ``MIN_POINTS`` points is reported as
missing. λ: orders 1–4, K = 4 **per-point** directions: every boundary point draws its own K unit Gaussian input
directions (chunk ``c`` of 50 points from ``torch.Generator`` seed ``direction_seed + c``); λ per direction k is
the slope of the mean over points of log|d_n| against n, and the pair's λ is the mean over k.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...trainer import evaluate
from .config import BOUNDARY_RULES, MEASURE_CHUNK, MEASURE_K, MEASURE_ORDER, MIN_POINTS, PAIRS, PROB_WINDOW, pair_name

__all__ = ["BoundarySelection", "boundary_points", "measure_pair_lambda", "measure_pairs"]


@dataclass(frozen=True)
class BoundarySelection:
    """The boundary points of one class pair.

    ``indices [n_points]`` into the test set, the number of ``candidates`` that met the rule before the cap, and ``ok``
    (``n_points ≥ min_points``).
    """
    indices: np.ndarray
    candidates: int
    ok: bool

    @property
    def n_points(self) -> int:
        """The number of points selected."""
        return int(len(self.indices))


def boundary_points(probs: torch.Tensor, labels: torch.Tensor, pair, *, rule: str = "label",
                    window: tuple[float, float] = PROB_WINDOW, max_points: int = 200, min_points: int = MIN_POINTS,
                    seed: int = 0) -> BoundarySelection:
    """Test points near the boundary of ``pair = (a, b)``.

    Args:
        probs: softmax probabilities ``[N, C]``.
        labels: true labels ``[N]`` (int).
        pair: the two classes ``(a, b)``.
        rule: ``"label"`` (the study's): the true label is ``a`` or ``b`` and the top-class probability lies in
            ``window`` (inclusive); at most ``max_points`` of them drawn at random without replacement from
            ``torch.Generator().manual_seed(seed)``, returned in ascending index order.
            ``"top2"``: the two most probable classes are the pair (either order; labels unused),
            top-class probability in ``window``; the ``max_points`` smallest margins ``|p_a − p_b|``, closest first.
        window: ``(lo, hi)``, the range of the top-class probability.
        max_points: at most this many points.
        min_points: fewer selected points than this → ``ok = False`` (the pair's λ is reported as missing).
        seed: seeds the random choice of the ``"label"`` rule.
    """
    if rule not in BOUNDARY_RULES:
        raise ValueError(f"boundary rule must be one of {BOUNDARY_RULES}, got {rule!r}")
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"need probs [N, C] and labels [N], got {tuple(probs.shape)} and {tuple(labels.shape)}")
    lo, hi = window
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"probability window must satisfy 0 <= lo < hi <= 1, got {window}")
    if int(max_points) < 1 or int(min_points) < 1:
        raise ValueError(f"max_points and min_points must be >= 1, got {max_points}, {min_points}")
    a, b = (int(c) for c in pair)
    if not (0 <= a < probs.shape[1] and 0 <= b < probs.shape[1]) or a == b:
        raise ValueError(f"pair {pair} must name two different classes in 0..{probs.shape[1] - 1}")
    probs, labels = probs.detach().cpu(), labels.detach().cpu()
    pmax = probs.max(dim=1).values
    in_window = (pmax >= lo) & (pmax <= hi)
    if rule == "label":
        ok = in_window & ((labels == a) | (labels == b))
        idx = ok.nonzero().flatten()
        if len(idx) > max_points:
            perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(int(seed)))
            idx = idx[perm[:max_points]].sort().values
    else:
        top2 = probs.topk(2, dim=1).indices
        in_pair = ((top2[:, 0] == a) & (top2[:, 1] == b)) | ((top2[:, 0] == b) & (top2[:, 1] == a))
        ok = in_pair & in_window
        idx = ok.nonzero().flatten()
        margin = (probs[idx, a] - probs[idx, b]).abs()
        idx = idx[torch.argsort(margin, stable=True)][:max_points]
    return BoundarySelection(idx.numpy().astype(np.int64), int(ok.sum()), len(idx) >= min_points)


def measure_pair_lambda(model, x: torch.Tensor, y: torch.Tensor, *, directions: int = MEASURE_K,
                        order: int = MEASURE_ORDER, direction_seed: int = 0, chunk_size: int = MEASURE_CHUNK,
                        backend: str = "auto") -> dict[str, np.ndarray]:
    """λ of ``model`` (eval mode, restored afterwards) on points ``x [P, *S]``, ``y [P]`` with per-point directions.

    Chunk ``c`` of ``chunk_size`` points draws its ``[K, b, *S]`` unit directions on the CPU from
    ``torch.Generator().manual_seed(direction_seed + c)`` (``lamda_ext.random_directions``: one direction per
    point and k). Returns ``derivatives [P, K, N]`` (float64) and ``lambda_values [K]`` (slope over n of the
    mean over points of log|d_n|, exact zeros masked: ``lamda_ext.curvature_rate(pool="points")``).
    """
    import lamda_ext
    was = model.training
    model.eval()
    try:
        out = []
        for c, i in enumerate(range(0, x.shape[0], chunk_size)):
            xc, yc = x[i:i + chunk_size], y[i:i + chunk_size]
            g = torch.Generator().manual_seed(int(direction_seed) + c)
            u = lamda_ext.random_directions(xc.detach().cpu(), directions, g).to(xc.device, xc.dtype)
            d = lamda_ext.directional_derivs(model, xc, yc, order=order, directions=u, backend=backend)
            out.append(d.detach().to("cpu", torch.float64))
    finally:
        model.train(was)
    dpp = torch.cat(out, 0)
    if not bool(torch.isfinite(dpp).all()):
        raise FloatingPointError("boundary-point derivatives contain NaN/inf; the model has diverged")
    lam = lamda_ext.curvature_rate(dpp, pool="points")
    return {"derivatives": dpp.numpy(), "lambda_values": lam.detach().cpu().numpy().astype(np.float64)}


def measure_pairs(model, x_test, y_test, *, rule: str, max_points: int, seed: int) -> tuple[dict, dict]:
    """λ per class pair on its boundary test points. Returns ``(summary, arrays)`` for json / npz."""
    _, _, probs = evaluate(model, x_test, y_test)
    summary, arrays = {}, {}
    for k, pair in enumerate(PAIRS):
        name = pair_name(pair)
        sel = boundary_points(probs, y_test, pair, rule=rule, max_points=max_points, seed=seed * 1000 + k)
        dseed = seed * 1000 + 100 * (k + 1)
        arrays[f"indices_{name}"] = sel.indices
        entry = {"n_points": sel.n_points, "n_candidates": sel.candidates, "lambda": None, "lambda_std": None,
                 "direction_seed": dseed, "status": "ok"}
        if not sel.ok:
            entry["status"] = f"missing: {sel.n_points} boundary point(s) < {MIN_POINTS}"
            arrays[f"derivatives_{name}"] = np.zeros((sel.n_points, MEASURE_K, MEASURE_ORDER))
            arrays[f"lambda_values_{name}"] = np.full(MEASURE_K, np.nan)
        else:
            idx = torch.as_tensor(sel.indices, device=x_test.device)
            r = measure_pair_lambda(model, x_test[idx], y_test[idx], direction_seed=dseed)
            lam = r["lambda_values"]
            entry["lambda"], entry["lambda_std"] = float(np.nanmean(lam)), float(np.nanstd(lam))
            arrays[f"derivatives_{name}"] = r["derivatives"]
            arrays[f"lambda_values_{name}"] = lam
        summary[name] = entry
    return summary, arrays
