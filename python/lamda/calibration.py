"""Calibration: expected calibration error (ECE) and reliability diagrams.

Binning: ``n_bins`` equal-width bins of the confidence ``max_c p_c``; bin i holds confidences in
``(i/n, (i+1)/n]`` — right-closed, except that a confidence of exactly 0 goes to the first bin
(so 1.0 lands in the last bin and every value in [0, 1] has exactly one bin). Computed in float64.

    ECE = Σ_bins (n_bin / N) · |accuracy_bin − mean confidence_bin|
"""
from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["expected_calibration_error", "calibration_bins", "reliability_diagram"]


def _as_tensors(probs, labels) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.as_tensor(probs).detach().to("cpu")
    labels = torch.as_tensor(labels).detach().to("cpu")
    if not probs.dtype.is_floating_point:
        raise TypeError(f"probs must be floating point, got {probs.dtype}")
    if probs.dim() != 2 or probs.shape[0] < 1 or probs.shape[1] < 1:
        raise ValueError(f"probs must have shape [N, C] with N, C ≥ 1, got {list(probs.shape)}")
    if labels.dim() != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(f"labels must have shape [N]=[{probs.shape[0]}], got {list(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    probs = probs.to(torch.float64)
    if not torch.isfinite(probs).all():
        raise ValueError("probs contains NaN or inf")
    if bool((probs < 0).any()) or bool((probs > 1).any()):
        raise ValueError("probs must lie in [0, 1] (pass softmax probabilities, not logits)")
    if bool((labels < 0).any()) or bool((labels >= probs.shape[1]).any()):
        raise ValueError(f"labels must be in [0, {probs.shape[1] - 1}]")
    return probs, labels.long()


def calibration_bins(probs, labels, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin statistics of a reliability diagram.

    ``edges [n+1]``, ``counts [n]``, ``accuracy [n]`` and ``confidence [n]`` (NaN for empty bins), from ``probs [N, C]``
    softmax probabilities and ``labels [N]``.
    """
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be ≥ 1, got {n_bins}")
    n_bins = int(n_bins)
    probs, labels = _as_tensors(probs, labels)
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).to(torch.float64)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # bucketize(right=False) gives i with edges[i] < c <= edges[i+1] over the interior edges: (lo, hi]
    idx = torch.bucketize(conf, edges[1:-1], right=False)
    counts = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    nz = counts > 0
    nan = torch.full_like(counts, float("nan"))
    return {"edges": edges.numpy(), "counts": counts.numpy().astype(np.int64),
            "accuracy": torch.where(nz, acc_sum / counts.clamp_min(1), nan).numpy(),
            "confidence": torch.where(nz, conf_sum / counts.clamp_min(1), nan).numpy()}


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """ECE of softmax probabilities ``probs [N, C]`` against ``labels [N]`` (see the module docstring)."""
    b = calibration_bins(probs, labels, n_bins)
    n = b["counts"].sum()
    nz = b["counts"] > 0
    gap = np.abs(b["accuracy"][nz] - b["confidence"][nz])
    return float((b["counts"][nz] / n * gap).sum())


def reliability_diagram(probs, labels, path: str | os.PathLike, n_bins: int = 15, *, dpi: int = 200,
                        title: str | None = None) -> str:
    """Write a reliability diagram to ``path`` (PNG, atomic) and return the path.

    It shows the accuracy per confidence bin, the gap to the diagonal, and the share of samples per bin.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import check_dpi, save

    check_dpi(dpi)
    b = calibration_bins(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    edges = b["edges"]
    width = np.diff(edges)
    centers = edges[:-1] + width / 2
    nz = b["counts"] > 0
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(4.5, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centers[nz], b["accuracy"][nz], width=width[nz], edgecolor="black", color="#4c72b0", label="accuracy")
    gap_lo = np.minimum(b["accuracy"][nz], b["confidence"][nz])
    ax.bar(centers[nz], np.abs(b["accuracy"][nz] - b["confidence"][nz]), bottom=gap_lo, width=width[nz],
           color="#dd8452", alpha=0.5, edgecolor="#dd8452", label="gap")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"reliability diagram (ECE = {ece:.4f}, {n_bins} bins)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    axh.bar(centers, b["counts"] / b["counts"].sum(), width=width, color="gray", edgecolor="black")
    axh.set_xlabel("confidence")
    axh.set_ylabel("share")
    save(fig, path, dpi=dpi)
    return str(path)
