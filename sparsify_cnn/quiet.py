"""Known noise that torch and TVM print about their own internals, hidden where it is made.
Each filter matches one message exactly, so every other warning or log line stays visible.

- torch (2.10+) deprecates ``LeafSpec`` and its exporter warns (FutureWarning) each time it
  copies its own tree specs, e.g. in ``ExportedProgram.run_decompositions``.
- TVM 0.27's VM logs ``Warning: Scope Saving:`` / ``Scope Loaded:`` for every memory scope each
  time an executable is saved or loaded (debug output left in ``src/runtime/vm/executable.cc``).
  Its C++ ``LOG(WARNING)`` writes to ``std::cerr`` with no level or variable to turn it off
  (``TVM_LOG_DEBUG`` governs only ``DLOG``/``VLOG``), so those lines are filtered off fd 2.

    with torch_treespec_warning_hidden():
        mod = from_exported_program(program)
    with tvm_scope_lines_hidden():
        executable.export_library("model.so")
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings

TREESPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
TVM_SCOPE_LINE = re.compile(rb"executable\.cc:\d+: Warning: Scope (Saving|Loaded):")


@contextlib.contextmanager
def torch_treespec_warning_hidden():
    """Hide torch's FutureWarning about ``LeafSpec`` alone."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TREESPEC_WARNING, category=FutureWarning)
        yield


@contextlib.contextmanager
def tvm_scope_lines_hidden():
    """Hide TVM's ``Scope Saving`` / ``Scope Loaded`` log lines; pass on all else on stderr."""
    with native_stderr_filtered(TVM_SCOPE_LINE):
        yield


@contextlib.contextmanager
def native_stderr_filtered(pattern: re.Pattern):
    """Collect what is written to file descriptor 2 (by C++ as well as Python) while the body
    runs, then write it back there less the lines that ``pattern`` matches (bytes)."""
    _flush_python_stderr()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            _flush_python_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = b"".join(line for line in captured.read().splitlines(keepends=True) if not pattern.search(line))
            while kept:
                kept = kept[os.write(2, kept) :]


def _flush_python_stderr() -> None:
    # Python buffers its own writes: flush them to fd 2 on the right side of the redirection.
    if sys.stderr is not None:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
    if sys.__stderr__ is not None and sys.__stderr__ is not sys.stderr:
        with contextlib.suppress(Exception):
            sys.__stderr__.flush()
