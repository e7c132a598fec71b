"""One set of named checks decides which convs a technique takes; every technique reads it."""

import pytest
import torch
from torch import nn

from sparsify_cnn.techniques.perforation.rewrite import PERFORATION_CHECKS
from sparsify_cnn.techniques.ssc.choices import SSC_CHECKS
from sparsify_cnn.techniques.stan.rewrite import STAN_CHECKS
from sparsify_cnn.transform.capture import capture
from sparsify_cnn.transform.eligibility import called_once, screen_convs, two_d, zero_padding
from sparsify_cnn.transform.match import SPATIAL_CHECKS


class Shared(nn.Module):
    """One conv module applied twice, as a weight-tied net does."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.tied = nn.Conv2d(8, 8, 3, padding=1)
        self.other = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return torch.relu(self.other(torch.relu(self.tied(torch.relu(self.tied(x))))))


@pytest.mark.parametrize("checks", [SPATIAL_CHECKS, PERFORATION_CHECKS, SSC_CHECKS, STAN_CHECKS],
                         ids=["spatial", "perforation", "ssc", "stan"])  # fmt: skip
@pytest.mark.parametrize("method", ["fx", "export"])
def test_every_technique_refuses_shared_weights_and_other_padding(checks, method):
    gm = capture(Shared().eval(), (1, 3, 8, 8), method=method).graph_module
    taken, skipped = screen_convs(gm, checks)
    # export writes the reflect padding as its own op, before a zero-padded conv that can be taken
    assert [layer.name for layer in taken] == (["stem"] if method == "fx" else ["stem", "other"])
    shared = [why for name, why in skipped.items() if name.startswith("tied")]
    assert shared and all(why in ("its module is called more than once", "its weights are shared with another conv")
                          for why in shared)  # fmt: skip
    if method == "fx":
        assert skipped["other"].startswith("padding mode 'reflect'")


def test_the_first_failed_check_is_the_reason_and_selection_comes_last():
    gm = capture(Shared().eval(), (1, 3, 8, 8), method="fx").graph_module
    checks = (called_once, zero_padding("X"), two_d)
    taken, skipped = screen_convs(gm, checks, selected=lambda layer: layer.name != "stem")
    assert taken == []
    assert skipped == {"stem": "not selected", "tied": "its module is called more than once",
                       "other": "padding mode 'reflect' (X pads with zeros)"}  # fmt: skip


class WeightAlsoRead(nn.Module):
    """A conv whose weight is also read outside the conv (a penalty, a norm): not shared."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) + self.conv.weight.sum())


@pytest.mark.parametrize("checks", [SPATIAL_CHECKS, PERFORATION_CHECKS, SSC_CHECKS, STAN_CHECKS],
                         ids=["spatial", "perforation", "ssc", "stan"])  # fmt: skip
def test_a_weight_read_outside_its_conv_is_not_shared(checks):
    gm = capture(WeightAlsoRead().eval(), (1, 3, 8, 8), method="export").graph_module
    taken, skipped = screen_convs(gm, checks)
    assert [layer.name for layer in taken] == ["conv"], skipped
