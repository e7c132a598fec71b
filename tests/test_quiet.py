import os
import warnings

import pytest

from sparsify_cnn.quiet import TVM_SCOPE_LINE, native_stderr_filtered, torch_treespec_warning_hidden

TREESPEC = (
    "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()` "
    "instead."
)  # torch 2.13's exact text


def test_only_tvms_scope_lines_are_taken_off_native_stderr(capfd):
    with native_stderr_filtered(TVM_SCOPE_LINE):
        os.write(2, b"[04:42:57] /project/src/runtime/vm/executable.cc:276: Warning: Scope Saving:global\n")
        os.write(2, b"[04:42:58] /project/src/target/llvm/llvm_instance.cc:218: Error: a real problem\n")
        os.write(2, b"[04:46:11] /project/src/runtime/vm/executable.cc:340: Warning: Scope Loaded:\n")
        os.write(2, b"last line without a newline")
    assert capfd.readouterr().err == (
        "[04:42:58] /project/src/target/llvm/llvm_instance.cc:218: Error: a real problem\nlast line without a newline"
    )


def test_stderr_is_restored_and_passed_on_when_the_body_raises(capfd):
    with pytest.raises(RuntimeError), native_stderr_filtered(TVM_SCOPE_LINE):
        os.write(2, b"kept\n")
        raise RuntimeError
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "kept\nafter\n"


def test_torchs_treespec_warning_alone_is_hidden():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with torch_treespec_warning_hidden():
            warnings.warn(TREESPEC, FutureWarning)
            warnings.warn("some other deprecation", FutureWarning)
            warnings.warn(TREESPEC, UserWarning)  # same text, another category: not ours to hide
    assert [(type(w.message), str(w.message)) for w in seen] == [
        (FutureWarning, "some other deprecation"),
        (UserWarning, TREESPEC),
    ]
