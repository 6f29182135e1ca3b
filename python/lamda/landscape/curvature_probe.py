"""A finite-difference curvature probe and an optimizer wrapper that adapts the learning rate to it.

For unit directions u_1..u_N over the trainable parameters (Gaussian, normalised, from a
``torch.Generator``) and a step ε, the probe computes the gradient change
``Δg_i = g(θ + ε u_i) − g(θ)`` on a batch and reports

    curvature   = mean_i ‖Δg_i‖ / ε    (≈ mean ‖H u_i‖, ≥ 0: drives the learning rate)
    directional = mean_i u_iᵀ Δg_i / ε (≈ mean u_iᵀ H u_i, a Hutchinson-like curvature estimate)

Both gradients of a pair see the same dropout masks (the RNG is forked and re-seeded), and
nothing is mutated (batch norms in train mode use batch statistics without updating buffers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lamda_ext.hvp_reference import grad_params
from lamda_ext.params import trainable_parameters
from lamda_ext.losses import LossSpec, resolve_loss

__all__ = ["CurvatureEstimate", "CurvatureProbe", "CurvatureAdaptiveLR"]


@dataclass
class CurvatureEstimate:
    """One probe's result.

    Attributes:
        curvature: mean ``‖Δg_i‖ / ε`` over the directions (≈ mean ``‖H u_i‖``).
        directional: mean ``u_iᵀ Δg_i / ε`` (≈ mean ``u_iᵀ H u_i``).
        per_direction: ``‖Δg_i‖ / ε`` of every direction.
    """
    curvature: float               # mean ‖Δg‖ / ε
    directional: float             # mean uᵀΔg / ε
    per_direction: list = field(default_factory=list)  # ‖Δg_i‖ / ε


class CurvatureProbe:
    """Finite-difference curvature of ``loss`` for ``model`` along ``n_directions`` random unit directions.

    Args:
        model: the model (its current mode is used).
        loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(output, y) -> [B]``.
        n_directions: N ≥ 1.
        eps: finite-difference step (> 0, in parameter units).
        generator: draws the directions and the dropout seed of each probe.
        label_smoothing: for cross-entropy.
    """

    def __init__(self, model: nn.Module, loss: LossSpec = "cross_entropy", n_directions: int = 4, eps: float = 1e-3,
                 generator: torch.Generator | None = None, label_smoothing: float = 0.0):
        if int(n_directions) < 1:
            raise ValueError(f"n_directions must be ≥ 1, got {n_directions}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.model = model
        self.loss_fn = resolve_loss(loss, label_smoothing)
        self.n_directions = int(n_directions)
        self.eps = float(eps)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __call__(self, x: torch.Tensor, y) -> CurvatureEstimate:
        """Probe the curvature at the model's current parameters on the batch ``x`` ``[B, ...]``, ``y`` (targets)."""
        params = trainable_parameters(self.model)
        if not params:
            raise ValueError("the model has no parameters with requires_grad=True")
        ref = next(iter(params.values()))
        x = x.to(ref.device)
        y = y.to(ref.device) if isinstance(y, torch.Tensor) else y
        P = sum(p.numel() for p in params.values())
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=self.generator))
        devices = [ref.device.index or 0] if ref.device.type == "cuda" else []

        def grad_at(shift):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                g, _ = grad_params(self.model, x, y, self.loss_fn, params, shift=shift)
            return g

        g0 = grad_at(None)
        norms, dirs = [], []
        for _ in range(self.n_directions):
            u = torch.randn(P, generator=self.generator, dtype=torch.float64).to(ref.dtype).to(ref.device)
            u = u / u.norm()
            dg = grad_at(self.eps * u) - g0
            norms.append(float(dg.norm()) / self.eps)
            dirs.append(float(torch.dot(u, dg)) / self.eps)
        return CurvatureEstimate(sum(norms) / len(norms), sum(dirs) / len(dirs), norms)


