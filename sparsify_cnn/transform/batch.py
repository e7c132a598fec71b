"""Make a program exported with a static batch take any batch.

``torch.export.export(model, (one_image,))``, the ordinary way to export, specialises the batch
dimension: the program guards ``x.size(0) == 1`` and its reshapes carry the literal batch
(``view(x, [1, 512])``). Searches, accuracy checks and artifacts run many images at once, so
such a program is generalised when it is loaded:

- the input guards go (the ``_guards_fn`` node and the pre-forward shape check);
- every reshape of a value that carries the batch gets ``-1`` in the dimension the batch goes
  to, and the other sizes it had (a ``-1`` it already had is resolved from the recorded shape);
  where one image's shapes allow several such dimensions (attention's heads and tokens), the
  one under which the rest of the graph runs is kept;
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
    with torch.no_grad():
        _free_batch(gm, batch, probe)
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


Place = tuple[int, int]  # where a value carries the batch: its dimension, and the factor of that dimension outside it


def _free_batch(gm: fx.GraphModule, batch: int, probe: torch.Tensor) -> None:
    """Replace the literal batch in the size arguments of the graph's nodes, following where
    the batch goes through transposes and reshapes (attention folds it into the heads: one
    image's [L, 1, E] becomes [L, 12, 64], a batch's [L, 12 * N, 64]).

    One image's shapes cannot always tell where a reshape puts the batch: [L, 1, 12, 64] to
    [L, 768] reads as [L * N, 768] or [L, N * 768]. The graph is therefore run node by node on
    ``probe`` while it is rewritten; where a node fails, the latest reshape with another reading
    takes it, and the nodes after it are run again."""
    graph = gm.graph
    source = next(n for n in graph.nodes if n.op == "placeholder")
    with graph.inserting_after(source):
        batch_size = graph.call_function(_aten.sym_size.int, (source, 0))
    nodes = list(graph.nodes)
    original = {node: node.args for node in nodes}
    interpreter = fx.Interpreter(gm)
    interpreter.env.update({source: probe, batch_size: len(probe)})
    placed: dict[fx.Node, Place] = {source: (0, 1)}
    chosen: dict[int, tuple[int, int]] = {}  # node index -> (reading taken, readings)
    steps, i = 0, 0
    while i < len(nodes):
        node = nodes[i]
        if node in (source, batch_size):
            i += 1
            continue
        readings = _readings(node, original[node], placed, batch, batch_size)
        error = None
        for k in range(chosen.get(i, (0, 0))[0], len(readings)):
            node.args, place = readings[k]
            steps += 1
            try:
                interpreter.env[node] = interpreter.run_node(node)
            except Exception as failure:  # noqa: BLE001 - a failing node means: another reading
                error = failure
                continue
            chosen[i] = (k, len(readings))
            if place is None:
                placed.pop(node, None)
            else:
                placed[node] = place
            i += 1
            break
        else:
            chosen.pop(i, None)
            earlier = [j for j, (k, n) in chosen.items() if j < i and k + 1 < n]
            if not earlier or steps > 8 * len(nodes):
                raise GeneralizationError(f"a batch of {len(probe)} fails at {node.name}: {first_line(error)}")
            i = max(earlier)
            chosen = {j: c for j, c in chosen.items() if j <= i}
            chosen[i] = (chosen[i][0] + 1, chosen[i][1])
    if not batch_size.users:
        graph.erase_node(batch_size)


def _readings(node: fx.Node, args: tuple, placed: dict[fx.Node, Place], batch: int, batch_size: fx.Node):
    """The node's possible rewrites: (its arguments, where its value carries the batch or None)."""
    if node.op != "call_function":
        return [(args, None)]
    shape = _shape(node)
    carried = [n for n in node.all_input_nodes if n in placed]
    if carried:
        places = _follow_batch(node, carried[0], placed[carried[0]], shape, batch)
        if not places:
            return [(args, None)]
        if node.target in _RESHAPES or node.target in _EXPANDS:
            return [((args[0], [-1 if i == dim else s for i, s in enumerate(shape)], *args[2:]), (dim, outer))
                    for dim, outer in places]  # fmt: skip
        return [(args, places[0])]
    if shape is None or not shape or shape[0] != batch:
        return [(args, None)]
    if node.target in _EXPANDS and args[1][0] == batch:  # a weight broadcast to the batch
        return [((args[0], [batch_size, *args[1][1:]], *args[2:]), None)]
    if node.target in _FACTORIES and list(args[_FACTORIES[node.target]][:1]) == [batch]:
        position, changed = _FACTORIES[node.target], list(args)
        changed[position] = [batch_size, *args[position][1:]]
        return [(tuple(changed), None)]
    return [(args, None)]


