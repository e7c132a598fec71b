"""NaN or infinite outputs in the searches: the dense model's are an input error, a candidate's
fail it (never an argmax to class 0 that scores as a guess)."""

import pytest
import torch
from torch import nn

from sparsify_cnn.errors import NonFiniteError
from sparsify_cnn.techniques.perforation.masks import KEPT_FRACTIONS, kept_mask
from sparsify_cnn.techniques.perforation.rewrite import PerforationConfig, insert_perforated_convs, perforated_ops
from sparsify_cnn.techniques.perforation.search import CostModel, FixedMasks, GreedyRateSearch, RateSearchConfig
from sparsify_cnn.techniques.spatial.evaluator import Evaluator
from sparsify_cnn.techniques.spatial.rewrite import insert_spatial_ops
from sparsify_cnn.transform.capture import capture


class Normalised(nn.Module):
    """Divides a ReLU map by its sum: zero predicted everywhere makes 0 / 0."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.head((y / y.sum(dim=(1, 2, 3), keepdim=True)).flatten(1))


class Logarithm(nn.Module):
    """The log of a conv output that is positive wherever computed: a zero-filled skipped
    position gives log 0 = -inf."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 3)
        with torch.no_grad():
            self.a.weight.abs_()
            self.a.bias.fill_(1.0)

    def forward(self, x):
        return self.head(torch.log(self.a(x)).flatten(1))


def _data(model):
    torch.manual_seed(0)
    x = torch.rand(30, 1, 8, 8)
    with torch.no_grad():
        target = model.eval()(x).argmax(1)
    return x, target


def test_a_spatial_candidate_with_nan_outputs_scores_zero():
    torch.manual_seed(0)
    model = Normalised()
    x, target = _data(model)
    gm = insert_spatial_ops(capture(model, (1, 1, 8, 8)).graph_module).graph_module
    ev = Evaluator(gm, x, target, batch_size=8)
    assert ev.dense_accuracy == 1.0 and (target == 0).any()  # NaN argmaxed to 0 would score hits
    nothing_computed = torch.zeros_like(ev.ops["a"].mask)  # every patch predicted zero
    assert ev.evaluate_mask("a", nothing_computed).accuracy == 0.0
    assert ev.evaluate_network({"a": nothing_computed}).accuracy == 0.0
    with torch.no_grad():
        assert gm(x).isnan().all()  # the oracle: what was scored is NaN throughout
    kept = ev.evaluate_mask("a", torch.ones_like(ev.ops["a"].mask))
    assert kept.accuracy == 1.0  # finite candidates are scored as before


def test_a_dense_model_with_nan_outputs_is_an_input_error():
    torch.manual_seed(0)
    model = Normalised()
    x, target = _data(model)
    with torch.no_grad():
        model.head.bias[1] = float("inf")  # inf - inf would follow in a softmax; here: inf logits
    gm = insert_spatial_ops(capture(model, (1, 1, 8, 8)).graph_module).graph_module
    with pytest.raises(NonFiniteError, match=r"the dense model on the 30 calibration images: 30 of 90 values"):
        Evaluator(gm, x, target)
    perforated = insert_perforated_convs(capture(model, (1, 1, 8, 8)).graph_module).graph_module
    with pytest.raises(NonFiniteError, match="dense model on the 30 calibration images"):
        GreedyRateSearch(perforated, x, target, _masks(perforated), RateSearchConfig(epsilon=0.01), CostModel(perforated))


def _masks(gm):
    ops = perforated_ops(gm)
    return FixedMasks({name: [kept_mask("grid", op.out_hw, q, seed=0) for q in KEPT_FRACTIONS] for name, op in ops.items()})


def test_a_perforation_step_with_nan_outputs_is_never_taken():
    torch.manual_seed(0)
    model = Logarithm()
    x, target = _data(model)
    gm = capture(model, (1, 1, 8, 8)).graph_module
    gm = insert_perforated_convs(gm, PerforationConfig(interpolation="zero")).graph_module
    # No accuracy bound: only the NaN rule keeps the search from a step (NaN loss ratios compare
    # false, and the first candidate would be taken).
    config = RateSearchConfig(mask="grid", epsilon=None, speedup=4.0)
    result = GreedyRateSearch(gm, x, target, _masks(gm), config, CostModel(gm)).run()
    assert len(result.points) == 1 and result.points[0].accuracy == 1.0
    assert result.stop_reason == "no next step is admissible (a: NaN or infinite outputs at the next rate)"
    op = perforated_ops(gm)["a"]
    op.set_kept(_masks(gm).mask("a", 1))
    with torch.no_grad():
        assert not gm(x).isfinite().all()  # the oracle: the next rate does give -inf / NaN
