"""Is a difference between two TruthfulQA scores real? A paired bootstrap over questions.

Two models scored on the same questions give two per-question score vectors (MC1 is 0/1 per
question, MC2 a probability mass). Their difference of means is the Δ a report shows; with 817
questions a Δ of one or two points can be noise. Resampling *questions* (the same resampled
questions for both models, hence "paired") keeps each question's difficulty shared by both
scores, so the interval measures how much the Δ depends on which questions happened to be
asked, not how hard they are. The percentile interval of the resampled Δs is reported.

Deterministic: the resampling is seeded, so a report rebuilt from the same scores shows the
same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 4_000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class DeltaInterval:
    """Δ = mean(after) − mean(before) over the paired questions, with its bootstrap interval."""

    delta: float
    low: float
    high: float
    level: float
    resamples: int
    questions: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


def paired_bootstrap(
    before: Sequence[float],
    after: Sequence[float],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> DeltaInterval:
    """The percentile bootstrap interval of mean(after − before), resampling question indices.

    `before[i]` and `after[i]` must score the same question i.
    """
    before_scores = np.asarray(before, dtype=np.float64)
    after_scores = np.asarray(after, dtype=np.float64)
    if before_scores.shape != after_scores.shape or before_scores.ndim != 1:
        shapes = f"{before_scores.shape} and {after_scores.shape}"
        raise ValueError(f"paired scores need two equal-length vectors, got {shapes}")
    if before_scores.size == 0:
        raise ValueError("paired bootstrap: no questions")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"resamples must be >= 1 and 0 < level < 1, got {resamples} and {level}")
    differences = after_scores - before_scores
    n = differences.size
    rng = np.random.default_rng(seed)
    # One (resamples × n) draw of indices: each row is one resampled question set.
    means = differences[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return DeltaInterval(
        delta=float(differences.mean()),
        low=float(low),
        high=float(high),
        level=level,
        resamples=resamples,
        questions=n,
    )
