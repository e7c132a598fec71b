"""Small data and models: STAN tests train for real, so everything is tiny."""

from collections import OrderedDict

import numpy as np
import pytest
from torch import nn

from sparsify_cnn.data import make_dataset
from sparsify_cnn.transform.capture import capture


@pytest.fixture(scope="session")
def toy_data():
    """150 images 3x12x12 in 3 classes, a bright square whose corner says the class."""
    rng = np.random.default_rng(0)
    y = np.arange(150) % 3
    x = rng.normal(0, 0.1, (150, 3, 12, 12)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, :, 2 + 3 * label : 6 + 3 * label, 3:7] += 1.0
    return make_dataset("toy", x, y)


def toy_net(classes: int = 3) -> nn.Module:
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 8, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(8, 8, 3, padding=1)), ("relu2", nn.ReLU()), ("flatten", nn.Flatten(1)),
        ("fc1", nn.Linear(8 * 6 * 6, 16)), ("relu3", nn.ReLU()), ("fc2", nn.Linear(16, classes)),
    ]))  # fmt: skip


@pytest.fixture
def toy_module():
    import torch

    torch.manual_seed(0)
    return toy_net()


@pytest.fixture
def toy_graph():
    import torch

    torch.manual_seed(0)
    return capture(toy_net(), (1, 3, 12, 12)).graph_module
