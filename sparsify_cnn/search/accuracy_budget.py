"""The accuracy budget, one rule for every search and report: a result is within epsilon when
the accuracy it loses against the dense model, counted absolutely (0.01 = one point) or relative
to the dense accuracy, is at most epsilon::

    within(0.95, 0.942, 0.01)                  # True: 0.8 points lost
    accuracy_floor(0.95, 0.01, "relative")     # 0.9405: the lowest accuracy within budget
"""

from __future__ import annotations

from ..errors import InputError

EPSILON_KINDS = ("absolute", "relative")
TOLERANCE = 1e-9  # float noise in accuracy fractions: one image of a million is 1e-6


def check_epsilon(epsilon: float | None, kind: str) -> None:
    """Raise InputError unless ``epsilon`` is in [0, 1) (or None: no budget) and ``kind`` known."""
    if epsilon is not None and not 0 <= epsilon < 1:
        raise InputError(f"epsilon must be in [0, 1), got {epsilon}")
    if kind not in EPSILON_KINDS:
        raise InputError(f"epsilon kind must be one of {', '.join(EPSILON_KINDS)}, got '{kind}'")


def accuracy_loss(dense: float, accuracy: float, kind: str = "absolute") -> float:
    """The accuracy lost, in epsilon's units (relative: a fraction of a non-zero dense accuracy)."""
    loss = dense - accuracy
    return loss / dense if kind == "relative" and dense > 0 else loss


def within(dense: float, accuracy: float, epsilon: float, kind: str = "absolute") -> bool:
    return accuracy_loss(dense, accuracy, kind) <= epsilon + TOLERANCE


def accuracy_floor(dense: float, epsilon: float, kind: str = "absolute") -> float:
    """The lowest accuracy :func:`within` accepts."""
    scale = dense if kind == "relative" and dense > 0 else 1.0
    return dense - (epsilon + TOLERANCE) * scale
