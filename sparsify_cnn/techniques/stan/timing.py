"""The seed's timing model (seed 000 section 1.2) and the per-layer times it is fed with.

Without STAN, N epochs cost ``N (t_f + t_b)``. With STAN, the ``p_t`` pre-interval epochs cost
the same, the ``(N - p_t) / (Z + 1)`` entry-matrix epochs add ``t_e`` each, and the
``(N - p_t) Z / (Z + 1)`` skipping epochs save ``t_i`` each, so::

    speedup = N (t_f + t_b) / (N (t_f + t_b) - (N - p_t) / (Z + 1) * (Z t_i - t_e))

Times are per epoch here (the seed's are per pass; the ratio is the same).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .schedule import counts


def predicted_speedup(epochs: int, pre_epochs: int, period: int, t_fb: float, t_i: float, t_e: float) -> float:
    """The seed's closed form. ``t_fb``: one dense epoch (t_f + t_b); ``t_i``: forward time a
    skipping epoch saves; ``t_e``: time an entry-matrix epoch spends building E.

    ``predicted_speedup(10, 0, 1, 1.0, 0.2, 0.05)`` is 10 / (10 - 5 * 0.15) = 1.081...
    """
    dense = epochs * t_fb
    saved = (epochs - pre_epochs) / (period + 1) * (period * t_i - t_e)
    return dense / (dense - saved)


def scheduled_speedup(epochs: int, pre_epochs: int, period: int, t_fb: float, t_i: float, t_e: float) -> float:
    """The same model with the schedule's whole epoch counts instead of (N - p_t) / (Z + 1)."""
    n = counts(epochs, pre_epochs, period)
    return epochs * t_fb / (epochs * t_fb + n["build"] * t_e - n["skip"] * t_i)


@dataclass(frozen=True)
class LayerTimes:
    """One covered layer's measured seconds per epoch (means over the epochs of each kind).

    t_f: dense forward; t_b: backward (dense in every epoch); t_e: building E in an entry-matrix
    epoch (comparison, threshold, store); t_skip: forward in a skipping epoch (reading E and the
    sparse-output conv); t_i = t_f - t_skip, what a skipping epoch saves (negative: it costs).
    """

    t_f: float
    t_b: float
    t_e: float
    t_skip: float

    @property
    def t_i(self) -> float:
        return self.t_f - self.t_skip

    def to_dict(self) -> dict:
        return {**asdict(self), "t_i": self.t_i}
