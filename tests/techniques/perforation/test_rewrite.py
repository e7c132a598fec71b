import pytest
import torch
from torch import nn

from sparsify_cnn import models
from sparsify_cnn.errors import InputError
from sparsify_cnn.techniques.perforation.rewrite import (
    PerforationConfig,
    insert_perforated_convs,
    perforated_ops,
)
from sparsify_cnn.transform.accounting import account
from sparsify_cnn.transform.capture import capture


@pytest.mark.parametrize("name, size", [("lenet", None), ("cq", None), ("nin", None), ("resnet18", 64)])
@pytest.mark.parametrize("method", ["fx", "export"])
def test_rate_zero_is_the_identity(name, size, method):
    torch.manual_seed(0)
    entry = models.get_entry(name)
    model = entry.factory().eval()
    shape = (entry.input_shape[0], size or entry.input_shape[1], size or entry.input_shape[2])
    result = insert_perforated_convs(capture(model, (1, *shape), method=method).graph_module)
    assert result.inserted
    x = torch.randn(3, *shape)
    with torch.no_grad():
        assert torch.equal(result.graph_module(x), model(x))


def test_only_non_1x1_convs_are_perforated():
    nin = insert_perforated_convs(capture(models.build("nin"), (1, 3, 32, 32)).graph_module)
    assert len(nin.inserted) == 3
    assert all("1x1 conv" in why for why in nin.skipped.values()) and len(nin.skipped) == 6
    resnet = insert_perforated_convs(capture(models.build("resnet18"), (1, 3, 64, 64)).graph_module)
    assert "1x1 conv" in resnet.skipped["layer2.0.downsample.0"] and "layer1.0.conv1" in resnet.inserted


def test_selected_layers_only_and_the_rest_keep_their_reason():
    gm = capture(models.build("cq"), (1, 3, 32, 32)).graph_module
    result = insert_perforated_convs(gm, PerforationConfig(layers=("conv2",)))
    assert list(result.inserted) == ["conv2"]
    assert result.skipped == {"conv1": "not selected", "conv3": "not selected"}
    assert list(perforated_ops(result.graph_module)) == ["conv2"]
    assert not perforated_ops(gm)  # the input graph is not touched


@pytest.mark.parametrize("method", ["fx", "export"])
def test_accounting_sees_the_kept_positions(method):
    gm = capture(models.build("lenet"), (1, 1, 28, 28), method=method).graph_module
    result = insert_perforated_convs(gm)
    dense = account(gm)
    op = perforated_ops(result.graph_module)["conv1"]
    kept = torch.zeros(op.out_hw, dtype=torch.bool)
    kept[::2, ::2] = True
    op.set_kept(kept)
    after = account(result.graph_module)
    assert after.total_macs == dense.total_macs
    assert dense.layer("conv1").macs - after.layer("conv1").performed_macs == int((~kept).sum()) * op.macs_per_position
    assert after.layer("conv1").kind == "perforation"


@pytest.mark.parametrize("method", ["fx", "export"])
def test_a_shared_conv_is_left_alone(method):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x))

    result = insert_perforated_convs(capture(Shared(), (1, 3, 8, 8), method=method).graph_module)
    assert not result.inserted
    assert all("more than once" in why or "shared" in why for why in result.skipped.values())


def test_bad_interpolation_is_an_input_error():
    with pytest.raises(InputError, match="interpolation must be one of"):
        PerforationConfig(interpolation="cubic")
