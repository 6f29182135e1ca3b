"""Random directions, drawn from a ``torch.Generator`` so every measurement can be regenerated.

Input space: Gaussian, normalised to unit length over all input dims of each point.
Parameter space: Gaussian over all parameters (``model.parameters()`` order), either unit
length overall or filter-normalised (each output filter of a weight scaled to that filter's
norm; 1-D parameters such as biases and batch-norm affine parameters set to zero).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def _randn(shape, generator: Optional[torch.Generator], dtype, device) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=gdev).to(device)


def random_directions(x: torch.Tensor, k: int, generator: Optional[torch.Generator] = None,
                      shared: bool = False) -> torch.Tensor:
    """K unit Gaussian input directions, normalised over all input dims ``S`` of a point.

    Args:
        x: inputs ``[B, *S]``; the directions take its dtype and device.
        k: K, the number of directions (≥ 1).
        generator: draws them (on its own device; the result is moved to x's); None: torch's default generator.
        shared: one direction per k for the whole batch instead of one per point and k.

    Returns:
        ``[K, B, *S]`` with ‖u_{k,b}‖ = 1 (``shared=False``: every point its own directions), or ``[K, *S]`` with
        ‖u_k‖ = 1 (``shared=True``: direction k is one vector for the whole batch;
        [`directional_derivs`][lamda_ext.derivs.directional_derivs] broadcasts it over the points).

    Raises:
        ValueError: ``k`` is not an int ≥ 1.

    Example:
        >>> import torch, lamda_ext
        >>> x = torch.randn(5, 1, 4, 4)
        >>> u = lamda_ext.random_directions(x, 3, torch.Generator().manual_seed(0))
        >>> tuple(u.shape), torch.allclose(u.flatten(2).norm(dim=2), torch.ones(3, 5))
        ((3, 5, 1, 4, 4), True)
        >>> tuple(lamda_ext.random_directions(x, 3, torch.Generator().manual_seed(0), shared=True).shape)
        (3, 1, 4, 4)
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (number of directions) must be an int >= 1, got {k!r}")
    lead = (k,) if shared else (k, x.shape[0])
    shape = lead + tuple(x.shape[1:])
    u = _randn(shape, generator, x.dtype, x.device)
    norm = u.reshape(lead + (-1,)).norm(dim=-1).reshape(lead + (1,) * (x.dim() - 1))
    return u / norm


def filter_normalize(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Scale every output filter (slice along w's dim 0) of ``d`` to the norm of the same filter of ``w``.

    d ``[*lead, *w.shape]`` (any leading batch dims), w with ``w.dim() ≥ 2`` → same shape as d.
    """
    lead = d.dim() - w.dim()
    dn = d.reshape(tuple(d.shape[:lead]) + (w.shape[0], -1)).norm(dim=-1)
    wn = w.detach().reshape(w.shape[0], -1).norm(dim=1)
    scale = wn / dn.clamp_min(torch.finfo(d.dtype).tiny)
    return d * scale.reshape(tuple(scale.shape) + (1,) * (w.dim() - 1))


def num_parameters(model: nn.Module) -> int:
    """P, the number of parameter entries (the length of a parameter direction, ``model.parameters()`` order)."""
    return sum(p.numel() for p in model.parameters())


def random_param_directions(model: nn.Module, k: int, generator: Optional[torch.Generator] = None,
                            normalization: str = "unit") -> torch.Tensor:
    """K Gaussian parameter-space directions ``[K, P]``.

    Args:
        model: the network; P counts all its parameters, flattened in ``model.parameters()`` order.
        k: K, the number of directions.
        generator: draws them (None: torch's default generator).
        normalization: ``"unit"`` (‖v_k‖ = 1) or ``"filter"`` (every output filter of a weight scaled to that
            filter's norm in the model; 1-D parameters such as biases and batch-norm affine parameters set to zero).

    Returns:
        ``[K, P]`` in the parameters' dtype and on their device.

    Raises:
        ValueError: a model without parameters or an unknown ``normalization``.
    """
    params = list(model.parameters())
    if not params:
        raise ValueError("the model has no parameters")
    p0 = params[0]
    v = _randn((k, num_parameters(model)), generator, p0.dtype, p0.device)
    if normalization == "unit":
        return v / v.norm(dim=1, keepdim=True)
    if normalization != "filter":
        raise ValueError(f"normalization must be 'unit' or 'filter', got {normalization!r}")
    out, offset = [], 0
    for p in params:
        n = p.numel()
        d = v[:, offset:offset + n].reshape((k,) + tuple(p.shape))
        offset += n
        d = torch.zeros_like(d) if p.dim() <= 1 else filter_normalize(d, p)
        out.append(d.reshape(k, n))
    return torch.cat(out, dim=1)
