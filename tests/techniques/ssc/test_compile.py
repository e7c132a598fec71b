import pytest
import torch
from torch import nn

from sparsify_cnn.codegen.compile import compile_graph
from sparsify_cnn.codegen.exporting import export_static
from sparsify_cnn.runtime import load
from sparsify_cnn.techniques.ssc.rewrite import SSCConfig, insert_ssc, ssc_ops
from sparsify_cnn.transform.capture import capture

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2)  # no padding: the 1x1 branch crops its input
        self.conv3 = nn.Conv2d(32, 48, 1)
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(self.conv3(x).mean(dim=(2, 3)))


def test_ssc_layers_compile_with_standard_ops_and_match_torch(tmp_path):
    torch.manual_seed(0)
    model = _Net().eval()
    with torch.no_grad():
        model.bn1.running_mean.normal_()
        model.bn1.running_var.uniform_(0.5, 2)
    gm = capture(model, (2, 3, 12, 12)).graph_module
    config = SSCConfig(per_layer={"conv2": (4, 2), "conv3": (None, 8), "conv1": (1, None)})
    result = insert_ssc(gm, config)
    assert list(result.inserted) == ["conv2", "conv3"] and "g=1" in result.skipped["conv1"]
    assert {name: (op.g, op.p) for name, op in ssc_ops(result.graph_module).items()} == {
        "conv2": (4, 2),
        "conv3": (None, 8),
    }
    program = export_static(result.graph_module, (2, 3, 12, 12))
    assert all(n.target.namespace == "aten" for n in program.graph.nodes if n.op == "call_function")
    images = torch.randn(6, 3, 12, 12)
    compiled = compile_graph(result.graph_module, (2, 3, 12, 12), tmp_path / "artifact", check_inputs=images)
    assert compiled.relative_diff is not None and compiled.relative_diff < 1e-5
    with torch.no_grad():
        expected = result.graph_module(images[:2]).numpy()
    got = load(tmp_path / "artifact")(images[:2].numpy())
    assert abs(got - expected).max() <= 1e-4 * abs(expected).max()
