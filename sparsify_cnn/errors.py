"""Errors a user can cause. Each carries a one-line message that names what was wrong and where.
``check_finite`` turns NaN or infinite values (outputs, weights, images) into such an error.

The CLI prints the message alone (no traceback) and exits with ``exit_code``.
"""

from __future__ import annotations


class SparsifyError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 1


class InputError(SparsifyError):
    """Bad input: a model file, data set, option or shape that cannot be used."""

    exit_code = 2


class ModelLoadError(InputError):
    """A model file or name that cannot be loaded (missing, corrupt, unsafe, wrong kind)."""


class DataError(InputError):
    """A data set that cannot be used (empty, wrong shape, labels out of range, unreadable)."""


class CaptureError(InputError):
    """A model that neither torch.fx nor torch.export can capture as a graph."""


class OutputError(InputError):
    """An output that cannot be written (folder missing or read-only, disk full, locked by another run)."""


class MissingExtraError(SparsifyError):
    """A feature whose optional packages are not installed; the message names the pip extra."""


class NonFiniteError(InputError):
    """Values that must be numbers (a model's outputs, weights, images) are NaN or infinite."""


class TrainingDiverged(InputError):
    """Training met a non-finite loss, weights or outputs and stopped. The model holds the
    weights of the end of epoch ``kept_epoch`` (0: the weights it started from), and
    ``result`` what the trainer had recorded up to then."""

    def __init__(self, epoch: int, step: int, lr: float, why: str, kept_epoch: int, result=None,
                 subject: str = "training", hint: str = "a smaller learning rate"):  # fmt: skip
        self.epoch, self.step, self.lr, self.why, self.kept_epoch = epoch, step, lr, why, kept_epoch
        self.result, self.subject, self.hint = result, subject, hint
        kept = f"the weights of epoch {kept_epoch}" if kept_epoch else "the weights it started from"
        super().__init__(f"{subject} diverged at epoch {epoch} step {step} with lr {lr:g}: {why}; "
                         f"stopped and kept {kept}, the last finite ones; try {hint}")  # fmt: skip

    def reworded(self, subject: str, hint: str) -> TrainingDiverged:
        """The same divergence in a caller's words (``fine-tuning``, ``a smaller --finetune-lr``)."""
        return TrainingDiverged(self.epoch, self.step, self.lr, self.why, self.kept_epoch, self.result, subject, hint)


def check_finite(values, what: str, error: type[SparsifyError] = NonFiniteError, hint: str = "") -> None:
    """Raise ``error`` naming ``what`` and the count when ``values`` (a torch tensor or numpy
    array) hold NaN or infinity: such values compare false with everything, so a later max,
    argmax or difference would pass them off as numbers::

        check_finite(model(x), "the dense model's outputs on the calibration split")
    """
    bad, total = count_nonfinite(values)
    if bad:
        raise error(f"{what}: {bad:,} of {total:,} values are NaN or infinite{hint}")


def count_nonfinite(values) -> tuple[int, int]:
    """(NaN or infinite values, all values) of a torch tensor or numpy array."""
    if hasattr(values, "detach"):  # torch, imported only by callers that have it
        finite = values.detach().isfinite()
        return int(finite.numel() - finite.sum()), int(finite.numel())
    import numpy as np

    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.inexact):
        return 0, int(array.size)
    return int(array.size - np.isfinite(array).sum()), int(array.size)


def first_line(error: BaseException) -> str:
    """``TypeName: first line of the message``: how a library's error is quoted in ours."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
