import math

import pytest
import torch
from torch import nn

from sparsify_cnn.ops import OpCost
from sparsify_cnn.report.render import accounting_markdown, human
from sparsify_cnn.transform.accounting import account
from sparsify_cnn.transform.capture import capture


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # 8 x 8 x 8 out of 16 x 16
        self.b = nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False)  # 16 x 8 x 8
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.bn(self.b(torch.relu(self.a(x)))).flatten(1))


# Hand arithmetic: MACs = C_out * H_out * W_out * (C_in / groups) * k * k; linear in * out.
A_MACS = 8 * 8 * 8 * 3 * 3 * 3  # 13,824
B_MACS = 16 * 8 * 8 * (8 // 4) * 3 * 3  # 18,432
FC_MACS = 1024 * 10


@pytest.mark.parametrize("method", ["fx", "export"])
def test_small_model_by_hand(method):
    acc = account(capture(Small(), (2, 3, 16, 16), method=method))
    assert [(row.name, row.kind, row.macs) for row in acc.layers] == [
        ("a", "conv", A_MACS),
        ("b", "conv", B_MACS),
        ("fc", "linear", FC_MACS),
    ]
    assert acc.layer("a").params == 8 * 3 * 9 + 8
    assert acc.layer("b").params == 16 * 2 * 9
    assert acc.layer("fc").params == 1024 * 10 + 10
    assert acc.total_params == 224 + 288 + 10250 + 32  # batch norm's weight and bias count too
    assert acc.total_macs == A_MACS + B_MACS + FC_MACS  # per image, whatever the batch
    assert acc.total_performed_macs == acc.total_macs
    assert acc.layer("b").output_shape == (2, 16, 8, 8)


class HalfConv(nn.Conv2d):
    """A test op with static structure that performs half of a dense conv's MACs."""

    kind = "half-conv"
    layer_name = "half"

    def cost(self, input_shape, output_shape):
        dense = math.prod(output_shape[1:]) * self.in_channels * math.prod(self.kernel_size)
        return OpCost(dense_macs=dense, performed_macs=dense // 2, exact=False)

    def dense_layer(self):
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size)


def test_inserted_ops_report_their_own_cost():
    model = nn.Sequential(HalfConv(2, 4, 3), nn.ReLU())
    acc = account(capture(model, (1, 2, 6, 6)))
    [row] = acc.layers
    assert (row.name, row.kind, row.macs, row.performed_macs, row.exact) == ("half", "half-conv", 4 * 16 * 18, 4 * 16 * 9, False)
    assert row.saved_fraction == pytest.approx(0.5)
    table = accounting_markdown(acc)
    assert "performed MACs" in table and "(measured)" in table and "50.0%" in table


def test_markdown_table_and_dict():
    acc = account(capture(Small(), (1, 3, 16, 16)))
    table = accounting_markdown(acc)
    assert "| `b` | conv | 16x8x8 | 288 | 18,432 |" in table
    assert "performed MACs" not in table  # nothing transformed
    data = acc.to_dict()
    assert data["total_macs"] == acc.total_macs and len(data["layers"]) == 3
    assert human(2_293_000) == "2.29 M" and human(999) == "999"
