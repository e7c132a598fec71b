import torch
import torch.nn.functional as F
from torch import nn

from sparsify_cnn.transform.capture import capture
from sparsify_cnn.transform.layers import find_layers, output_shape


class Mixed(nn.Module):
    """Module convs and linears next to functional ones with their own weights."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False)
        self.w = nn.Parameter(torch.randn(6, 8, 1, 1))
        self.head = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = self.grouped(torch.relu(self.stem(x)))
        x = F.conv2d(x, self.w, None, 1, 0)
        return self.head(x.flatten(1))


def test_fx_and_export_graphs_give_the_same_layers():
    model = Mixed().eval()
    views = {}
    for method in ("fx", "export"):
        gm = capture(model, (1, 3, 8, 8), method=method).graph_module
        views[method] = [
            (l.kind, tuple(l.weight.shape), l.stride, l.padding, l.dilation, l.groups, l.output_shape)
            for l in find_layers(gm)
        ]
        assert output_shape(gm) == (1, 5)
    assert views["fx"] == views["export"]
    assert views["fx"][1] == ("conv", (8, 2, 3, 3), (1, 1), (2, 2), (2, 2), 4, (1, 8, 4, 4))
    assert [v[0] for v in views["fx"]] == ["conv", "conv", "conv", "linear"]


def test_layer_names_are_module_paths_in_both_forms():
    model = Mixed().eval()
    fx_names = [l.name for l in find_layers(capture(model, (1, 3, 8, 8), method="fx").graph_module)]
    export_names = [l.name for l in find_layers(capture(model, (1, 3, 8, 8), method="export").graph_module)]
    assert fx_names[:2] == export_names[:2] == ["stem", "grouped"]
    assert fx_names[3] == export_names[3] == "head"


def test_geometry_properties():
    layer = find_layers(capture(Mixed(), (1, 3, 8, 8)).graph_module)[1]
    assert (layer.in_channels, layer.out_channels, layer.kernel_size) == (8, 8, (3, 3))
    assert layer.input_shape == (1, 8, 4, 4)
