import pytest
import torch
from torch import nn

from sparsify_cnn.errors import InputError
from sparsify_cnn.techniques.stan.conv import StanContext, StanConv
from sparsify_cnn.techniques.stan.entry import EntryStore
from sparsify_cnn.techniques.stan.rewrite import (
    InsertedDropout,
    StanConfig,
    insert_conv_dropout,
    insert_dropout_before,
    insert_stan_convs,
    stan_layers,
    strip_training_ops,
)
from sparsify_cnn.transform.capture import capture


def _stan(gm, patterns=()):
    shapes, _ = stan_layers(gm, patterns)
    context = StanContext(EntryStore(shapes, 4, "stan-lite"))
    return insert_stan_convs(gm, context, patterns), context


def test_stan_layers_selects_by_glob_and_says_why_it_skips():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.ReLU())
    gm = capture(net, (1, 3, 8, 8)).graph_module
    shapes, skipped = stan_layers(gm)
    assert shapes == {"0": (4, 6, 6)} and "grouped conv" in skipped["1"]
    shapes, skipped = stan_layers(gm, ["1*"])
    assert shapes == {} and skipped["0"] == "not selected"


def test_insert_and_strip_keep_the_function(toy_graph):
    result, _ = _stan(toy_graph, ["conv2"])
    assert result.inserted == {"conv2": "stan_conv2"} and result.skipped == {"conv1": "not selected"}
    gm = result.graph_module
    assert isinstance(gm.get_submodule("stan_conv2"), StanConv)
    x = torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(gm.eval()(x), toy_graph(x))
        plain = strip_training_ops(gm).graph_module
        assert torch.equal(plain(x), toy_graph(x))
    assert set(plain.state_dict()) == set(toy_graph.state_dict())
    assert not any(isinstance(m, StanConv) for m in plain.modules())


def test_the_entry_matrix_must_match_the_selection(toy_graph):
    shapes, _ = stan_layers(toy_graph, ["conv1"])
    with pytest.raises(InputError, match="entry matrix holds layers"):
        insert_stan_convs(toy_graph, StanContext(EntryStore(shapes, 4, "stan")), ["conv2"])


def test_stan_on_an_exported_graph(toy_module):
    net = toy_module
    gm = capture(net, (1, 3, 12, 12), method="export").graph_module
    result, _ = _stan(gm)
    assert set(result.inserted) == {"conv1", "conv2"}
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(result.graph_module(x), net.eval()(x))
    plain = strip_training_ops(result.graph_module).graph_module
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x))


def test_conv_dropout_and_classifier_dropout(toy_graph):
    result = insert_conv_dropout(toy_graph, 0.5)
    assert set(result.inserted) == {"conv1", "conv2"}
    gm = insert_dropout_before(result.graph_module, "fc2", 0.3).graph_module
    drops = [m for m in gm.modules() if isinstance(m, InsertedDropout)]
    assert sorted(d.p for d in drops) == [0.3, 0.5, 0.5]
    x = torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(gm.eval()(x), toy_graph(x))
        torch.manual_seed(1)
        assert not torch.equal(gm.train()(x), toy_graph(x))
    plain = strip_training_ops(gm).graph_module
    assert not any(isinstance(m, InsertedDropout) for m in plain.modules())
    with pytest.raises(InputError, match="no layer 'fc9'"):
        insert_dropout_before(toy_graph, "fc9", 0.3)
    with pytest.raises(InputError, match="rate must be in"):
        insert_conv_dropout(toy_graph, 1.0)


def test_a_models_own_dropout_stays():
    from sparsify_cnn import models

    gm = capture(models.build("mlp", hidden=16, dropout=0.2), (1, 1, 28, 28)).graph_module
    plain = strip_training_ops(insert_conv_dropout(gm, 0.5).graph_module).graph_module
    assert [type(m) for m in plain.modules()].count(nn.Dropout) == 1


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"variant": "fast"}, "unknown STAN variant"),
        ({"theta": None}, "exactly one of theta"),
        ({"theta": 1.0, "coverage": 0.5}, "exactly one of theta"),
        ({"theta": None, "coverage": 1.0}, "coverage must be in"),
        ({"kernel": "magic"}, "unknown STAN kernel"),
        ({"period": 0}, "period Z"),
    ],
)
def test_config_validation(kwargs, fragment):
    with pytest.raises(InputError, match=fragment):
        StanConfig(**kwargs)


def test_config_round_trip():
    config = StanConfig("stan-lite", theta=None, coverage=0.6, pre_epochs=2, period=3, layers=("conv*",))
    assert StanConfig.from_dict(config.to_dict()) == config
