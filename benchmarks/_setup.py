"""What the benchmarks share: a zoo model trained on the built-in digits, ready to search."""

from __future__ import annotations

import time

import torch

from sparsify_cnn import models
from sparsify_cnn.data import load_data
from sparsify_cnn.model_io import LoadedModel
from sparsify_cnn.pipeline import Prepared
from sparsify_cnn.training import TrainConfig, train
from sparsify_cnn.transform.capture import capture


def trained_zoo_model(name: str, epochs: int, batch: int = 1, threads: int = 2) -> tuple[Prepared, float]:
    """The zoo model ``name`` trained ``epochs`` epochs (seed 0) on digits at its input size,
    captured for ``batch`` images; and the training time in seconds."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    entry = models.get_entry(name)
    data = load_data("digits", entry.input_shape)
    model = entry.factory(num_classes=data.num_classes)
    start = time.perf_counter()
    train(model, data, TrainConfig(epochs=epochs, seed=0))
    seconds = time.perf_counter() - start
    loaded = LoadedModel(model.eval(), f"zoo:{name}", "zoo", entry.input_shape)
    return Prepared(loaded, capture(model, (batch, *entry.input_shape)), data), seconds


def untrained_technique(technique: str, dense: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``dense`` rewritten by a technique that times the same work whatever the weights:
    ``perforation-R`` (grid masks keeping 1-R of the positions of every non-1x1 conv) or ``ssc``
    (g = 16, p = 2 wherever they divide)."""
    from sparsify_cnn.techniques.perforation.masks import kept_mask
    from sparsify_cnn.techniques.perforation.rewrite import PerforationConfig, insert_perforated_convs, perforated_ops
    from sparsify_cnn.techniques.ssc.rewrite import SSCConfig, insert_ssc

    if technique.startswith("perforation-"):
        rate = float(technique.split("-", 1)[1])
        gm = insert_perforated_convs(dense, PerforationConfig()).graph_module
        for op in perforated_ops(gm).values():
            op.set_kept(kept_mask("grid", op.out_hw, 1 - rate, seed=0))
        return gm
    if technique == "ssc":
        return insert_ssc(dense, SSCConfig(per_layer=(("*", 16, 2),))).graph_module
    raise ValueError(f"unknown technique {technique}")
