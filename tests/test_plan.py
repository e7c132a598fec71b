import json

import pytest
import torch

from sparsify_cnn.errors import InputError
from sparsify_cnn.optimize import optimize_spatial
from sparsify_cnn.passes.spatial import SpatialConfig, spatial_ops
from sparsify_cnn.pipeline import prepare
from sparsify_cnn.plan import Plan, graph_fingerprint
from sparsify_cnn.search.spatial import SearchConfig


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
    with pytest.raises(InputError, match="does not fit this model"):
        Plan.load(path).apply(cq)
    data = json.loads(path.read_text())
    data["masks"]["conv1"]["bits"] = "AAAA"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="corrupt mask"):
        Plan.load(path)
    path.write_text("[]")
    with pytest.raises(InputError, match="not a version 1 sparsify plan"):
        Plan.load(path)
    with pytest.raises(InputError, match="not a readable plan"):
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
    from sparsify_cnn.optimize import optimize_perforation
    from sparsify_cnn.passes.perforation import PerforationConfig, perforated_ops
    from sparsify_cnn.search.perforation import RateSearchConfig
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
    with pytest.raises(InputError, match="does not fit this model"):
        loaded.apply(cq)


def test_ssc_plans_round_trip_and_refuse_other_models(tmp_path, model_files):
    from sparsify_cnn import models
    from sparsify_cnn.optimize import optimize_ssc
    from sparsify_cnn.passes.ssc import SSCConfig, ssc_ops
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
        loaded.apply(cq)