def _follow_batch(node: fx.Node, source: fx.Node, place: Place, shape: tuple[int, ...] | None, batch: int) -> list[Place]:
    """Where ``node``'s value may carry the batch, given that ``source`` (one of its inputs)
    carries it at ``place``, likeliest first; none when it cannot be told (the check decides)."""
    target, args, (dim, outer) = node.target, node.args, place
    source_shape = _shape(source)
    if shape is None or source_shape is None:  # tuples (chunks, pools with indices) and their items
        return [place]
    rank = len(shape)
    before = math.prod(source_shape[:dim]) * outer  # elements of one image's value before the batch
    if target in _RESHAPES:
        return _reshaped(shape, before, batch, range(rank))
    if target in _EXPANDS:
        return [(dim + rank - len(source_shape), outer)]
    if target is _aten.permute.default:
        return [([d % rank for d in args[1]].index(dim), outer)]
    if target is _aten.transpose.int:
        a, b = (d % rank for d in args[1:3])
        return [(b if dim == a else a if dim == b else dim, outer)]
    if target is _aten.t.default:
        return [(1 - dim if rank == 2 else dim, outer)]
    if target is _aten.flatten.using_ints:
        start, end = ((args[i] if len(args) > i else default) % len(source_shape) for i, default in ((1, 0), (2, -1)))
        if dim < start:
            return [place]
        if dim > end:
            return [(dim - (end - start), outer)]
        return [(start, math.prod(source_shape[start:dim]) * outer)]
    if target is _aten.unflatten.int:
        split = args[1] % len(source_shape)
        if dim != split:
            return [(dim if dim < split else dim + len(args[2]) - 1, outer)]
        return _reshaped(shape, before, batch, range(split, split + len(args[2])))
    if target in (_aten.unsqueeze.default, _aten.stack.default):
        inserted = (args[1] if target is _aten.unsqueeze.default else (args[1] if len(args) > 1 else 0)) % rank
        return [(dim + (inserted <= dim), outer)]
    if len(source_shape) == rank:
        return [place]  # elementwise, convs, pools, matmuls, cat, slices: the batch stays put
    dims = args[1] if len(args) > 1 else None
    if rank < len(source_shape) and isinstance(dims, (int, list, tuple)):
        # select, squeeze, and reductions without keepdim (mean, sum, amax): dimensions go
        removed = {d % len(source_shape) for d in ([dims] if isinstance(dims, int) else dims)}
        return [] if dim in removed else [(dim - sum(r < dim for r in removed), outer)]
    return []


def _reshaped(shape: tuple[int, ...], before: int, batch: int, dims) -> list[Place]:
    """Where a row-major reshape to ``shape`` may put a batch that ``before`` elements precede:
    any dimension it can be a factor of, as its outermost factor first."""
    places = []
    for dim in dims:
        preceding = math.prod(shape[:dim])
        if before % preceding == 0 and shape[dim] % (before // preceding * batch) == 0:
            places.append((dim, before // preceding))
    return sorted(places, key=lambda place: place[1])


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
