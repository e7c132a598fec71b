"""Values of graph nodes recorded on a set of images, within a memory budget.

A search that changes one layer at a time needs, for that layer, the dense values its suffix
reads (``suffix.suffix_after``). Keeping every layer's values at once costs the network's
activations times the images (40 MB an image on a ResNet-50 at 224x224: 20 GB for 512 images).
Within ``max_bytes``, consecutive users are grouped so that one group's values fit; a group is
recorded by a pass that stops at its last node, and dropped when a user of another group asks.
Users asked for in graph order cost one partial pass per group beyond the first; the values,
and so every result computed from them, are the same whatever the budget.
"""

from __future__ import annotations

import torch
from torch import fx

from ..errors import InputError
from ..option_types import format_bytes
from .suffix import Recorder


class ActivationCache:
    """The values each user (a key, in graph order) needs, ``needs[key]`` nodes of ``gm``, on
    images ``x``; ``logits`` is the model output on them (from the first pass, which runs the
    whole network). ``max_bytes`` None keeps every group at once."""

    def __init__(self, gm: fx.GraphModule, x: torch.Tensor, needs: dict[str, list[fx.Node]],
                 batch_size: int, max_bytes: int | None = None):  # fmt: skip
        self.gm, self.x, self.needs, self.batch_size = gm, x, needs, batch_size
        self.order = {node: i for i, node in enumerate(gm.graph.nodes)}
        per_image = self._bytes_per_image({n for nodes in needs.values() for n in nodes}) if len(x) else {}
        self.groups = _groups(needs, per_image, len(x), max_bytes)
        self.group_of = {key: i for i, group in enumerate(self.groups) for key in group}
        self.group_bytes = [sum(per_image[n] for n in self._nodes(g)) * len(x) for g in self.groups]
        self.passes = 0  # recording passes, the first whole, the others up to their group's last node
        self._loaded: int | None = None
        self._values: dict[fx.Node, torch.Tensor] = {}
        self.logits = self._record(0, whole=True)

    def values(self, key: str) -> list[torch.Tensor]:
        """The values of ``needs[key]``, in that order (recording its group if it is not kept)."""
        group = self.group_of[key]
        if group != self._loaded:
            self._record(group, whole=False)
        return [self._values[n] for n in self.needs[key]]

    def holds(self, key: str) -> bool:
        """Whether ``key``'s values are kept now (``values`` records nothing)."""
        return self.group_of[key] == self._loaded

    @property
    def peak_bytes(self) -> int:
        return max(self.group_bytes, default=0)

    def _nodes(self, group: list[str]) -> set[fx.Node]:
        return {n for key in group for n in self.needs[key]}

    def _record(self, group: int, whole: bool) -> torch.Tensor | None:
        self._values = {}  # what the last group held is freed before the next is recorded
        keep = self._nodes(self.groups[group]) if self.groups else set()
        last = None if whole or not keep else max(keep, key=self.order.__getitem__)
        parts: dict[fx.Node, list[torch.Tensor]] = {n: [] for n in keep}
        outputs = []
        for start in range(0, len(self.x), self.batch_size):
            env = Recorder(self.gm, keep, until=last).run(self.x[start : start + self.batch_size])
            for n in keep:
                parts[n].append(env[n])
            if whole:
                out = next(v for n, v in env.items() if n.op == "output")
                outputs.append(out[0] if isinstance(out, (tuple, list)) else out)
        self._values = {n: torch.cat(v) for n, v in parts.items()}
        self._loaded = group
        self.passes += 1
        return torch.cat(outputs) if whole else None

    def _bytes_per_image(self, nodes: set[fx.Node]) -> dict[fx.Node, int]:
        env = Recorder(self.gm, nodes).run(self.x[:1])
        return {n: env[n].numel() * env[n].element_size() for n in nodes}


def _groups(needs: dict[str, list[fx.Node]], per_image: dict[fx.Node, int], images: int,
            max_bytes: int | None) -> list[list[str]]:  # fmt: skip
    """Consecutive keys whose values together fit ``max_bytes`` (all keys when None)."""
    if max_bytes is None or not images:
        return [list(needs)] if needs else []
    groups: list[list[str]] = []
    held: set[fx.Node] = set()
    for key, nodes in needs.items():
        alone = sum(per_image[n] for n in set(nodes)) * images
        if alone > max_bytes:
            raise InputError(
                f"--max-cache-memory {format_bytes(max_bytes)} is less than layer {key} needs on "
                f"{images:,} calibration images ({format_bytes(alone)}); raise it or use fewer images"
            )
        together = held | set(nodes)
        if groups and sum(per_image[n] for n in together) * images <= max_bytes:
            groups[-1].append(key)
            held = together
        else:
            groups.append([key])
            held = set(nodes)
    return groups
