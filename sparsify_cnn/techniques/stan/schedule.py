"""STAN's epoch schedule (seed 000, ALGORITHMS.md section 5).

Epochs before the pre-interval ``p_t`` are dense. From then on every (Z+1)-th epoch is dense and
*builds* the entry matrix, and the Z epochs between *skip* the covered entries. Epochs count
from 0 here; ``sparsify train`` prints them from 1.
"""

from __future__ import annotations

from collections import Counter

from ...errors import InputError

DENSE, BUILD, SKIP = "dense", "build", "skip"
KINDS = (DENSE, BUILD, SKIP)


def check_schedule(pre_epochs: int, period: int) -> None:
    if pre_epochs < 0:
        raise InputError(f"the STAN pre-interval p_t must be >= 0 epochs, got {pre_epochs}")
    if period < 1:
        raise InputError(f"the STAN period Z must be >= 1 (skipping epochs per entry-matrix epoch), got {period}")


def epoch_kind(epoch: int, pre_epochs: int, period: int) -> str:
    """What epoch ``epoch`` (from 0) does: ``dense``, ``build`` or ``skip``.

    ``[epoch_kind(e, 1, 2) for e in range(6)]`` is dense, build, skip, skip, build, skip.
    """
    check_schedule(pre_epochs, period)
    if epoch < pre_epochs:
        return DENSE
    return BUILD if (epoch - pre_epochs) % (period + 1) == 0 else SKIP


def schedule(epochs: int, pre_epochs: int, period: int) -> list[str]:
    """The kind of every epoch of a run of ``epochs`` epochs."""
    return [epoch_kind(e, pre_epochs, period) for e in range(epochs)]


def counts(epochs: int, pre_epochs: int, period: int) -> dict[str, int]:
    """How many epochs of each kind a run has."""
    found = Counter(schedule(epochs, pre_epochs, period))
    return {kind: found.get(kind, 0) for kind in KINDS}
