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


def random_directions(x: torch.Tensor, k: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """K unit Gaussian directions per point: x ``[B, *S]`` → ``[K, B, *S]`` with ‖u_{k,b}‖ = 1."""
    u = _randn((k,) + tuple(x.shape), generator, x.dtype, x.device)
    norm = u.reshape(k, x.shape[0], -1).norm(dim=2).reshape((k, x.shape[0]) + (1,) * (x.dim() - 1))
    return u / norm


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_param_directions(model: nn.Module, k: int, generator: Optional[torch.Generator] = None,
                            normalization: str = "unit") -> torch.Tensor:
    """K Gaussian parameter-space directions ``[K, P]`` (P = all parameters, ``parameters()`` order).

    normalization: ``"unit"`` (‖v_k‖ = 1) or ``"filter"`` (filter-wise scaled to the weights).
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
        if p.dim() <= 1:
            d = torch.zeros_like(d)
        else:
            dn = d.reshape(k, p.shape[0], -1).norm(dim=2)
            wn = p.detach().reshape(p.shape[0], -1).norm(dim=1)
            d = d * (wn / dn.clamp_min(torch.finfo(d.dtype).tiny)).reshape((k, p.shape[0]) + (1,) * (p.dim() - 1))
        out.append(d.reshape(k, n))
    return torch.cat(out, dim=1)
