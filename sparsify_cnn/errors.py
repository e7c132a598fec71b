"""Errors a user can cause. Each carries a one-line message that names what was wrong and where.

The CLI prints the message alone (no traceback) and exits with ``exit_code``.
"""


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


def first_line(error: BaseException) -> str:
    """``TypeName: first line of the message``: how a library's error is quoted in ours."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
