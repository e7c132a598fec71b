"""Run part of a graph: record chosen values in one pass, and rebuild the part of the graph
after a node as its own module (searches re-run only what a change affects)."""

from __future__ import annotations

import torch
from torch import fx


class _Reached(Exception):
    """Raised once the last node a partial run needs has its value."""


class Recorder(fx.Interpreter):
    """Runs a graph module and returns the values of the nodes asked for (and the output); with
    ``until``, stops once that node has run (no output then)."""

    def __init__(self, gm: fx.GraphModule, keep: set[fx.Node], until: fx.Node | None = None):
        super().__init__(gm)
        self.keep, self.until = keep, until
        self.kept: dict[fx.Node, torch.Tensor] = {}

    def run_node(self, n: fx.Node):
        value = super().run_node(n)
        if n in self.keep or n.op == "output":
            self.kept[n] = value
        if n is self.until:
            raise _Reached
        return value

    def run(self, *args):
        with torch.no_grad():
            try:
                super().run(*args)
            except _Reached:
                pass
        return self.kept


def suffix_after(gm: fx.GraphModule, start: fx.Node) -> tuple[fx.GraphModule, list[fx.Node]]:
    """A graph module computing the model output from ``start``'s value and the values it
    needs from outside the part of the graph that depends on ``start`` (the frontier).

    The frontier holds only tensors that carry the batch: they are recorded batch by batch and
    sliced per image. What else the suffix reads (sizes such as ``x.size(0)``, values computed
    from weights alone) is recomputed inside it, from the frontier and the weights, so that it
    fits whatever images the suffix runs on.
    """
    order = list(gm.graph.nodes)
    on_input = _depending_on_input(order)
    inside = set()
    for node in order[order.index(start) + 1 :]:
        if any(arg is start or arg in inside for arg in node.all_input_nodes):
            inside.add(node)
    frontier: list[fx.Node] = []
    pending = [arg for node in order if node in inside for arg in node.all_input_nodes]
    while pending:
        arg = pending.pop()
        if arg is start or arg in inside or arg in frontier or arg.op == "get_attr":
            continue
        if arg.op != "placeholder" and (arg not in on_input or not _is_tensor(arg)):
            inside.add(arg)  # recomputed in the suffix from what it reads
            pending.extend(arg.all_input_nodes)
        else:
            frontier.append(arg)
    frontier.sort(key=order.index)
    graph = fx.Graph()
    env = {start: graph.placeholder("op_output")}
    env[start].meta = dict(start.meta)  # shapes, for accounting of the suffix
    for i, node in enumerate(frontier):
        env[node] = graph.placeholder(f"frontier_{i}")
        env[node].meta = dict(node.meta)
    for node in order:
        if node in inside or (node.op == "get_attr" and any(u in inside for u in node.users)):
            env[node] = graph.node_copy(node, lambda n: env[n])
    return fx.GraphModule(gm, graph), frontier


def _depending_on_input(order: list[fx.Node]) -> set[fx.Node]:
    found = set()
    for node in order:
        if node.op == "placeholder" or any(arg in found for arg in node.all_input_nodes):
            found.add(node)
    return found


def _is_tensor(node: fx.Node) -> bool:
    """Whether ``node``'s value is a tensor (by the shapes capture recorded)."""
    kind = node.meta.get("type")
    if kind is not None:
        return issubclass(kind, torch.Tensor)
    value = node.meta.get("val", node.meta.get("tensor_meta"))
    return isinstance(value, torch.Tensor) or hasattr(value, "shape") and hasattr(value, "dtype")


def record_op_inputs(gm: fx.GraphModule, modules: dict[str, torch.nn.Module], x: torch.Tensor) -> dict[str, tuple]:
    """Run ``gm`` on ``x`` once; return the tensor arguments each of ``modules`` (keyed by any
    name) received. Modules that count work on the data (zero prediction) count it on ``x``."""
    inputs, hooks = {}, []
    for name, module in modules.items():
        if hasattr(module, "reset_stats"):
            module.reset_stats()
            module.track_stats = True

        def keep(_module, args, name=name):
            inputs[name] = tuple(a.detach().clone() for a in args if isinstance(a, torch.Tensor))

        hooks.append(module.register_forward_pre_hook(keep))
    try:
        with torch.no_grad():
            gm(x)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs
