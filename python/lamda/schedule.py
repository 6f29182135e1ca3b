"""The λ measurement schedule: dense early in training, sparser later.

Default rule (epoch 0 = before the first update):
every epoch up to 10, every 2nd epoch up to 30, every 5th up to 50, every 10th after;
the last epoch of a run is always measured.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MeasurementSchedule"]


@dataclass(frozen=True)
class MeasurementSchedule:
    """``stages``: ``((until_epoch, every), ...)`` in increasing order; after the last stage ``every`` = ``tail``."""

    stages: tuple[tuple[int, int], ...] = ((10, 1), (30, 2), (50, 5))
    tail: int = 10
    include_last: bool = True

    def __post_init__(self):
        prev = -1
        for until, every in self.stages:
            if every < 1 or until <= prev:
                raise ValueError(f"stages must have increasing until-epochs and every >= 1, got {self.stages}")
            prev = until
        if self.tail < 1:
            raise ValueError(f"tail must be >= 1, got {self.tail}")

    def every(self, epoch: int) -> int:
        """The measurement interval (in epochs) at ``epoch``."""
        for until, every in self.stages:
            if epoch <= until:
                return every
        return self.tail

    def should_measure(self, epoch: int, total_epochs: int | None = None) -> bool:
        """True when ``epoch`` (0 = initialisation) is a measurement epoch of a run of ``total_epochs``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if self.include_last and total_epochs is not None and epoch == total_epochs:
            return True
        return epoch % self.every(epoch) == 0

    def epochs(self, total_epochs: int) -> list[int]:
        """All measurement epochs of a run of ``total_epochs`` epochs, in order."""
        if total_epochs < 0:
            raise ValueError(f"total_epochs must be >= 0, got {total_epochs}")
        return [e for e in range(total_epochs + 1) if self.should_measure(e, total_epochs)]
