"""Differentiable directional derivatives whose autograd graph does not fit the memory budget.

[`derivs_with_recompute`][lamda_ext.recompute.derivs_with_recompute] returns ``(d, loss0)`` computed chunk by chunk
without a graph (as a measurement is), attached to the differentiated tensors by one autograd node. Its backward pass
runs the chunks of ``plan.recompute_chunks`` again with a graph — one chunk at a time, each within the budget — and
back-propagates each chunk's share of the incoming gradient. Every chunk starts from the random-number state
of the call (dropout draws the masks of the forward pass), batch-norm running statistics stay untouched, and
the random-number state after the backward pass is the one before it.

Gradients reach the model's parameters that require grad and ``x``, the directions and floating-point
targets where they require grad. The backward pass is not itself differentiable (no double backward). Where not even one chunk's graph fits the budget
(``plan.backward_refusal``), the values are still computed and a backward pass raises ``ValueError`` naming the
smallest budget that works.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ._state import RngReplay, frozen_batchnorm_stats
from .memory import heap_reuse
from .split import Job, run_chunks

__all__ = ["differentiable_inputs", "derivs_with_recompute"]


def differentiable_inputs(job: Job) -> list:
    """The tensors a gradient of the call's result can reach.

    The parameters requiring grad, then x, the directions and floating-point targets where they require grad.
    """
    own = [t for t in (job.x, job.dirs, job.y) if isinstance(t, torch.Tensor) and t.requires_grad]
    seen, params = set(), []
    for p in job.model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return own + params


class _Runner:
    def __init__(self, job: Job, plan, done: dict, inputs: list, start: RngReplay):
        self.job, self.plan, self.done, self.inputs, self.start = job, plan, done, inputs, start

    def values(self):
        return run_chunks(self.job, self.plan.chunks, self.done, self.start)

    def backward(self, gd: torch.Tensor, gl: torch.Tensor) -> list:
        if self.plan.backward_refusal:
            raise ValueError(self.plan.backward_refusal)
        job = self.job
        grads = [None] * len(self.inputs)
        after = RngReplay(job.x.device)
        try:
            with heap_reuse(job.x.device):
                return self._chunks(gd, gl, grads)
        finally:
            after.reset()

    def _chunks(self, gd: torch.Tensor, gl: torch.Tensor, grads: list) -> list:
        job, B = self.job, self.job.n_points
        for c in self.plan.recompute_chunks:
            (p0, p1), (k0, k1) = c.points, c.directions
            self.start.reset()
            with torch.enable_grad(), frozen_batchnorm_stats(job.model):
                d, loss0 = job.sub(c).run()
            outs, gouts = [d], [gd[p0:p1, k0:k1] if job.wrt == "input" else gd[k0:k1] * ((p1 - p0) / B)]
            if k0 == 0 and gl is not None:
                outs.append(loss0)
                gouts.append(gl[p0:p1])
            got = torch.autograd.grad(outs, self.inputs, gouts, allow_unused=True)
            grads = [g if a is None else (a if g is None else a + g) for a, g in zip(grads, got)]
        return grads


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, runner: _Runner, *inputs):
        ctx.runner = runner
        d, loss0 = runner.values()
        return d, loss0

    @staticmethod
    @once_differentiable
    def backward(ctx, gd, gl):
        return (None,) + tuple(ctx.runner.backward(gd, gl))


def derivs_with_recompute(job: Job, plan, done: dict, start: RngReplay):
    """``(d, loss0)`` of ``job`` by ``plan.chunks``, recomputing chunks in the backward pass.

    ``done``: results of chunks already computed. Every chunk runs from the random-number state ``start``; the backward
    pass recomputes ``plan.recompute_chunks`` one at a time from the same state.
    """
    inputs = differentiable_inputs(job)
    return _Recompute.apply(_Runner(job, plan, done, inputs, start), *inputs)
