"""A captured graph module as a static-shape torch.export program, ready for TVM's importer."""

from __future__ import annotations

import warnings

import torch
from torch import fx

from ..errors import CaptureError, first_line
from ..ops.registry import lowering
from ..transform.capture import set_eval


def export_static(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    """Export ``gm`` for inputs of exactly ``input_shape`` (compiled kernels are shape-specific);
    inserted ops stay single custom ops, which the registry's lowerings turn into kernels."""
    set_eval(gm)
    example = torch.zeros(input_shape)
    try:
        with warnings.catch_warnings(), lowering():  # torch's exporter warns about its own internals
            warnings.simplefilter("ignore", FutureWarning)
            return torch.export.export(gm, (example,), strict=False)
    except Exception as error:  # noqa: BLE001 - reported as one line
        raise CaptureError(f"cannot export the graph for compilation: {first_line(error)}") from error