class CurvatureAdaptiveLR:
    """Wraps any torch optimizer; every ``every`` steps probes the curvature and rescales the learning rate.

    ``scale = clip((c_ref / c) ** power, min_scale, max_scale)`` with ``c`` the (optionally EMA-smoothed)
    probe curvature and ``c_ref`` the reference curvature. Every param group's lr becomes
    ``base_lr · scale``: lower where the landscape is sharper than the reference, higher (up to
    ``max_scale · base_lr``) where it is flatter. ``base_lr`` follows outside changes of the lr (e.g. an
    LR scheduler stepping the wrapped optimizer).

    The reference: ``reference`` (default: the first probe's ``c``), fixed when ``reference_decay`` is
    None. With ``reference_decay = β`` in (0, 1) it is a running reference, the exponential moving average
    of log c (a geometric mean: c spans orders of magnitude, and an arithmetic mean stays high for long
    after the early fall from initialisation): after each probe ``c_ref ← c_ref^β · c^(1 − β)`` (the scale
    of that probe uses ``c_ref`` from before the update). The scale then compares the curvature with its
    recent level and moves both ways — a fixed reference taken at initialisation, where the curvature is
    largest, leaves the scale stuck at ``max_scale``.

    ``step(closure=None, *, batch=(x, y))``: the probe uses ``batch`` (required on probe steps; one can
    also give a fixed ``probe_batch`` at construction). ``history`` holds one dict per step:
    ``step, probed, curvature, directional, reference, scale, lr`` (curvature = the latest probe;
    reference = the one the current scale was computed against).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, probe: CurvatureProbe, every: int = 10, *,
                 reference: float | None = None, power: float = 0.5, min_scale: float = 0.1, max_scale: float = 1.0,
                 smoothing: float = 0.0, probe_batch=None, reference_decay: float | None = None):
        if int(every) < 1:
            raise ValueError(f"every must be ≥ 1, got {every}")
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale ≤ max_scale, got {min_scale}, {max_scale}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if reference is not None and not (math.isfinite(reference) and reference > 0):
            raise ValueError(f"reference curvature must be finite and > 0, got {reference}")
        if reference_decay is not None and not 0.0 < reference_decay < 1.0:
            raise ValueError(f"reference_decay must be in (0, 1) (or None for a fixed reference), got {reference_decay}")
        self.reference_decay = None if reference_decay is None else float(reference_decay)
        self.scale_reference: float | None = None
        self.optimizer = optimizer
        self.probe = probe
        self.every = int(every)
        self.reference = reference
        self.power = float(power)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.smoothing = float(smoothing)
        self.probe_batch = probe_batch
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self._set_lrs = list(self.base_lrs)
        self.scale = 1.0
        self.curvature: float | None = None
        self.directional: float | None = None
        self.steps = 0
        self.history: list[dict] = []

    @property
    def param_groups(self):
        """The wrapped optimizer's parameter groups."""
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the wrapped optimizer's gradients."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _probe(self, batch) -> None:
        batch = batch if batch is not None else self.probe_batch
        if batch is None:
            raise ValueError(f"step {self.steps} probes the curvature: pass batch=(x, y) to step() "
                             "or probe_batch=(x, y) to CurvatureAdaptiveLR")
        est = self.probe(batch[0], batch[1])
        c = est.curvature
        if self.curvature is not None and self.smoothing > 0:
            c = self.smoothing * self.curvature + (1 - self.smoothing) * c
        self.curvature, self.directional = c, est.directional
        if not math.isfinite(c):
            raise FloatingPointError(f"step {self.steps}: the probed curvature is {c}; the model has diverged")
        if self.reference is None:
            self.reference = c if c > 0 else None
        self.scale_reference = self.reference
        if self.reference is not None and c > 0:
            self.scale = min(self.max_scale, max(self.min_scale, (self.reference / c) ** self.power))
            if self.reference_decay is not None:
                b = self.reference_decay
                self.reference = math.exp(b * math.log(self.reference) + (1 - b) * math.log(c))

    def step(self, closure=None, *, batch=None):
        """Probe (on every ``every``-th step, starting with the first), set the lrs, step the optimizer."""
        probed = self.steps % self.every == 0
        if probed:
            self._probe(batch)
        for i, g in enumerate(self.optimizer.param_groups):
            if g["lr"] != self._set_lrs[i]:   # changed from outside (scheduler, user): new base
                self.base_lrs[i] = g["lr"]
            g["lr"] = self.base_lrs[i] * self.scale
            self._set_lrs[i] = g["lr"]
        out = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        self.history.append({"step": self.steps, "probed": probed, "curvature": self.curvature,
                             "directional": self.directional, "reference": self.scale_reference,
                             "scale": self.scale,
                             "lr": self.optimizer.param_groups[0]["lr"]})
        self.steps += 1
        return out

    def state_dict(self) -> dict:
        """Everything needed to resume: the optimizer's state, the scale, the reference, the history, the generator."""
        return {"optimizer": self.optimizer.state_dict(), "base_lrs": self.base_lrs, "set_lrs": self._set_lrs,
                "scale": self.scale, "curvature": self.curvature, "directional": self.directional,
                "reference": self.reference, "scale_reference": self.scale_reference,
                "reference_decay": self.reference_decay, "steps": self.steps, "history": self.history,
                "probe_generator": self.probe.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a [`state_dict`][lamda.landscape.curvature_probe.CurvatureAdaptiveLR.state_dict]."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.base_lrs, self._set_lrs = list(state["base_lrs"]), list(state["set_lrs"])
        self.scale, self.curvature, self.directional = state["scale"], state["curvature"], state["directional"]
        self.reference, self.steps, self.history = state["reference"], state["steps"], list(state["history"])
        self.scale_reference = state.get("scale_reference", self.reference)
        if state.get("reference_decay", self.reference_decay) != self.reference_decay:
            raise ValueError(f"state was saved with reference_decay={state.get('reference_decay')}, "
                             f"this wrapper has {self.reference_decay}")
        self.probe.generator.set_state(state["probe_generator"])
