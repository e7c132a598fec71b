"""Make a program exported with a static batch take any batch.

``torch.export.export(model, (one_image,))``, the ordinary way to export, specialises the batch
dimension: the program guards ``x.size(0) == 1`` and its reshapes carry the literal batch
(``view(x, [1, 512])``). Searches, accuracy checks and artifacts run many images at once, so
such a program is generalised when it is loaded:

- the input guards go (the ``_guards_fn`` node and the pre-forward shape check);
- every reshape of a value that carries the batch in dim 0 gets ``-1`` there, and the other
  sizes it had (a ``-1`` it already had is resolved from the recorded shape);
- an ``expand`` or a tensor factory whose first size is the batch takes the input's batch.

The result is checked, not trusted: a batch of several random images must give what the
original gives image by image (``GeneralizationError`` otherwise, e.g. for a model that mixes
images of a batch).
"""

from __future__ import annotations

import math

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils import _pytree as pytree

from ..errors import first_line

_aten = torch.ops.aten
_RESHAPES = {_aten.view.default, _aten.reshape.default, _aten._unsafe_view.default, _aten.view_copy.default}
_EXPANDS = {_aten.expand.default, _aten.expand_copy.default}
# Factories whose size list is their first argument (the ``new_*`` ones: their second).
_FACTORIES = {_aten.zeros.default: 0, _aten.ones.default: 0, _aten.empty.memory_format: 0, _aten.full.default: 0,
              _aten.rand.default: 0, _aten.randn.default: 0, _aten.new_zeros.default: 1, _aten.new_ones.default: 1,
              _aten.new_empty.default: 1, _aten.new_full.default: 1}  # fmt: skip
_GUARD_HOOKS = ("_check_input_constraints_pre_hook",)


class GeneralizationError(Exception):
    """The program's graph cannot be made to take other batch sizes."""


