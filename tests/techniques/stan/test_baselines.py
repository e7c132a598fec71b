import pytest
import torch
from torch import nn

from sparsify_cnn import models
from sparsify_cnn.techniques.stan.baselines import MePropLinear, top_k_rows
from sparsify_cnn.techniques.stan.rewrite import insert_meprop, strip_training_ops
from sparsify_cnn.transform.capture import capture


@pytest.mark.parametrize("k", [1, 3, 7])
def test_top_k_keeps_exactly_k_gradients_per_sample(k):
    grad = torch.randn(6, 10, generator=torch.Generator().manual_seed(k))
    kept = top_k_rows(grad, k)
    assert ((kept != 0).sum(1) == k).all()
    for row, full in zip(kept, grad):
        threshold = full.abs().sort(descending=True).values[k - 1]
        assert torch.equal(row, torch.where(full.abs() >= threshold, full, torch.zeros(())))
    assert top_k_rows(grad, 0) is grad and top_k_rows(grad, 10) is grad  # no selection, as meProp's code


def test_meprop_linear_backward_uses_the_top_k_output_gradients():
    torch.manual_seed(0)
    linear = nn.Linear(5, 8)
    op = MePropLinear(linear, 3, "fc").train()
    x = torch.randn(4, 5, requires_grad=True)
    dy = torch.randn(4, 8)
    op(x).backward(dy)
    sparse = top_k_rows(dy, 3)
    torch.testing.assert_close(x.grad, sparse @ linear.weight)
    torch.testing.assert_close(linear.weight.grad, sparse.t() @ x.detach())
    torch.testing.assert_close(linear.bias.grad, dy.sum(0))  # the bias sees the full gradient, as in meProp
    assert torch.equal(op.eval()(x), linear(x))


def test_meprop_pass_leaves_the_output_layer_and_strips_back():
    gm = capture(models.build("mlp", hidden=32), (1, 1, 28, 28)).graph_module
    result = insert_meprop(gm, 5)
    assert list(result.inserted) == ["fc1"] and "fc2" in result.skipped
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(result.graph_module.eval()(x), gm(x))
    plain = strip_training_ops(result.graph_module).graph_module
    assert not any(isinstance(m, MePropLinear) for m in plain.modules())
    assert set(plain.state_dict()) == set(gm.state_dict())
