"""Every technique's op pads with zeros: a conv that pads otherwise is left dense with the reason
(it would match torch before compiling and differ after). torch.export writes the padding as its
own op before a zero-padded conv, which the techniques then take."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sparsify_cnn.techniques.perforation.rewrite import insert_perforated_convs
from sparsify_cnn.techniques.spatial.rewrite import insert_spatial_ops
from sparsify_cnn.techniques.ssc.rewrite import SSCConfig, insert_ssc
from sparsify_cnn.techniques.stan.rewrite import stan_layers
from sparsify_cnn.transform.capture import capture


class Padded(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1, padding_mode=mode)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 8 * 8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


INSERT = {
    "spatial": insert_spatial_ops,
    "perforation": insert_perforated_convs,
    "ssc": lambda gm: insert_ssc(gm, SSCConfig(per_layer=(("*", 2, 2),))),
}


def _stan_layers(gm):
    """The convs STAN would take (its pass then needs an entry matrix sized for them)."""
    shapes, skipped = stan_layers(gm)
    return SimpleNamespace(inserted=shapes, skipped=skipped)


INSERT["stan"] = _stan_layers


@pytest.mark.parametrize("technique", list(INSERT))
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_a_conv_that_pads_otherwise_is_left_dense_with_the_reason(technique, mode):
    torch.manual_seed(0)
    result = INSERT[technique](capture(Padded(mode).eval(), (1, 4, 8, 8), method="fx").graph_module)
    assert "conv1" not in result.inserted
    assert f"padding mode '{mode}'" in result.skipped["conv1"]
    assert "conv2" in result.inserted


@pytest.mark.parametrize("technique", ["spatial", "perforation"])
def test_an_exported_reflect_pad_is_its_own_op_and_the_conv_after_it_is_taken(technique):
    torch.manual_seed(0)
    model = Padded("reflect").eval()
    result = INSERT[technique](capture(model, (1, 4, 8, 8), method="export").graph_module)
    assert len(result.inserted) == 2
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(result.graph_module(x), model(x))  # no masks yet: the identity