def static_batch(gm: fx.GraphModule) -> int | None:
    """The batch a torch.export module was specialised to, or None when its batch is dynamic
    (or the module is no torch.export module with one tensor input)."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    value = inputs[0].meta.get("val") if len(inputs) == 1 else None
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return None
    return value.shape[0] if isinstance(value.shape[0], int) else None


def generalize_batch(gm: fx.GraphModule, example: torch.Tensor, seed: int = 0) -> fx.GraphModule:
    """Rewrite ``gm`` (a torch.export module specialised to ``example``'s batch) in place so
    that it takes any batch, and check it. Example::

        program = torch.export.export(model, (torch.randn(1, 3, 64, 64),))
        gm = generalize_batch(program.module(), torch.randn(1, 3, 64, 64))
        gm(torch.randn(8, 3, 64, 64))
    """
    batch = example.shape[0]
    probe = torch.randn((2 * batch + (batch == 1), *example.shape[1:]), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = _image_by_image(gm, probe, batch)
    _drop_guards(gm)
    ShapeProp(gm).propagate(example)
    _free_batch(gm, batch)
    gm.graph.lint()
    gm.recompile()
    try:
        with torch.no_grad():
            got = gm(probe)
    except Exception as error:  # noqa: BLE001 - any failure means: not generalisable
        raise GeneralizationError(f"a batch of {len(probe)} fails: {first_line(error)}") from error
    _check_same(expected, got, len(probe))
    return gm


def _image_by_image(gm: fx.GraphModule, probe: torch.Tensor, batch: int):
    """The original's outputs for ``probe`` run ``batch`` images at a time, concatenated."""
    chunks = [pytree.tree_flatten(gm(chunk))[0] for chunk in probe.split(batch) if len(chunk) == batch]
    return [torch.cat(parts) if isinstance(parts[0], torch.Tensor) else parts[0] for parts in zip(*chunks)]


def _drop_guards(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
            delattr(gm, "_guards_fn")
    for key, hook in list(gm._forward_pre_hooks.items()):
        if getattr(hook, "__name__", "") in _GUARD_HOOKS:
            del gm._forward_pre_hooks[key]


def _free_batch(gm: fx.GraphModule, batch: int) -> None:
    """Replace the literal batch in the size arguments of the graph's nodes, following the
    dimension that carries the batch through transposes and reshapes (attention folds it into
    the heads: one image's [L, 1, E] becomes [L, 12, 64], a batch's [L, 12 * N, 64])."""
    graph = gm.graph
    source = next(n for n in graph.nodes if n.op == "placeholder")
    batch_dim: dict[fx.Node, int] = {source: 0}  # for each value that carries the batch: where
    batch_size: fx.Node | None = None

    def input_batch() -> fx.Node:
        nonlocal batch_size
        if batch_size is None:
            with graph.inserting_after(source):
                batch_size = graph.call_function(_aten.sym_size.int, (source, 0))
        return batch_size

    for node in list(graph.nodes):
        if node.op != "call_function" or node is batch_size:
            continue
        carried = [n for n in node.all_input_nodes if n in batch_dim]
        shape = _shape(node)
        if carried:
            dim = _follow_batch(node, carried[0], batch_dim[carried[0]], shape)
            if dim is not None:
                batch_dim[node] = dim
                if node.target in _RESHAPES or node.target in _EXPANDS:
                    node.args = (node.args[0], [-1 if i == dim else s for i, s in enumerate(shape)], *node.args[2:])
            continue
        if shape is None or not shape or shape[0] != batch:
            continue
        if node.target in _EXPANDS and node.args[1][0] == batch:  # a weight broadcast to the batch
            node.args = (node.args[0], [input_batch(), *node.args[1][1:]], *node.args[2:])
        elif node.target in _FACTORIES:
            position = _FACTORIES[node.target]
            sizes = list(node.args[position])
            if sizes and sizes[0] == batch:
                args = list(node.args)
                args[position] = [input_batch(), *sizes[1:]]
                node.args = tuple(args)


def _follow_batch(node: fx.Node, source: fx.Node, dim: int, shape: tuple[int, ...] | None) -> int | None:
    """The dimension of ``node``'s value that carries the batch, given that ``source`` (one of
    its inputs) carries it in ``dim``; None when it cannot be told (the check then decides)."""
    target, args = node.target, node.args
    rank, source_shape = (len(shape) if shape is not None else None), _shape(source)
    if shape is None or source_shape is None:  # tuples (chunks, pools with indices) and their items
        return dim
    if target in _RESHAPES:
        # Row-major: the batch lands in the first dimension after as many elements as came
        # before it, as that dimension's outermost factor.
        before = math.prod(source_shape[:dim]) if source_shape is not None else None
        return next((j for j in range(rank) if math.prod(shape[:j]) == before), None)
    if target in _EXPANDS:
        return dim + rank - len(source_shape) if source_shape is not None else None
    if target is _aten.permute.default:
        return [d % rank for d in args[1]].index(dim)
    if target is _aten.transpose.int:
        a, b = (d % rank for d in args[1:3])
        return b if dim == a else a if dim == b else dim
    if target is _aten.t.default:
        return 1 - dim if rank == 2 else dim
    if target is _aten.flatten.using_ints and source_shape is not None:
        start, end = ((args[i] if len(args) > i else default) % len(source_shape) for i, default in ((1, 0), (2, -1)))
        if dim == start or dim < start:
            return dim
        return dim - (end - start) if dim > end else None  # inside the range, but not outermost
    if target is _aten.unflatten.int and source_shape is not None:
        split = args[1] % len(source_shape)
        return dim if dim < split else dim + len(args[2]) - 1 if dim > split else None
    if target in (_aten.unsqueeze.default, _aten.stack.default):
        inserted = (args[1] if target is _aten.unsqueeze.default else (args[1] if len(args) > 1 else 0)) % rank
        return dim + (inserted <= dim)
    if source_shape is not None and len(source_shape) == rank:
        return dim  # elementwise, convs, pools, matmuls, cat, slices: the batch stays put
    dims = args[1] if len(args) > 1 and target is not _aten.flatten.using_ints else None
    if source_shape is not None and rank < len(source_shape) and isinstance(dims, (int, list, tuple)):
        # select, squeeze, and reductions without keepdim (mean, sum, amax): dimensions go
        removed = {d % len(source_shape) for d in ([dims] if isinstance(dims, int) else dims)}
        return None if dim in removed else dim - sum(r < dim for r in removed)
    return None


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _check_same(expected: list, got, images: int) -> None:
    got = pytree.tree_flatten(got)[0]
    if len(got) != len(expected):
        raise GeneralizationError(f"a batch of {images} gives {len(got)} outputs instead of {len(expected)}")
    for i, (want, have) in enumerate(zip(expected, got)):
        if not isinstance(want, torch.Tensor):
            continue
        if not isinstance(have, torch.Tensor) or have.shape != want.shape:
            shape = tuple(have.shape) if isinstance(have, torch.Tensor) else type(have).__name__
            raise GeneralizationError(f"a batch of {images} gives output {i} of shape {shape}, not {tuple(want.shape)}")
        scale = 1.0 + float(want.abs().max()) if want.numel() else 1.0
        if not torch.allclose(have, want, rtol=1e-4, atol=1e-5 * scale, equal_nan=True):
            raise GeneralizationError(
                f"a batch of {images} gives other values than the images one at a time (output {i}): "
                "the model mixes the images of a batch"
            )
