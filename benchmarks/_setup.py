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
