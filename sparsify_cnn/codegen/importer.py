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
    with torch_treespec_warning_hidden():  # run_decompositions copies torch's own tree specs
        # What the frontend translates: core ATen, functional (a slice filled in place, as
        # Swin's attention mask is built, becomes a slice_scatter).
        program = program.run_decompositions()
    known = set(ExportedProgramImporter().create_convert_map()) | set(custom)
    unsupported: dict[str, list[str]] = {}  # op -> the nodes that call it
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target.__name__ not in known:
            unsupported.setdefault(node.target.__name__, []).append(node.name)
    if unsupported:
        raise UnsupportedOpsError(unsupported_message(unsupported))
    mod = from_exported_program(program, keep_params_as_input=True, custom_convert_map=custom or None,
                                run_ep_decomposition=False)  # fmt: skip
    mod, params = relax.frontend.detach_params(mod)
    return mod, [p.numpy() for p in params.get("main", [])]


def unsupported_message(unsupported: dict[str, list[str]], shown: int = 4) -> str:
    """One line: how many nodes call ops TVM cannot lower, by op (the first ``shown`` ops, one
    node named for each)."""
    nodes = sum(len(names) for names in unsupported.values())
    parts = [f"{len(names)}x {op} (e.g. node {names[0]})" for op, names in list(unsupported.items())[:shown]]
    more = f" and {len(unsupported) - shown} other op(s)" if len(unsupported) > shown else ""
    return f"TVM cannot lower {nodes} node(s) of the graph: {', '.join(parts)}{more}"
