"""Shared fixtures: small trained models and model files of every kind, made once per session."""

from __future__ import annotations

import pytest
import torch

from sparsify_cnn import models
from sparsify_cnn.data import load_data
from sparsify_cnn.model_io import save_program
from sparsify_cnn.training import TrainConfig, train


class Interrupted(Exception):
    """What a ``stop_after`` callback raises: a run killed once an epoch is recorded."""


@pytest.fixture
def stop_after():
    """An ``on_epoch`` callback factory: ``stop_after(2)`` raises ``stop_after.error`` once epoch 2
    is recorded (and checkpointed), as a kill would stop the run; ``stop_after(None)`` after any."""

    def make(epoch: int | None):
        def callback(record):
            if epoch is None or record.epoch == epoch:
                raise Interrupted

        return callback

    make.error = Interrupted
    return make


def tiny_net():
    """Conv, batch norm (buffers), dropout (the global random state) and a linear layer, seeded."""
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
                         nn.Flatten(), nn.Linear(4 * 13 * 13, 10))  # fmt: skip


@pytest.fixture
def tiny():
    """``tiny()`` builds the seeded tiny training net (a new one each call)."""
    return tiny_net


@pytest.fixture(scope="session")
def digits28():
    return load_data("digits", (1, 28, 28))


def _trained(name: str, data, epochs: int):
    torch.manual_seed(0)
    model = models.build(name)
    train(model, data, TrainConfig(epochs=epochs, seed=0))
    return model.eval()


@pytest.fixture(scope="session")
def trained_lenet(digits28):
    """LeNet trained briefly on digits (well above chance, seconds to make)."""
    return _trained("lenet", digits28, epochs=3)


@pytest.fixture(scope="session")
def model_files(tmp_path_factory, trained_lenet):
    """One file of each kind the loader meets, keyed by kind."""
    root = tmp_path_factory.mktemp("model_files")
    files = {}
    files["pt2"] = root / "lenet.pt2"
    save_program(trained_lenet, (1, 28, 28), files["pt2"], {"zoo": "lenet"})
    files["state_dict"] = root / "lenet_state.pt"
    torch.save(trained_lenet.state_dict(), files["state_dict"])
    files["checkpoint"] = root / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": trained_lenet.state_dict()}, files["checkpoint"])
    files["pickle"] = root / "lenet_module.pt"
    torch.save(trained_lenet, files["pickle"])
    files["torchscript"] = root / "lenet_script.pt"
    torch.jit.save(torch.jit.trace(trained_lenet, torch.zeros(1, 1, 28, 28)), files["torchscript"])
    files["tensor"] = root / "tensor.pt"
    torch.save(torch.zeros(3), files["tensor"])
    files["empty"] = root / "empty.pt"
    files["empty"].write_bytes(b"")
    files["corrupt"] = root / "corrupt.pt"
    files["corrupt"].write_bytes(b"this is not a model file at all")
    files["truncated"] = root / "truncated.pt2"
    files["truncated"].write_bytes(files["pt2"].read_bytes()[:2000])
    return files


@pytest.fixture(scope="session")
def digits32():
    return load_data("digits", (3, 32, 32))


@pytest.fixture(scope="session")
def trained_cq(digits32):
    """CIFAR-quick trained briefly on digits resized to 3x32x32."""
    return _trained("cq", digits32, epochs=4)
