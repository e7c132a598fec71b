import json

import pytest
import torch

from sparsify_cnn.errors import InputError
from sparsify_cnn.pipeline import prepare
from sparsify_cnn.plan import Plan, graph_fingerprint
from sparsify_cnn.techniques.spatial.job import optimize_spatial
from sparsify_cnn.techniques.spatial.rewrite import SpatialConfig, spatial_ops
from sparsify_cnn.techniques.spatial.search import SearchConfig


@pytest.fixture(scope="module")
def optimized(model_files):
    prepared = prepare(str(model_files["pt2"]), data="digits")
    return prepared, optimize_spatial(prepared, search=SearchConfig(mode="uniform_filter", epsilon=0.01, top_m=2))


def test_plan_round_trips_and_reapplies_to_the_identical_graph(tmp_path, optimized, model_files):
    prepared, result = optimized
    path = tmp_path / "plan.json"
    result.plan.save(path)
    loaded = Plan.load(path)
    assert loaded.masks.keys() == result.plan.masks.keys()
    assert all(torch.equal(loaded.masks[k], result.plan.masks[k].bool()) for k in loaded.masks)
    assert loaded.search["epsilon"] == 0.01 and loaded.search["metric"] == "top1"
    assert loaded.data["fingerprint"] == prepared.data.fingerprint()
    assert set(loaded.versions) == {"sparsify_cnn", "torch", "apache-tvm"}
    fresh = prepare(str(model_files["pt2"])).captured.graph_module  # a new capture of the same model
    assert loaded.model["graph"] == graph_fingerprint(fresh)
    applied = loaded.apply(fresh).graph_module
    assert applied.code == result.graph_module.code
    for name, op in spatial_ops(applied).items():
        assert torch.equal(op.mask, spatial_ops(result.graph_module)[name].mask)
    x = prepared.data.test.x[:50]
    assert torch.equal(applied(x), result.graph_module(x))


def test_result_scores_both_splits_with_the_metric(optimized):
    _, result = optimized
    assert set(result.scores) == {"calib", "test"}
    calib = result.scores["calib"]
    assert calib["dense"].value - calib["sparse"].value <= 0.01 + 1e-9
    assert result.sparse.total_performed_macs < result.dense.total_macs


def test_plans_that_do_not_fit_or_are_broken(tmp_path, optimized):
    _, result = optimized
    path = tmp_path / "plan.json"
    result.plan.save(path)
    from sparsify_cnn import models
    from sparsify_cnn.transform.capture import capture

    cq = capture(models.build("cq"), (1, 3, 32, 32)).graph_module
    with pytest.raises(InputError, match="made for another graph"):
        Plan.load(path).apply(cq)
    with pytest.raises(InputError, match="does not fit this model"):
        Plan.load(path).apply(cq, for_other_model=True)
    data = json.loads(path.read_text())
    data["masks"]["conv1"]["bits"] = "AAAA"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="corrupt mask for layer 'conv1'"):
        Plan.load(path)
    path.write_text("[]")
    with pytest.raises(InputError, match="the top level must be an object, not a list"):
        Plan.load(path)
    with pytest.raises(InputError, match="does not exist"):
        Plan.load(tmp_path / "missing.json")


def test_label_free_data_searches_by_agreement(tmp_path, model_files, digits28):
    import numpy as np

    np.savez(tmp_path / "free.npz", x=digits28.test.x.numpy())
    prepared = prepare(str(model_files["pt2"]), data=str(tmp_path / "free.npz"))
    result = optimize_spatial(prepared, SpatialConfig(), SearchConfig(mode="uniform_layer", epsilon=0.02))
    assert result.metric == "agreement"
    assert result.scores["calib"]["dense"].value == 1.0
    assert result.scores["calib"]["sparse"].value >= 0.98 - 1e-9


def test_perforation_plans_round_trip_and_refuse_other_models(tmp_path, model_files):
    from sparsify_cnn import models
    from sparsify_cnn.techniques.perforation.job import optimize_perforation
    from sparsify_cnn.techniques.perforation.rewrite import PerforationConfig, perforated_ops
    from sparsify_cnn.techniques.perforation.search import RateSearchConfig
    from sparsify_cnn.transform.capture import capture

    prepared = prepare(str(model_files["pt2"]), data="digits")
    result = optimize_perforation(prepared, PerforationConfig(interpolation="barycentric"),
                                  RateSearchConfig(mask="grid", epsilon=None, speedup=1.3))  # fmt: skip
    path = tmp_path / "plan.json"
    result.plan.save(path)
    loaded = Plan.load(path)
    assert loaded.technique == "perforation" and loaded.config["interpolation"] == "barycentric"
    applied = loaded.apply(prepare(str(model_files["pt2"])).captured.graph_module).graph_module
    for name, op in perforated_ops(applied).items():
        assert torch.equal(op.kept, perforated_ops(result.graph_module)[name].kept)
        assert torch.equal(op.interp_weight, perforated_ops(result.graph_module)[name].interp_weight)
    x = prepared.data.test.x[:20]
    assert torch.equal(applied(x), result.graph_module(x))
    cq = capture(models.build("cq"), (1, 3, 32, 32)).graph_module
    with pytest.raises(InputError, match="made for another graph"):
        loaded.apply(cq)
    with pytest.raises(InputError, match="does not fit this model"):
        loaded.apply(cq, for_other_model=True)


