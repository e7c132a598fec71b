"""Damaged plan files: each loads (and then applies, or is refused with InputError) or is refused
with InputError on load; never another exception."""

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsify_cnn.errors import InputError
from sparsify_cnn.pipeline import prepare
from sparsify_cnn.plan import Plan
from sparsify_cnn.techniques.perforation.job import optimize_perforation
from sparsify_cnn.techniques.perforation.rewrite import PerforationConfig
from sparsify_cnn.techniques.perforation.search import RateSearchConfig
from sparsify_cnn.techniques.spatial.rewrite import SpatialConfig, insert_spatial_ops, spatial_ops
from sparsify_cnn.techniques.ssc.job import optimize_ssc
from sparsify_cnn.techniques.ssc.rewrite import SSCConfig

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def plans():
    """The dense model and a plan of each technique from tiny runs on it, as plan.json text."""
    torch.manual_seed(0)
    prepared = prepare("zoo:lenet", data="digits")
    perforation = optimize_perforation(prepared, PerforationConfig(),
                                       RateSearchConfig(mask="grid", epsilon=None, speedup=1.3)).plan  # fmt: skip
    ssc = optimize_ssc(prepared, SSCConfig(per_layer={"conv2": (2, 2)})).plan
    # Spatial: the pass's real masks, thinned at random (a search takes long here).
    gm = insert_spatial_ops(prepared.captured.graph_module, SpatialConfig()).graph_module
    masks = {name: torch.rand(op.mask.shape, generator=torch.Generator().manual_seed(0)) > 0.3
             for name, op in spatial_ops(gm).items()}  # fmt: skip
    spatial = Plan("spatial", SpatialConfig().to_dict(), masks, model=perforation.model)
    texts = {}
    with tempfile.TemporaryDirectory() as folder:
        for plan in (spatial, perforation, ssc):
            path = Path(folder) / "plan.json"
            plan.save(path)
            texts[plan.technique] = path.read_text()
    return prepared, texts


def _load_and_apply(prepared, raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plan.json"
        path.write_bytes(raw)
        try:
            plan = Plan.load(path)
        except InputError:
            return
    for other in (False, True):
        try:
            result = plan.apply(prepared.captured.graph_module, for_other_model=other)
        except InputError:
            continue
        result.graph_module(prepared.data.test.x[:2])  # what applied also runs


@pytest.mark.parametrize("technique", ["spatial", "perforation", "ssc"])
def test_the_undamaged_plans_load_and_apply(plans, technique):
    prepared, texts = plans
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plan.json"
        path.write_text(texts[technique])
        plan = Plan.load(path)
    plan.apply(prepared.captured.graph_module)


@pytest.mark.parametrize("technique", ["spatial", "perforation", "ssc"])
def test_damaged_plans_load_or_are_refused_in_one_line(plans, technique, damaged):
    prepared, texts = plans

    @FUZZ
    @given(st.data())
    def check(data):
        _load_and_apply(prepared, data.draw(damaged(texts[technique])))

    check()


def test_a_plan_of_another_model_is_refused_unless_asked(plans):
    prepared, texts = plans
    data = json.loads(texts["perforation"])
    data["model"]["weights"] = "0" * 16
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plan.json"
        path.write_text(json.dumps(data))
        plan = Plan.load(path)
    with pytest.raises(InputError, match="same graph with other weights .* --plan-for-other-model"):
        plan.apply(prepared.captured.graph_module)
    plan.apply(prepared.captured.graph_module, for_other_model=True)
    del data["model"]["weights"]  # a plan made before weights were recorded: its graph is checked
    plan.model = data["model"]
    plan.apply(prepared.captured.graph_module)
    plan.model = {**data["model"], "graph": "0" * 16}
    with pytest.raises(InputError, match="another graph"):
        plan.apply(prepared.captured.graph_module)
