"""Learning-rate schedule of a federated run: linear warm-up then cosine, addressed by the global step.

A federated round starts in the middle of the schedule (at ``round_num * steps_per_round``), and
``transformers.get_cosine_schedule_with_warmup`` has no offset, so the factor is written out here and the loop
applies it with ``torch.optim.lr_scheduler.LambdaLR`` from the round's first global step. No state is carried
between rounds: a restarted client resumes at the right learning rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def cosine_factor(step: int, *, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier at optimizer ``step`` (0-based, global): linear warm-up, then cosine from 1 to
    ``min_ratio`` at ``total`` (clamped after it)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class CosineSchedule:
    """:func:`cosine_factor` over ``rounds * steps_per_round`` global steps; call it with a global step."""

    rounds: int
    steps_per_round: int
    warmup: int = 0
    min_ratio: float = 0.0

    def first_step(self, round_num: int) -> int:
        """Global index of round ``round_num``'s first optimizer step."""
        return round_num * self.steps_per_round

    def __call__(self, step: int) -> float:
        return cosine_factor(
            step, total=self.rounds * self.steps_per_round, warmup=self.warmup, min_ratio=self.min_ratio
        )
