"""torch.export program -> Relax module, through TVM's torch frontend.

Inserted ops reach the importer through ``registry.custom_convert_map``; ops the frontend does
not know are all reported in one error, each with its node name.
"""

from __future__ import annotations

import torch

from ..errors import SparsifyError
from ..quiet import torch_treespec_warning_hidden


class UnsupportedOpsError(SparsifyError):
    """The graph has ops that neither TVM's frontend nor sparsify's registry can lower."""

    exit_code = 2


def import_program(program: torch.export.ExportedProgram, custom: dict | None = None):
    """Relax module and its parameters (list of numpy arrays, in argument order)."""
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    custom = custom or {}
    known = set(ExportedProgramImporter().create_convert_map()) | set(custom)
    unsupported = [
        f"{node.name} ({node.target.__name__})"
        for node in program.graph.nodes
        if node.op == "call_function" and node.target.__name__ not in known
    ]
    if unsupported:
        raise UnsupportedOpsError(f"TVM cannot lower {len(unsupported)} op(s): {', '.join(unsupported)}")
    with torch_treespec_warning_hidden():  # run_decompositions copies torch's own tree specs
        mod = from_exported_program(program, keep_params_as_input=True, custom_convert_map=custom or None)
    mod, params = relax.frontend.detach_params(mod)
    return mod, [p.numpy() for p in params.get("main", [])]
