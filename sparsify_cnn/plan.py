"""A plan: what a search chose, as data. It records the technique, its config, the per-layer
masks (Spatial: full prediction masks; perforation: kept-position masks; SSC: none, its config
lists every layer's exact (g, p)), how they were chosen (epsilon, metric, data fingerprint) and the versions that chose
them, and re-applies to the model to give the identical graph.

A plan names its model by graph fingerprint and weights digest, and applies only to that model
(a retrained one needs its own search) unless asked otherwise. Masks are stored bit-packed
(base64), so a plan stays small and exact.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import fx

from . import storage
from .errors import InputError
from .plan_schema import plan_schema
from .schema import read_json
from .technique import get as get_technique
from .transform.rewrite import PassResult

PLAN_VERSION = 1


@dataclass
class Plan:
    technique: str
    config: dict  # the technique's config (SpatialConfig.to_dict())
    masks: dict[str, torch.Tensor]  # layer name -> full mask
    search: dict = field(default_factory=dict)  # search config, epsilon, metric
    data: dict = field(default_factory=dict)  # name, fingerprint
    model: dict = field(default_factory=dict)  # source, graph fingerprint, weights digest, input shape
    results: dict = field(default_factory=dict)  # accuracies and MACs measured when chosen
    versions: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        data = {
            "plan_version": PLAN_VERSION,
            "technique": self.technique,
            "config": self.config,
            "search": self.search,
            "data": self.data,
            "model": self.model,
            "results": self.results,
            "versions": self.versions,
            "masks": {name: _pack(mask) for name, mask in self.masks.items()},
        }
        storage.write_text(path, json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """The plan in ``path``, checked against its schema: a bad field gives one InputError line."""
        data = read_json(path, plan_schema(), "plan")
        masks = {}
        for name, packed in data["masks"].items():
            try:
                masks[name] = _unpack(packed)
            except ValueError as error:
                raise InputError(f"plan '{path}' has a corrupt mask for layer '{name}': {error}") from error
        fields = ("config", "search", "data", "model", "results", "versions")
        return cls(data["technique"], masks=masks, **{k: data.get(k, {}) for k in fields})

    def apply(self, gm: fx.GraphModule, for_other_model: bool = False) -> PassResult:
        """Rewrite ``gm`` (a captured dense model) as the plan says and install its masks. A plan
        applies to the model it was made for (graph and weights); ``for_other_model`` applies it
        to another one anyway (a retrained model: the masks were chosen for other weights)."""
        if not for_other_model:
            self.check_model(gm)
        return get_technique(self.technique, stage="optimize").function("apply_plan")(gm, self)

    def check_model(self, gm: fx.GraphModule) -> None:
        """Raise InputError unless ``gm`` is the model this plan was made for, as far as the plan
        records it: its graph, and its weights (plans made before weights were recorded, or
        written by hand without a model record, are checked on what they have)."""
        graph, weights = self.model.get("graph"), self.model.get("weights")
        if graph and graph != graph_fingerprint(gm):
            why = "another graph (other architecture, layers or capture)"
        elif weights and weights != weights_digest(gm):
            why = "the same graph with other weights (retrained or fine-tuned?)"
        else:
            return
        raise InputError(f"the plan was made for {why}, not this model; pass --plan-for-other-model "
                         f"(in Python: apply(gm, for_other_model=True)) to apply it anyway")  # fmt: skip

def plan_config(kind, data: dict):
    """The config of type ``kind`` a plan's ``data`` gives: the schema checked the fields' types,
    the config checks their values (InputError)."""
    try:
        return kind.from_dict(data)
    except (TypeError, ValueError) as error:
        raise InputError(f"the plan's config does not make a {kind.__name__}: {error}") from error


def install_masks(result: PassResult, ops: dict, masks: dict[str, torch.Tensor], install: str) -> PassResult:
    """Install a plan's ``masks`` on the ``ops`` a rewrite inserted (``op.<install>(mask)``);
    a layer the rewrite skipped, or a mask that does not fit, is an InputError."""
    missing = sorted(set(masks) - set(ops))
    if missing:
        reasons = "; ".join(f"{name}: {result.skipped.get(name, 'no such layer')}" for name in missing)
        raise InputError(f"the plan does not fit this model: {reasons}")
    for name, mask in masks.items():
        try:
            getattr(ops[name], install)(mask)
        except (ValueError, RuntimeError) as error:
            raise InputError(f"the plan does not fit this model: {error}") from error
    return result


def unescape(pattern: str) -> str:
    """A layer name from the glob ``glob.escape`` made of it."""
    # glob.escape wraps the special characters *, ? and [ in brackets
    return pattern.replace("[*]", "*").replace("[?]", "?").replace("[[]", "[")


def graph_fingerprint(gm: fx.GraphModule) -> str:
    """A hash of a graph's code and parameter shapes: two captures of one model agree."""
    digest = hashlib.sha256(gm.code.encode())
    for name, tensor in sorted(gm.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
    return digest.hexdigest()[:16]


def weights_digest(gm: torch.nn.Module) -> str:
    """A hash of a model's weights (names, dtypes, shapes and bytes of its state dict, in name
    order): a retrained model with the same graph gets another digest. Example::

        plan.model["weights"] == weights_digest(prepare("lenet.pt2").captured.graph_module)
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(gm.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, 0-d too
    return digest.hexdigest()[:16]


def _pack(mask: torch.Tensor) -> dict:
    bits = np.packbits(mask.to(torch.bool).flatten().numpy())
    return {"shape": list(mask.shape), "bits": base64.b64encode(bits.tobytes()).decode()}


def _unpack(packed: dict) -> torch.Tensor:
    shape = tuple(int(s) for s in packed["shape"])
    count = math.prod(shape)  # exact: numpy's product wraps around for huge shapes
    try:
        raw = base64.b64decode(packed["bits"], validate=True)
    except binascii.Error as error:
        raise ValueError(f"the bits are not base64 ({error})") from error
    if len(raw) != (count + 7) // 8:
        raise ValueError(f"{8 * len(raw)} bits for a mask of shape {shape} ({count} positions)")
    flat = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:count]
    return torch.from_numpy(flat.astype(bool).reshape(shape))
