import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify_cnn.techniques.stan.conv import KERNELS, StanContext, StanConv
from sparsify_cnn.techniques.stan.entry import EntryStore

CONVS = {
    "same": lambda: nn.Conv2d(3, 5, 3, padding=1),
    "strided_dilated_nobias": lambda: nn.Conv2d(3, 4, 3, stride=2, dilation=2, bias=False),
    "rect": lambda: nn.Conv2d(3, 6, (3, 2), padding=(1, 0)),
}


def _op(kind: str, variant: str, theta=0.1, coverage=None, kernel="positions", samples=8):
    torch.manual_seed(0)
    conv = CONVS[kind]()
    shape = tuple(conv(torch.zeros(1, 3, 9, 10)).shape[1:])
    context = StanContext(EntryStore({"c": shape}, samples, variant), theta, coverage, kernel)
    op = StanConv(conv, "c", context).train()
    return op, context


def _run(op, context, kind, x, ids):
    context.kind, context.ids = kind, ids
    return op(x)


def _x(seed, n=8):
    return torch.randn(n, 3, 9, 10, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", ["stan", "stan-lite"])
@pytest.mark.parametrize("kind", list(CONVS))
def test_coverage_is_the_fraction_of_entries_under_theta(variant, kind):
    op, context = _op(kind, variant, theta=0.1)
    x, ids = _x(1), torch.arange(8)
    out = _run(op, context, "build", x, ids)
    assert torch.equal(out, op.conv(x))  # an entry-matrix epoch computes the dense conv
    stats = context.take_stats()["c"]
    compared = out.half() <= torch.tensor(0.1).half() if variant == "stan" else out <= 0.1  # STAN compares fp16
    assert stats.entries == out.numel()
    assert stats.covered == int(compared.sum())
    assert 0.2 < stats.covered / stats.entries < 0.8


def test_a_target_coverage_places_theta_at_that_quantile():
    op, context = _op("same", "stan-lite", theta=None, coverage=0.7)
    _run(op, context, "build", _x(1), torch.arange(8))
    stats = context.take_stats()["c"]
    assert stats.covered / stats.entries == pytest.approx(0.7, abs=0.01)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("variant", ["stan", "stan-lite"])
@pytest.mark.parametrize("kind", list(CONVS))
def test_skipping_replays_stored_values_or_writes_zeros(kind, variant, kernel):
    op, context = _op(kind, variant, kernel=kernel)
    ids = torch.arange(8)
    built = _run(op, context, "build", _x(1), ids).detach()
    new_x = _x(2)  # other inputs: covered entries must come from E, the rest from the conv of these
    with torch.no_grad():
        out = _run(op, context, "skip", new_x, ids)
    fresh = op.conv(new_x).detach()
    if variant == "stan":
        covered = built.half() <= torch.tensor(0.1).half()
        expected = torch.where(covered, built.half().float(), fresh)
    else:
        covered = built <= 0.1
        expected = torch.where(covered, torch.zeros(()), fresh)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    computed = context.take_stats()["c"].computed
    if kernel in ("channels", "compiled"):  # the strict kernels compute exactly the uncovered entries
        assert computed == int((~covered).sum())
    elif kernel == "positions":  # positions covered in every channel are not computed
        assert computed == int((~covered).any(1).sum()) * covered.shape[1]


def test_per_sample_rows_survive_shuffling():
    op, context = _op("same", "stan")
    x, ids = _x(1, 8), torch.arange(8)
    built = _run(op, context, "build", x, ids).detach()
    perm = torch.tensor([5, 2, 7, 0, 3])  # another order, a smaller batch
    with torch.no_grad():
        out = _run(op, context, "skip", x[perm], perm)
    covered = built[perm].half() <= torch.tensor(0.1).half()
    assert torch.equal(out[covered], built[perm].half().float()[covered])
    torch.testing.assert_close(out[~covered], built[perm][~covered])


@pytest.mark.parametrize("epoch", ["dense", "build", "skip"])
def test_backward_is_the_dense_convs(epoch):
    op, context = _op("strided_dilated_nobias", "stan-lite", theta=0.0)
    ids = torch.arange(8)
    _run(op, context, "build", _x(1), ids)
    x = _x(2).requires_grad_()
    out = _run(op, context, epoch, x, ids)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    out.backward(grad)
    x2 = x.detach().clone().requires_grad_()
    dense = F.conv2d(x2, op.conv.weight, None, 2, 0, 2)
    weight_grad = torch.autograd.grad(dense, [x2, op.conv.weight], grad)
    torch.testing.assert_close(x.grad, weight_grad[0])
    torch.testing.assert_close(op.conv.weight.grad, weight_grad[1])
    assert context.take_stats()["c"].backward > 0


def test_eval_mode_is_the_plain_conv():
    op, context = _op("same", "stan-lite")
    context.kind = "skip"  # ignored in eval mode
    x = _x(1)
    assert torch.equal(op.eval()(x), op.conv(x))


@pytest.mark.parametrize(
    "c_in, theta, chosen",
    [(32, 10.0, "compiled"), (32, -10.0, "dense"), (3, 10.0, "dense")],  # 288 / 27 multiply-adds per output
)
def test_auto_follows_multiply_adds_per_output_and_the_last_coverage(c_in, theta, chosen):
    conv = nn.Conv2d(c_in, 8, 3, padding=1)
    context = StanContext(EntryStore({"c": (8, 6, 6)}, 4, "stan-lite"), theta, None, "auto")
    op = StanConv(conv, "c", context).train()
    x, ids = torch.randn(4, c_in, 6, 6, generator=torch.Generator().manual_seed(0)), torch.arange(4)
    _run(op, context, "build", x, ids)
    with torch.no_grad():
        out = _run(op, context, "skip", x, ids)
    stats = context.take_stats()["c"]
    assert stats.kernel == chosen
    expected = torch.zeros(()) if theta > 0 else op.conv(x)  # all covered, or none
    torch.testing.assert_close(out, expected.expand_as(out), rtol=1e-5, atol=1e-5)


def test_the_dense_fallback_takes_a_channels_last_input():
    """After a layer whose kernel left its output channels-last, the dense conv's output is
    channels-last too; zeroing from E's bits must still hit the right entries."""
    op, context = _op("same", "stan-lite", kernel="dense")
    ids = torch.arange(8)
    built = _run(op, context, "build", _x(1), ids).detach()
    x = _x(2).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = _run(op, context, "skip", x, ids)
    torch.testing.assert_close(out, op.conv(_x(2)) * ~(built <= 0.1), rtol=1e-5, atol=1e-5)
