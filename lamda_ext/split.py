"""One directional-derivative call as a grid of points × directions, run chunk by chunk.

A [`Job`][lamda_ext.split.Job] holds everything a backend needs (model, points, targets, directions, order, loss) and
makes sub-jobs of a range of points and a range of directions. [`run_chunks`][lamda_ext.split.run_chunks] runs a list of
chunks and assembles the result exactly as the unsplit call returns it:

- ``wrt="input"``: ``[B, K, N]`` — chunk ``(points, directions)`` fills its block;
- ``wrt="params"``: ``[K, N]`` of the batch-mean loss — a chunk of ``b`` points contributes ``b/B`` of its
  own batch mean.

Every chunk starts from the same random-number state, so dropout draws the masks of an unsplit call for
every chunk of directions. Chunks of points change what batch-coupled layers see (batch statistics, the
dropout masks of a smaller batch), so points are split only when no module of the model is in training mode
and the targets are one row per point ([`Job.points_splittable`][lamda_ext.split.Job.points_splittable]).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ._state import RngReplay
from .losses import LossSpec
from .taylor.series import attention_row_blocks

__all__ = ["Chunk", "Job", "run_chunks"]


@dataclass(frozen=True)
class Chunk:
    """Points ``[p0, p1)`` and directions ``[k0, k1)`` of a call, computed together."""
    points: tuple[int, int]
    directions: tuple[int, int]

    @property
    def n_points(self) -> int:
        """Points in the chunk."""
        return self.points[1] - self.points[0]

    @property
    def n_directions(self) -> int:
        """Directions in the chunk."""
        return self.directions[1] - self.directions[0]


@dataclass
class Job:
    """A directional-derivative call: ``fn(model, x, y, dirs, order, loss, label_smoothing)`` → ``(d, loss0)``.

    ``dirs``: ``[K, *S]`` (shared by every point), ``[K, B, *S]`` (one per point) for ``wrt="input"``;
    ``[K, P]`` for ``wrt="params"``. ``take_points``: makes the model and targets of a range of points where
    slicing ``x`` and ``y`` along dim 0 is not enough (a model that holds per-point tensors of its own);
    None: the model serves every range. ``attention_rows``: attention scores are taken this many query rows at a
    time (:func:`lamda_ext.taylor.series.attention_row_blocks`; None: all rows at once).
    """
    model: nn.Module
    x: torch.Tensor
    y: Any
    dirs: torch.Tensor
    order: int
    loss: LossSpec
    wrt: str
    label_smoothing: float
    fn: Callable
    take_points: Optional[Callable[[int, int], tuple[nn.Module, Any]]] = None
    attention_rows: Optional[int] = None

    @property
    def n_points(self) -> int:
        """B, the points of the call."""
        return self.x.shape[0]

    @property
    def n_directions(self) -> int:
        """K, the directions of the call."""
        return self.dirs.shape[0]

    @property
    def per_point_dirs(self) -> bool:
        """Whether every point has its own directions (``[K, B, *S]``)."""
        return self.wrt == "input" and self.dirs.dim() == self.x.dim() + 1

    @property
    def points_splittable(self) -> bool:
        """Whether chunks of points give the numbers of the whole batch.

        No module in training mode (batch statistics, dropout masks of the whole batch) and targets that are one row per
        point (or None).
        """
        if any(m.training for m in self.model.modules()):
            return False
        y = self.y
        return y is None or (isinstance(y, torch.Tensor) and y.dim() >= 1 and y.shape[0] == self.n_points)

    def sub(self, chunk: Chunk) -> "Job":
        """The job of one chunk."""
        (p0, p1), (k0, k1) = chunk.points, chunk.directions
        dirs = self.dirs[k0:k1]
        if (p0, p1) == (0, self.n_points):
            return replace(self, dirs=dirs, take_points=None)
        if self.per_point_dirs:
            dirs = dirs[:, p0:p1]
        model, y = (self.model, self.y[p0:p1] if isinstance(self.y, torch.Tensor) else self.y)
        if self.take_points is not None:
            model, y = self.take_points(p0, p1)
        return replace(self, model=model, x=self.x[p0:p1], y=y, dirs=dirs, take_points=None)

    def run(self):
        """The unsplit call: ``fn`` on all points and directions (attention by row blocks when set), ``(d, loss0)``."""
        with attention_row_blocks(self.attention_rows):
            return self.fn(self.model, self.x, self.y, self.dirs, self.order, self.loss, self.label_smoothing)


def _groups(chunks: Sequence[Chunk]) -> list[tuple[tuple[int, int], list[Chunk]]]:
    """Chunks grouped by their range of points, in order (each group's directions cover 0..K in order)."""
    groups: list = []
    for c in chunks:
        if groups and groups[-1][0] == c.points:
            groups[-1][1].append(c)
        else:
            groups.append((c.points, [c]))
    return groups


def run_chunks(job: Job, chunks: Sequence[Chunk], done: Optional[dict] = None,
               start: Optional[RngReplay] = None):
    """Run ``chunks`` of ``job`` and assemble ``(d, loss0)`` as the unsplit call returns them.

    ``done``: results already computed for some chunks, by chunk. Each chunk runs from the random-number state ``start``
    (default: the current one).
    """
    done = {} if done is None else done
    replay = RngReplay(job.x.device) if start is None else start
    B = job.n_points
    d_parts, loss_parts = [], []
    for points, group in _groups(chunks):
        per_dir, loss0 = [], None
        for c in group:
            res = done.get(c)
            if res is None:
                replay.reset()
                res = job.sub(c).run()
            per_dir.append(res[0])
            loss0 = res[1] if loss0 is None else loss0
        if job.wrt == "input":
            d_parts.append(per_dir[0] if len(per_dir) == 1 else torch.cat(per_dir, dim=1))
        else:
            d = per_dir[0] if len(per_dir) == 1 else torch.cat(per_dir, dim=0)
            d_parts.append(d if points[1] - points[0] == B else d * ((points[1] - points[0]) / B))
        loss_parts.append(loss0)
    if job.wrt == "input":
        d = d_parts[0] if len(d_parts) == 1 else torch.cat(d_parts, dim=0)
    else:
        d = d_parts[0] if len(d_parts) == 1 else torch.stack(d_parts).sum(dim=0)
    return d, loss_parts[0] if len(loss_parts) == 1 else torch.cat(loss_parts)