def test_ssc_plans_round_trip_and_refuse_other_models(tmp_path, model_files):
    from sparsify_cnn import models
    from sparsify_cnn.techniques.ssc.job import optimize_ssc
    from sparsify_cnn.techniques.ssc.rewrite import SSCConfig, ssc_ops
    from sparsify_cnn.transform.capture import capture

    prepared = prepare(str(model_files["pt2"]), data="digits")
    result = optimize_ssc(prepared, SSCConfig(per_layer={"conv2": (5, 2)}, init="zero"))
    path = tmp_path / "plan.json"
    result.plan.save(path)
    loaded = Plan.load(path)
    assert loaded.technique == "ssc" and loaded.masks == {} and loaded.config["init"] == "zero"
    assert loaded.search["assignment"]["source"] == result.assignment.source
    applied = loaded.apply(prepare(str(model_files["pt2"])).captured.graph_module).graph_module
    op = ssc_ops(applied)["conv2"]
    assert (op.g, op.p) == (5, 2)
    x = prepared.data.test.x[:20]
    assert torch.equal(applied(x), result.graph_module(x))
    cq = capture(models.build("cq"), (1, 3, 32, 32)).graph_module  # cq's conv2 has 32 channels: g=5 cannot divide them
    with pytest.raises(InputError, match="the plan does not fit this model: conv2: "):
        loaded.apply(cq, for_other_model=True)


def _retrained(gm):
    """``gm`` after a little more training: the same graph, other weights."""
    import copy

    other = copy.deepcopy(gm)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    return other


def test_the_weights_digest_tells_a_retrained_model_apart(optimized, model_files):
    from sparsify_cnn.plan import weights_digest

    prepared, result = optimized
    gm = prepared.captured.graph_module
    again = prepare(str(model_files["pt2"])).captured.graph_module  # another load and capture of the file
    assert result.plan.model["weights"] == weights_digest(gm) == weights_digest(again)
    retrained = _retrained(gm)
    assert graph_fingerprint(retrained) == graph_fingerprint(gm)
    assert weights_digest(retrained) != weights_digest(gm)
    with pytest.raises(InputError, match="same graph with other weights .*--plan-for-other-model"):
        result.plan.apply(retrained)
    applied = result.plan.apply(retrained, for_other_model=True).graph_module
    assert set(spatial_ops(applied)) == set(result.plan.masks)


def test_a_retrained_model_does_not_resume_the_search_of_the_old_one(tmp_path):
    from sparsify_cnn.techniques.perforation.job import optimize_perforation
    from sparsify_cnn.techniques.perforation.search import RateSearchConfig

    torch.manual_seed(0)
    prepared = prepare("zoo:lenet", data="digits")
    search, checkpoint = RateSearchConfig(mask="grid", epsilon=None, speedup=1.2), tmp_path / "search.json"
    first = optimize_perforation(prepared, search=search, checkpoint=checkpoint)
    assert json.loads(checkpoint.read_text())["records"]
    resumed = optimize_perforation(prepared, search=search, checkpoint=checkpoint)
    assert resumed.checkpoint_resumed > 0 and resumed.plan.masks.keys() == first.plan.masks.keys()
    with torch.no_grad():
        next(prepared.captured.graph_module.parameters()).add_(1e-3)  # retrained in place
    with pytest.raises(InputError, match="written by another search"):
        optimize_perforation(prepared, search=search, checkpoint=checkpoint)


def test_the_cli_refuses_a_plan_of_another_model(tmp_path, optimized, trained_lenet):
    from click.testing import CliRunner

    from sparsify_cnn.cli.main import cli
    from sparsify_cnn.model_io import save_program

    _, result = optimized
    result.plan.save(tmp_path / "plan.json")
    save_program(_retrained(trained_lenet), (1, 28, 28), tmp_path / "retrained.pt2")
    plan = ["--plan", str(tmp_path / "plan.json")]
    refused = CliRunner().invoke(cli, ["compile", str(tmp_path / "retrained.pt2"), *plan, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "same graph with other weights" in refused.output, refused.output
    assert "--plan-for-other-model" in refused.output and not (tmp_path / "a").exists()
    bench = ["bench", str(tmp_path / "retrained.pt2"), *plan, "--json", str(tmp_path / "bench.json")]
    refused = CliRunner().invoke(cli, bench)
    assert refused.exit_code == 2 and "same graph with other weights" in refused.output, refused.output
    for command in ("compile", "bench"):  # the override (applying, then compiling or timing, takes long here)
        assert "--plan-for-other-model" in CliRunner().invoke(cli, [command, "--help"]).output
