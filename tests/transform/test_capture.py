import pytest
import torch
from torch import fx, nn

from sparsify_cnn.errors import CaptureError
from sparsify_cnn.transform.capture import capture
from sparsify_cnn.transform.layers import tensor_shape


class ShapeGate(nn.Module):
    """Python control flow on a shape: fx cannot trace it, torch.export can."""

    def forward(self, x):
        if x.shape[-1] > 4:
            return torch.relu(x)
        return x


class DataGate(nn.Module):
    """Control flow on values: neither fx nor torch.export can capture it."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


class Net(nn.Module):
    def __init__(self, gate: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.block = nn.Sequential(nn.BatchNorm2d(4), gate)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(self.block(self.conv(x)).flatten(1))


def _check_equal(net, captured):
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(captured.graph_module(x), net.eval()(x))


def test_fx_first_with_shapes_on_every_node():
    net = Net(nn.ReLU())
    captured = capture(net, (1, 1, 8, 8))
    assert captured.method == "fx"
    assert captured.input_shape == (1, 1, 8, 8)
    conv = next(n for n in captured.graph_module.graph.nodes if n.target == "conv")
    assert tensor_shape(conv) == (1, 4, 8, 8)
    _check_equal(net, captured)


def test_falls_back_to_export_on_shape_dependent_control_flow():
    net = Net(ShapeGate())
    captured = capture(net, (1, 1, 8, 8))
    assert captured.method == "export"
    _check_equal(net, captured)  # batch 5: the exported batch dimension is dynamic


def test_both_failing_names_module_node_and_remedies():
    with pytest.raises(CaptureError) as error:
        capture(Net(DataGate()), (1, 1, 8, 8))
    message = str(error.value)
    assert "module 'block.1' (DataGate)" in message
    assert "after node 'gt'" in message  # the comparison whose truth value tracing needed
    assert "torch.export failed" in message
    assert "--leaf" in message and "\n" not in message


@pytest.mark.parametrize("leaf", ["DataGate", "block.1"])
def test_leaf_modules_by_class_or_path(leaf):
    net = Net(DataGate())
    captured = capture(net, (1, 1, 8, 8), leaf_modules=[leaf])
    assert captured.method == "fx"
    assert any(n.op == "call_module" and n.target == "block.1" for n in captured.graph_module.graph.nodes)
    _check_equal(net, captured)


def test_forced_methods():
    assert capture(Net(nn.ReLU()), (1, 1, 8, 8), method="export").method == "export"
    with pytest.raises(CaptureError, match="torch.fx failed in module 'block.1'"):
        capture(Net(ShapeGate()), (1, 1, 8, 8), method="fx")
    with pytest.raises(CaptureError, match="unknown capture method 'jit'"):
        capture(Net(nn.ReLU()), (1, 1, 8, 8), method="jit")


def test_graph_module_is_taken_as_is():
    gm = fx.symbolic_trace(Net(nn.ReLU()))
    captured = capture(gm, (2, 1, 8, 8))
    assert captured.method == "graph" and captured.graph_module is gm


def test_wrong_input_shape_is_a_clear_error_and_prints_nothing(capfd):
    with pytest.raises(CaptureError, match=r"inputs of shape \(1, 3, 8, 8\) \(node 'conv'\).*--input-shape"):
        capture(Net(nn.ReLU()), (1, 3, 8, 8))
    assert capfd.readouterr().err == ""


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x, scale=1.0):
        return torch.relu(self.conv(x)) * scale


class DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return {"logits": torch.relu(self.conv(x)).mean((2, 3))}


@pytest.mark.parametrize("method", ["fx", "export"])
def test_two_required_inputs_are_refused_in_one_line(method):
    class Both(TwoInputs):
        def forward(self, x, y):
            return super().forward(x) + super().forward(y)

    with pytest.raises(CaptureError, match=r"takes 2 inputs \(x, y\).*one image input") as error:
        capture(Both(), (1, 3, 8, 8), method=method)
    assert "\n" not in str(error.value)


def test_a_second_input_with_a_default_is_fine():
    captured = capture(TwoInputs(), (1, 3, 8, 8), method="fx")
    assert captured.graph_module(torch.randn(2, 3, 8, 8)).shape == (2, 4, 6, 6)


@pytest.mark.parametrize("method", ["fx", "export"])
def test_dict_outputs_are_refused_with_their_keys(method):
    with pytest.raises(CaptureError, match=r"returns a dict \(keys logits\).*scores as a tensor"):
        capture(DictOutput(), (1, 3, 8, 8), method=method)
