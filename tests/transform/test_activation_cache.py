import pytest
import torch
from torch import fx, nn

from sparsify_cnn.errors import InputError
from sparsify_cnn.transform.activation_cache import ActivationCache
from sparsify_cnn.transform.suffix import Recorder


class Chain(nn.Module):
    """Four 4-channel 6x6 maps (576 bytes an image each), then a head."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(1 if i == 0 else 4, 4, 3, padding=1) for i in range(4))
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.head(x.flatten(1))


def _setup():
    torch.manual_seed(0)
    gm = fx.symbolic_trace(Chain().eval())
    relus = [n for n in gm.graph.nodes if n.target is torch.relu]
    needs = {f"conv{i}": [relus[i]] + ([relus[0]] if i == 3 else []) for i in range(4)}  # conv3 also reads map 0
    return gm, torch.randn(10, 1, 6, 6), needs


def test_values_are_the_same_whatever_the_budget():
    gm, x, needs = _setup()
    whole = ActivationCache(gm, x, needs, batch_size=4)
    assert len(whole.groups) == 1 and whole.passes == 1 and whole.peak_bytes == 4 * 576 * 10
    torch.testing.assert_close(whole.logits, gm(x))
    tight = ActivationCache(gm, x, needs, batch_size=4, max_bytes=2 * 576 * 10)
    assert tight.groups == [["conv0", "conv1"], ["conv2"], ["conv3"]]  # conv3 needs its map and map 0
    torch.testing.assert_close(tight.logits, whole.logits)
    for key in needs:
        assert not tight.holds(key) or key in tight.groups[0]
        for got, expected in zip(tight.values(key), whole.values(key), strict=True):
            assert torch.equal(got, expected)
    assert tight.passes == 3 and tight.peak_bytes == 2 * 576 * 10
    tight.values("conv0")  # going back records its group again
    assert tight.passes == 4 and tight.holds("conv1") and not tight.holds("conv3")


def test_a_layer_over_the_budget_is_refused_in_one_line():
    gm, x, needs = _setup()
    with pytest.raises(InputError, match=r"--max-cache-memory 8.00 KiB is less than layer conv3 needs on 10 "
                                         r"calibration images \(11.25 KiB\)"):  # fmt: skip
        ActivationCache(gm, x, needs, batch_size=4, max_bytes=8 * 1024)


def test_a_recorder_stops_at_its_last_node():
    gm, x, _ = _setup()
    relus = [n for n in gm.graph.nodes if n.target is torch.relu]
    kept = Recorder(gm, {relus[1]}, until=relus[1]).run(x)
    assert list(kept) == [relus[1]]  # no output: the head never ran
    assert set(Recorder(gm, {relus[1]}).run(x)) == {relus[1], next(n for n in gm.graph.nodes if n.op == "output")}
