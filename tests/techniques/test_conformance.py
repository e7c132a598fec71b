"""What every registered technique does alike, run through the registry as the CLI runs it:
identity at "no change", fx and export captures, skip reasons, plan round trip, and a compiled
artifact that matches torch. A technique registered without a case here fails, so a new one
cannot skip the suite."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import fx, nn

from sparsify_cnn import technique as registry
from sparsify_cnn.cli.optimize import optimize_command
from sparsify_cnn.data import load_data
from sparsify_cnn.job import JobContext, run
from sparsify_cnn.model_io import LoadedModel
from sparsify_cnn.pipeline import Prepared
from sparsify_cnn.plan import Plan
from sparsify_cnn.transform.capture import capture

SHAPE = (1, 12, 12)


class Net(nn.Module):
    """conv1 pads by reflection (every technique leaves it dense, saying why); conv2 and conv3
    are what they all take."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        x = nn.functional.max_pool2d(torch.relu(self.conv3(x)), 2)
        return self.head(x.flatten(1))


def _unchanged_spatial(gm):
    from sparsify_cnn.techniques.spatial.rewrite import insert_spatial_ops

    return insert_spatial_ops(gm)  # masks start all ones: every position computed


def _unchanged_perforation(gm):
    from sparsify_cnn.techniques.perforation.rewrite import insert_perforated_convs

    return insert_perforated_convs(gm)  # every position kept


def _unchanged_ssc(gm):
    """SSC(g=1, no 1x1 branch) on every conv it can take is the dense conv (the pass refuses
    it as no gain; the op must still be exact)."""
    from sparsify_cnn.techniques.ssc.choices import ssc_candidates
    from sparsify_cnn.techniques.ssc.rewrite import SSCPassResult, _rewrite
    from sparsify_cnn.transform.rewrite import copy_graph_module, finish_rewrite

    gm = copy_graph_module(gm)
    taken, skipped = ssc_candidates(gm, lambda layer: True)
    inserted = {name: _rewrite(gm, layer, (1, None), "project") for name, layer in taken.items()}
    finish_rewrite(gm)
    return SSCPassResult(gm, inserted=inserted, skipped=skipped)


def _unchanged_stan(gm):
    """STAN layers in eval mode compute the dense conv (they skip only while training)."""
    from sparsify_cnn.techniques.stan.conv import StanContext
    from sparsify_cnn.techniques.stan.entry import EntryStore
    from sparsify_cnn.techniques.stan.rewrite import insert_stan_convs, stan_layers

    shapes, _ = stan_layers(gm)
    result = insert_stan_convs(gm, StanContext(EntryStore(shapes, 4, "stan")))
    result.graph_module.eval()
    return result


@dataclass(frozen=True)
class Case:
    unchanged: callable  # graph module -> PassResult that changes nothing
    options: tuple[str, ...] = ()  # the main job's command-line options (optimize stage)


CASES = {
    "spatial": Case(_unchanged_spatial, ("--epsilon", "0.05")),
    "perforation": Case(_unchanged_perforation, ("--speedup", "1.3", "--mask", "grid")),
    "ssc": Case(_unchanged_ssc, ("--ssc-layer", "*=2,2")),
    "stan": Case(_unchanged_stan),
}
TECHNIQUES = registry.names()
OPTIMIZE = registry.names("optimize")


def test_every_registered_technique_has_a_case():
    assert set(TECHNIQUES) <= set(CASES), f"no conformance case for {sorted(set(TECHNIQUES) - set(CASES))}"


@functools.cache
def _model() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def _captured(method: str) -> fx.GraphModule:
    return capture(_model(), (1, *SHAPE), method=method).graph_module


@pytest.mark.parametrize("method", ["fx", "export"])
@pytest.mark.parametrize("name", TECHNIQUES)
def test_no_change_is_the_identity_on_both_captures(name, method):
    result = CASES[name].unchanged(_captured(method))
    assert {"conv2", "conv3"} <= set(result.inserted)
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(result.graph_module(x), _model()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TECHNIQUES)
def test_a_conv_it_cannot_take_is_skipped_with_its_reason(name):
    result = CASES[name].unchanged(_captured("fx"))
    assert "conv1" not in result.inserted
    assert "padding mode 'reflect'" in result.skipped["conv1"]


@functools.cache
def _job(name: str, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    args = ["model.pt2", "--technique", name, "--out", str(out), *CASES[name].options]
    options = optimize_command.make_context("optimize", args).params  # as the command line gives them
    data = load_data("digits", SHAPE)
    loaded = LoadedModel(_model(), "conformance", "module", SHAPE)
    prepared = Prepared(loaded, capture(_model(), (1, *SHAPE)), data)
    context = JobContext(out_dir=out, checkpoint=out / registry.get(name).checkpoint_name)
    result, write_report = run(name, prepared, options, context)
    return prepared, result, write_report(result, out)


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("conformance")


@pytest.mark.parametrize("name", OPTIMIZE)
def test_the_main_job_changes_the_model_and_reports_it(name, job_dir):
    prepared, result, report = _job(name, job_dir / name)
    assert result.plan.technique == name
    assert result.sparse.total_performed_macs < result.dense.total_macs
    assert registry.get(name).function("summary_line")(report).startswith(name)


@pytest.mark.parametrize("name", OPTIMIZE)
def test_a_plan_round_trips_to_the_same_model(name, job_dir, tmp_path):
    prepared, result, _ = _job(name, job_dir / name)
    result.plan.save(tmp_path / "plan.json")
    again = Plan.load(tmp_path / "plan.json").apply(prepared.captured.graph_module)
    x = prepared.data.test.x[:16]
    with torch.no_grad():
        torch.testing.assert_close(again.graph_module(x), result.graph_module(x), rtol=0, atol=0)


@pytest.mark.tvm
@pytest.mark.parametrize("name", OPTIMIZE)
def test_the_compiled_artifact_matches_torch(name, job_dir, tmp_path):
    from sparsify_cnn.codegen.compile import compile_graph

    prepared, result, _ = _job(name, job_dir / name)
    compiled = compile_graph(result.graph_module, (1, *SHAPE), tmp_path / "artifact",
                             check_inputs=prepared.data.calib.x[:8])  # fmt: skip
    assert compiled.max_abs_diff is not None and compiled.max_abs_diff < 1e-4
