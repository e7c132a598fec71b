"""ReLU-like activations (0 for every input <= 0, never negative) end a conv chain with their
upper bound; clamps with any other lower bound are refused with the reason."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify_cnn.transform.capture import capture
from sparsify_cnn.transform.layers import find_layers
from sparsify_cnn.transform.match import PoolingWindows, find_conv_relu, find_next_pooling

# Each form of activation applied to the conv output y, and the upper bound the chain must record.
RELU_LIKE = {
    "nn.ReLU": (lambda m, y: m.relu(y), None),
    "nn.ReLU6": (lambda m, y: m.relu6(y), 6.0),
    "F.relu6": (lambda m, y: F.relu6(y), 6.0),
    "F.relu6 in place": (lambda m, y: F.relu6(y, inplace=True), 6.0),
    "nn.Hardtanh(0, 2)": (lambda m, y: m.hardtanh(y), 2.0),
    "F.hardtanh(0, 3)": (lambda m, y: F.hardtanh(y, 0.0, 3.0), 3.0),
    "F.hardtanh in place": (lambda m, y: F.hardtanh(y, 0.0, 3.0, inplace=True), 3.0),
    "F.hardtanh_": (lambda m, y: F.hardtanh_(y, 0.0, 2.5), 2.5),
    "torch.clamp(min=0, max=4)": (lambda m, y: torch.clamp(y, min=0, max=4), 4.0),
    "torch.clamp(0, 4.5)": (lambda m, y: torch.clamp(y, 0, 4.5), 4.5),
    "torch.clamp(min=0)": (lambda m, y: torch.clamp(y, min=0), None),
    "x.clamp(min=0)": (lambda m, y: y.clamp(min=0), None),
    "x.clamp_(0, 5)": (lambda m, y: y.clamp_(0, 5), 5.0),
    "x.clamp(0, inf)": (lambda m, y: y.clamp(0.0, float("inf")), None),
    "torch.clamp_min(x, 0)": (lambda m, y: torch.clamp_min(y, 0), None),
    "x.clamp_min_(0.0)": (lambda m, y: y.clamp_min_(0.0), None),
    "torch.clip(0, 6)": (lambda m, y: torch.clip(y, 0, 6), 6.0),
    "x.clip(min=0)": (lambda m, y: y.clip(min=0.0), None),
}
REFUSED = {
    "F.hardtanh()": (lambda m, y: F.hardtanh(y), "lower bound -1.0"),
    "nn.Hardtanh(-1, 1)": (lambda m, y: m.symmetric(y), "lower bound -1.0"),
    "x.clamp(min=0.1)": (lambda m, y: y.clamp(min=0.1), "lower bound 0.1"),
    "x.clamp(max=3)": (lambda m, y: y.clamp(max=3.0), "lower bound -inf"),
    "torch.clamp_max(x, 3)": (lambda m, y: torch.clamp_max(y, 3), "lower bound -inf"),
    "x.clamp(0, 0)": (lambda m, y: y.clamp(0, 0), "upper bound 0"),
    "x.clamp(min=tensor)": (lambda m, y: y.clamp(min=m.zero), "bounds as tensors"),
}


class OneConv(nn.Module):
    def __init__(self, activation):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.activation = activation
        self.relu, self.relu6 = nn.ReLU(), nn.ReLU6()
        self.hardtanh, self.symmetric = nn.Hardtanh(0.0, 2.0), nn.Hardtanh()
        self.register_buffer("zero", torch.zeros(3, 1, 1))

    def forward(self, x):
        return self.activation(self, self.conv(x))


def _match(activation, method):
    return find_conv_relu(capture(OneConv(activation).eval(), (1, 2, 6, 6), method=method).graph_module)


@pytest.mark.parametrize("method", ["fx", "export"])
@pytest.mark.parametrize("form", list(RELU_LIKE))
def test_relu_like_activations_end_a_chain_with_their_upper_bound(form, method):
    activation, bound = RELU_LIKE[form]
    result = _match(activation, method)
    assert not result.skipped, result.skipped
    (chain,) = result.chains
    assert chain.layer.name == "conv" and chain.nodes[-1] is chain.relu
    assert chain.max_value == bound and (bound is None or type(chain.max_value) is float)


@pytest.mark.parametrize("method", ["fx", "export"])
@pytest.mark.parametrize("form", list(REFUSED))
def test_other_bounds_are_refused_with_the_reason(form, method):
    activation, reason = REFUSED[form]
    result = _match(activation, method)
    assert not result.chains
    assert reason in result.skipped["conv"] and "its activation" in result.skipped["conv"]


@pytest.mark.parametrize("method", ["fx", "export"])
def test_bound_found_through_norm_pool_and_residual(method):
    class Chains(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.b, self.c = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            x = F.relu6(self.bn(self.a(x)))
            x = torch.clamp(F.max_pool2d(self.b(x), 2), 0, 3)  # the clamp commutes with the max pool too
            return F.hardtanh(self.c(x) + x, 0.0, 1.5)

    result = find_conv_relu(capture(Chains().eval(), (1, 2, 8, 8), method=method).graph_module)
    chains = {chain.layer.name: chain for chain in result.chains}
    assert {name: chain.max_value for name, chain in chains.items()} == {"a": 6.0, "b": 3.0, "c": 1.5}
    assert chains["a"].norm is not None and chains["b"].pool is not None and chains["c"].residual_add is not None


@pytest.mark.parametrize("method", ["fx", "export"])
def test_pooling_windows_are_still_found_through_clamps(method):
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            x = F.max_pool2d(torch.clamp_min(self.a(x), 0), 2)
            return F.avg_pool2d(self.b(x).clamp_(0, 6), 2)

    gm = capture(Pooled().eval(), (1, 2, 8, 8), method=method).graph_module
    convs = {layer.name: layer.node for layer in find_layers(gm)}
    halving = PoolingWindows((2, 2), (2, 2), (0, 0))
    assert find_next_pooling(gm, convs["a"]) == halving and find_next_pooling(gm, convs["b"]) == halving
