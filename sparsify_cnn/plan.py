"""A plan: what a search chose, as data. It records the technique, its config, the per-layer
masks (Spatial: full prediction masks; perforation: kept-position masks; SSC: none, its config
lists every layer's exact (g, p)), how they were chosen (epsilon, metric, data fingerprint) and the versions that chose
them, and re-applies to the model to give the identical graph.

Masks are stored bit-packed (base64), so a plan stays small and exact.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import fx

from .errors import InputError
from .passes.base import PassResult
from .passes.perforation import (
    PerforationConfig,
    insert_perforated_convs,
    perforated_ops,
)
from .passes.spatial import SpatialConfig, insert_spatial_ops, spatial_ops
from .passes.ssc import SSCConfig, insert_ssc

PLAN_VERSION = 1
TECHNIQUES = ("spatial", "perforation", "ssc")


@dataclass
class Plan:
    technique: str
    config: dict  # the technique's config (SpatialConfig.to_dict())
    masks: dict[str, torch.Tensor]  # layer name -> full mask
    search: dict = field(default_factory=dict)  # search config, epsilon, metric
    data: dict = field(default_factory=dict)  # name, fingerprint
    model: dict = field(default_factory=dict)  # source, graph fingerprint
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
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"plan '{path}' is not a readable plan file: {error}") from error
        if not isinstance(data, dict) or data.get("plan_version") != PLAN_VERSION:
            raise InputError(f"plan '{path}' is not a version {PLAN_VERSION} sparsify plan")
        if data.get("technique") not in TECHNIQUES:
            raise InputError(f"plan '{path}' has unknown technique '{data.get('technique')}'")
        try:
            masks = {name: _unpack(packed) for name, packed in data["masks"].items()}
        except (KeyError, ValueError, TypeError) as error:
            raise InputError(f"plan '{path}' has a corrupt mask: {error}") from error
        fields = ("config", "search", "data", "model", "results", "versions")
        return cls(data["technique"], masks=masks, **{k: data.get(k, {}) for k in fields})

    def apply(self, gm: fx.GraphModule) -> PassResult:
        """Rewrite ``gm`` (a captured dense model) as the plan says and install its masks."""
        if self.technique == "ssc":
            return self._apply_ssc(gm)
        if self.technique == "spatial":
            config = SpatialConfig.from_dict({**self.config, "layers": list(self.masks)})
            result = insert_spatial_ops(gm, config)
            ops, install = spatial_ops(result.graph_module), "set_mask"
        else:
            config = PerforationConfig.from_dict({**self.config, "layers": list(self.masks)})
            result = insert_perforated_convs(gm, config)
            ops, install = perforated_ops(result.graph_module), "set_kept"
        missing = sorted(set(self.masks) - set(ops))
        if missing:
            reasons = "; ".join(f"{name}: {result.skipped.get(name, 'no such layer')}" for name in missing)
            raise InputError(f"the plan does not fit this model: {reasons}")
        for name, mask in self.masks.items():
            try:
                getattr(ops[name], install)(mask)
            except ValueError as error:
                raise InputError(f"the plan does not fit this model: {error}") from error
        return result

    def _apply_ssc(self, gm: fx.GraphModule) -> PassResult:
        # SSC has no masks: the config lists every layer's exact (g, p); all of them must fit.
        config = SSCConfig.from_dict(self.config)
        planned = [entry[0] for entry in config.per_layer]
        result = insert_ssc(gm, config)
        by_glob = {glob.escape(name): name for name in result.inserted}
        missing = [pattern for pattern in planned if pattern not in by_glob]
        if missing:
            reasons = "; ".join(
                f"{pattern}: {result.skipped.get(_unescape(pattern), 'no such layer')}" for pattern in missing
            )
            raise InputError(f"the plan does not fit this model: {reasons}")
        return result


def _unescape(pattern: str) -> str:
    # glob.escape wraps the special characters *, ? and [ in brackets
    return pattern.replace("[*]", "*").replace("[?]", "?").replace("[[]", "[")


def graph_fingerprint(gm: fx.GraphModule) -> str:
    """A hash of a graph's code and parameter shapes: two captures of one model agree."""
    digest = hashlib.sha256(gm.code.encode())
    for name, tensor in sorted(gm.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
    return digest.hexdigest()[:16]


def _pack(mask: torch.Tensor) -> dict:
    bits = np.packbits(mask.to(torch.bool).flatten().numpy())
    return {"shape": list(mask.shape), "bits": base64.b64encode(bits.tobytes()).decode()}


def _unpack(packed: dict) -> torch.Tensor:
    shape = tuple(int(s) for s in packed["shape"])
    count = int(np.prod(shape))
    bits = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    flat = np.unpackbits(bits)[:count]
    if len(flat) != count:
        raise ValueError(f"{len(flat)} bits for a mask of shape {shape}")
    return torch.from_numpy(flat.astype(bool).reshape(shape))
