import itertools
import math

import pytest
import torch
from torch import nn

from sparsify_cnn import models
from sparsify_cnn.techniques.ssc.budget import ladder, solve_budget
from sparsify_cnn.techniques.ssc.choices import ssc_candidates
from sparsify_cnn.techniques.ssc.rewrite import SSCConfig, insert_ssc, ssc_ops
from sparsify_cnn.transform.accounting import account
from sparsify_cnn.transform.capture import capture


@pytest.fixture(scope="module")
def graphs():
    torch.manual_seed(0)
    return {name: capture(models.build(name), (1, 3, 32, 32)).graph_module for name in ("vgg19", "resnet32")}


def _no_finer_move_fits(gm, assignment, pointwise_branch=True):
    """No layer moved one rung towards dense keeps the model at or under the target."""
    candidates, _ = ssc_candidates(gm, lambda layer: True)
    dense_total = sum(p.numel() for p in gm.parameters())
    kept = assignment.fraction * dense_total
    for name, layer in candidates.items():
        rungs = ladder(layer, pointwise_branch)
        at = next((i for i, (_, choice) in enumerate(rungs) if choice == assignment.choices.get(name)), 0)
        if at > 0:
            finer = kept + rungs[at - 1][0] - rungs[at][0]
            assert finer > assignment.target * dense_total, f"{name} could move to {rungs[at - 1][1]}"


@pytest.mark.parametrize("model", ["vgg19", "resnet32"])
@pytest.mark.parametrize("target", [0.3, 0.1, 0.05, 0.02])
def test_solver_meets_the_target_as_closely_as_divisibility_allows(graphs, model, target):
    gm = graphs[model]
    assignment = solve_budget(gm, target)
    assert assignment.meets_target and assignment.fraction <= target
    _no_finer_move_fits(gm, assignment)
    assert target - assignment.fraction < 0.01  # many layers: fine granularity
    # The fraction it reports is the one the rewritten model has.
    result = insert_ssc(gm, SSCConfig(target_fraction=target))
    assert result.assignment.choices == assignment.choices
    fraction = account(result.graph_module).total_params / account(gm).total_params
    assert math.isclose(fraction, assignment.fraction, rel_tol=1e-12)


def test_deep_layers_are_pruned_more_than_early_ones(graphs):
    gm = graphs["vgg19"]
    assignment = solve_budget(gm, 0.1)
    ops = ssc_ops(insert_ssc(gm, SSCConfig(target_fraction=0.1)).graph_module)
    ratio = {name: op.ratio for name, op in ops.items()}
    assert "features.0" not in ratio and "features.3" not in ratio  # the first (64-filter) convs stay dense
    last_stage = [ratio[n] for n in ("features.40", "features.43", "features.46", "features.49")]
    assert max(last_stage) < min(r for n, r in ratio.items() if n in ("features.7", "features.10", "features.14"))
    assert assignment.skipped["features.0"].startswith("no SSC choice fits")  # 3 input channels


def test_ladders_strictly_decrease_and_respect_divisibility(graphs):
    candidates, _ = ssc_candidates(graphs["resnet32"], lambda layer: True)
    for pointwise_branch in (True, False):
        for layer in candidates.values():
            rungs = ladder(layer, pointwise_branch)
            assert rungs[0] == (layer.weight.numel(), None)
            assert all(a[0] > b[0] for a, b in itertools.pairwise(rungs))
            for _, (g, p) in rungs[1:]:
                for value in (g, p):
                    assert value is None or (layer.in_channels % value == 0 and layer.out_channels % value == 0)
                if layer.kernel_size == (1, 1):
                    assert g is None
                else:
                    assert (p is None) == (not pointwise_branch) and (p is None or p <= g)


def test_options_restrict_the_choices(graphs):
    gm = graphs["resnet32"]
    without_branch = solve_budget(gm, 0.1, pointwise_branch=False)
    assert all(p is None for g, p in without_branch.choices.values() if g is not None)
    _no_finer_move_fits(gm, without_branch, pointwise_branch=False)
    no_1x1 = solve_budget(gm, 0.1, pointwise_convs=False)
    assert no_1x1.skipped["layer3.0.downsample.0"] == "1x1 conv (pointwise convs are not searched)"
    assert no_1x1.fraction <= 0.1


def test_an_unreachable_target_is_reported_with_every_layer_at_its_last_rung():
    class WideHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 4 * 4, 100)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    gm = capture(WideHead(), (1, 8, 4, 4)).graph_module
    assignment = solve_budget(gm, 0.05)
    assert not assignment.meets_target and assignment.fraction > 0.05
    candidates, _ = ssc_candidates(gm, lambda layer: True)
    assert assignment.choices["conv"] == ladder(candidates["conv"])[-1][1]
