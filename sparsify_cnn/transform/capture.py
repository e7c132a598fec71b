"""Capture a model as a ``torch.fx`` graph with shapes on every node.

``torch.fx.symbolic_trace`` first: it keeps layers as named modules, which passes rewrite most
simply. Models whose Python control flow depends on shapes break it; ``torch.export`` handles
those, so it is the fallback. When both fail, one error names the module and node where
tracing broke and what to do about it.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import CaptureError, first_line
from ..ops.base import CostedOp

METHODS = ("auto", "fx", "export")
DESCRIPTIONS = {
    "fx": "traced with torch.fx",
    "export": "captured with torch.export",
    "graph": "taken as given (already a graph)",
}


@dataclass
class Captured:
    """A captured model: its graph module, the input shape the shapes were propagated with, and
    how it was captured (``fx``, ``export``, or ``graph`` for a module that already was one)."""

    graph_module: fx.GraphModule
    input_shape: tuple[int, ...]
    method: str

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.method]

    def example_input(self, batch: int | None = None, seed: int = 0) -> torch.Tensor:
        """A seeded random input of the captured shape (with ``batch`` images if given)."""
        shape = (batch or self.input_shape[0], *self.input_shape[1:])
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def capture(
    model: nn.Module,
    input_shape: Sequence[int],
    leaf_modules: Iterable[str] = (),
    method: str = "auto",
) -> Captured:
    """Capture ``model`` for inputs of ``input_shape`` (N, C, H, W) and propagate shapes.

    ``leaf_modules`` names module classes (``Gate``) or module paths (``features.3``) that fx
    keeps whole instead of tracing through. Example::

        captured = capture(build("lenet"), (1, 1, 28, 28))
        captured.graph_module.graph.print_tabular()
    """
    if method not in METHODS:
        raise CaptureError(f"unknown capture method '{method}'; choose one of: {', '.join(METHODS)}")
    input_shape = tuple(int(s) for s in input_shape)
    set_eval(model)
    _check_one_input(model)
    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    if isinstance(model, fx.GraphModule):
        gm, used = model, "graph"
    elif method == "export":
        gm, used = _export(model, example), "export"
    else:
        tracer = _Tracer(set(leaf_modules))
        try:
            gm, used = _trace(model, tracer), "fx"
        except Exception as fx_error:  # noqa: BLE001 - any tracing failure means: try export
            if method == "fx":
                raise CaptureError(_fx_failure(model, tracer, fx_error) + _HINT) from fx_error
            try:
                gm, used = _export(model, example), "export"
            except CaptureError as export_error:
                raise CaptureError(
                    f"{_fx_failure(model, tracer, fx_error)}; and {export_error}" + _HINT
                ) from export_error
    _check_output(propagate_shapes(gm, example))
    return Captured(gm, input_shape, used)


def set_eval(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode; modules of torch.export programs fixed their mode when they
    were exported and refuse ``eval()``, which is fine."""
    try:
        model.eval()
    except NotImplementedError:
        pass
    return model


def propagate_shapes(gm: fx.GraphModule, example: torch.Tensor):
    """Record every node's output shape (``node.meta['tensor_meta']``) by running ``example``;
    return the model's output."""
    try:
        with torch.no_grad(), _quiet():  # ShapeProp prints a traceback before it raises
            return ShapeProp(gm).propagate(example)
    except Exception as error:  # noqa: BLE001 - the model rejects this input: say where
        cause = error.__cause__ or error
        node = re.search(r"ShapeProp error for: node=%(\w+)", str(error))
        at = f" (node '{node.group(1)}')" if node else ""
        raise CaptureError(
            f"the model does not run on inputs of shape {tuple(example.shape)}{at}: "
            f"{first_line(cause)}; give the right one with --input-shape N,C,H,W"
        ) from error


def _check_one_input(model: nn.Module) -> None:
    """Models take one batch of images; further inputs must have defaults."""
    if isinstance(model, fx.GraphModule):
        inputs = [n for n in model.graph.nodes if n.op == "placeholder"]
        names = [str(n.target) for n in inputs]
        required = [n for n in inputs[1:] if not n.args]  # fx keeps a default as the node's argument
    else:
        parameters = list(inspect.signature(model.forward).parameters.values())
        names = [p.name for p in parameters]
        required = [p for p in parameters[1:] if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if required:
        names = ", ".join(names)
        raise CaptureError(
            f"the model takes {1 + len(required)} inputs ({names}); sparsify rewrites and compiles models "
            "with one image input: wrap it in a module whose forward takes the images alone"
        )


def _check_output(output) -> None:
    """The model's output must be its scores: a tensor, or a tuple or list that starts with one."""
    first = output[0] if isinstance(output, (tuple, list)) and output else output
    if not isinstance(first, torch.Tensor):
        what = f"a dict (keys {', '.join(map(str, output))})" if isinstance(output, dict) else type(output).__name__
        raise CaptureError(
            f"the model returns {what}; sparsify needs a model that returns its scores as a tensor: "
            "wrap it in a module that returns that tensor"
        )


_HINT = "; mark the module as a leaf (--leaf NAME) or save the model with torch.export"


class _Tracer(fx.Tracer):
    """An fx tracer that keeps named leaves and remembers where tracing was when it failed."""

    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves
        self.last_node: fx.Node | None = None
        self.failed_in: tuple[str, str] | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (
            isinstance(m, CostedOp)  # inserted ops stay whole when a rewritten model is traced
            or qualname in self.leaves
            or type(m).__name__ in self.leaves
            or super().is_leaf_module(m, qualname)
        )

    def create_node(self, *args, **kwargs) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        self.last_node = node
        return node

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # innermost module first
                self.failed_in = (self.path_of_module(m), type(m).__name__)
            raise


def _trace(model: nn.Module, tracer: _Tracer) -> fx.GraphModule:
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _export(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    # A batch of 1 would specialise the batch dimension; 2 keeps it dynamic.
    batch2 = example.expand(2, *example.shape[1:]).contiguous()
    try:
        with _quiet():
            program = torch.export.export(
                model, (batch2,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), strict=False
            )
    except Exception as error:  # noqa: BLE001 - reported with the fx failure
        raise CaptureError(f"torch.export failed: {first_line(error)}") from error
    return program.module()


@contextlib.contextmanager
def _quiet():
    """torch.export prints graphs and warnings when it fails; the error says what matters."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _fx_failure(model: nn.Module, tracer: _Tracer, error: Exception) -> str:
    path, cls = tracer.failed_in or ("", type(model).__name__)
    where = f"module '{path}' ({cls})" if path else f"the top-level module ({cls})"
    after = f" after node '{tracer.last_node.name}'" if tracer.last_node is not None else ""
    return f"cannot capture the model: torch.fx failed in {where}{after}: {first_line(error)}"
