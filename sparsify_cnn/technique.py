"""The technique registry: the one place where a technique's name meets what it does.

A technique is a folder under ``sparsify_cnn/techniques/`` whose ``__init__.py`` registers one
``Technique`` record, and one line in ``sparsify_cnn/techniques/__init__.py`` that imports it.
Plans, the main job's command-line options, reports and lowerings reach a technique through
its record, never through ``if technique == ...``. A record names its functions as
``"module:function"`` strings, so reading the registry (``sparsify --help``) imports no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from .errors import InputError


@dataclass(frozen=True)
class Technique:
    """One technique. ``stage`` says where it runs: ``"optimize"``, chosen by the main job into a
    plan (``sparsify MODEL --technique NAME``), or ``"training"``, applied while a model trains
    (``sparsify train``). Example::

        register(Technique(name="spatial", summary="zero prediction", stage="optimize",
                           run="sparsify_cnn.techniques.spatial.cli:run", ...))
    """

    name: str
    summary: str  # what it inserts, a few words for --help
    stage: str = "optimize"
    options: tuple = ()  # click options the main job adds for it ("[name] ..." in their help)
    shared_options: tuple[str, ...] = ()  # the main job's technique-dependent options it takes (epsilon, ...)
    config_schema: dict | None = None  # JSON Schema properties of its config in plan.json
    run: str | None = None  # (prepared, options, JobContext) -> (result, write_report): the main job
    apply_plan: str | None = None  # (graph_module, plan) -> PassResult: rewrite as a plan says
    summary_line: str | None = None  # (report dict) -> str: the main job's first line of results
    check_options: str | None = None  # (options, given) -> None, raising click.UsageError
    checkpoint_name: str = "search-checkpoint.json"  # the main job's default --checkpoint in OUT
    checkpoint_kind: str = "search"  # what an interrupted run kept: "search" or "training"
    distributed: bool = False  # its main job runs data-parallel under torchrun (``distributed.World``)

    def function(self, field: str) -> Callable:
        """The function a ``"module:function"`` field names, imported now."""
        spec = getattr(self, field)
        if spec is None:
            raise InputError(f"technique '{self.name}' has no {field.replace('_', ' ')}")
        module, _, name = spec.partition(":")
        return getattr(importlib.import_module(module), name)


_REGISTRY: dict[str, Technique] = {}


def register(technique: Technique) -> Technique:
    if technique.stage not in ("optimize", "training"):
        raise ValueError(f"technique '{technique.name}': stage must be optimize or training")
    if technique.name in _REGISTRY and _REGISTRY[technique.name] != technique:
        raise ValueError(f"technique '{technique.name}' is registered twice")
    _REGISTRY[technique.name] = technique
    return technique


def techniques(stage: str | None = None) -> tuple[Technique, ...]:
    """Every registered technique (of ``stage``), in registration order."""
    importlib.import_module("sparsify_cnn.techniques")  # registers them all
    return tuple(t for t in _REGISTRY.values() if stage is None or t.stage == stage)


def names(stage: str | None = None) -> tuple[str, ...]:
    return tuple(t.name for t in techniques(stage))


def get(name: str, stage: str | None = None) -> Technique:
    """The technique called ``name``; an unknown name is an InputError listing the known ones."""
    found = {t.name: t for t in techniques(stage)}
    if name not in found:
        raise InputError(f"unknown technique '{name}'; choose one of: {', '.join(found)}")
    return found[name]
