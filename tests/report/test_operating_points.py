"""operating_points.png's star is the verified plan: the one in plan.json, scored after the
crossover rule, with the same figures as report.json (a spatial and a perforation job, with
fixed layer times that leave conv2 dense after the search chose it)."""

import json

import pytest

from sparsify_cnn.bench.crossover import LayerTimer
from sparsify_cnn.codegen import measure
from sparsify_cnn.evaluate import evaluate
from sparsify_cnn.pipeline import prepare
from sparsify_cnn.plan import Plan
from sparsify_cnn.techniques.perforation.job import optimize_perforation
from sparsify_cnn.techniques.perforation.report import operating_points_figure as perforation_figure
from sparsify_cnn.techniques.perforation.report import write_report as write_perforation_report
from sparsify_cnn.techniques.perforation.search import RateSearchConfig
from sparsify_cnn.techniques.spatial.job import optimize_spatial
from sparsify_cnn.techniques.spatial.report import operating_points_figure, write_report
from sparsify_cnn.techniques.spatial.rewrite import spatial_ops
from sparsify_cnn.techniques.spatial.search import SearchConfig
from sparsify_cnn.transform.accounting import account


@pytest.fixture
def conv2_not_faster(monkeypatch):
    """Fixed layer times: the Spatial conv1 (one input channel) beats its dense layer, conv2 does not."""

    def measure_ms(module, input_shape, *args, **kwargs):
        if type(module).__name__ in ("Conv2d", "DenseBlock"):
            return 1.0
        return 0.5 if input_shape[1] == 1 else 2.0

    monkeypatch.setattr(measure, "measure_ms", measure_ms)


def _star(fig):
    (ax,) = fig.axes
    (line,) = [line for line in ax.get_lines() if line.get_label().startswith("verified plan")]
    return float(line.get_xdata()[0]), float(line.get_ydata()[0])


def test_spatial_star_and_report_are_the_verified_plan(tmp_path, model_files, conv2_not_faster):
    prepared = prepare(str(model_files["pt2"]), data="digits")
    result = optimize_spatial(prepared, search=SearchConfig(mode="uniform_layer", epsilon=0.02, top_m=2),
                              crossover=LayerTimer(cache=tmp_path / "timings.json"))  # fmt: skip
    assert result.crossover.left_dense == ["conv2"]
    write_report(result, tmp_path)
    result.plan.save(tmp_path / "plan.json")
    report = json.loads((tmp_path / "report.json").read_text())
    verified, chosen = report["verified"], report["search"]["chosen"]
    # The search chose conv2's savings too; the crossover rule took them back before verification.
    assert verified["calib_macs_saved"] < chosen["calib_macs_saved"]

    # Oracle: the rewritten model scored and counted on calib afresh.
    gm, calib = result.graph_module, prepared.data.calib
    for op in spatial_ops(gm).values():
        op.reset_stats()
    accuracy = evaluate(gm, calib, metric="top1").value
    saved = account(prepared.captured.graph_module).total_macs - account(gm).total_performed_macs
    assert verified["calib_accuracy"] == accuracy and verified["calib_macs_saved"] == saved
    assert report["macs"]["saved_calib"] == saved
    plan = Plan.load(tmp_path / "plan.json")
    assert plan.results["calib"]["sparse"] == accuracy and plan.results["calib_macs_saved"] == saved

    x, y = _star(operating_points_figure(report))
    assert x == pytest.approx(100 * saved / report["macs"]["dense"])
    assert y == pytest.approx(100 * accuracy)
    assert (tmp_path / "operating_points.png").stat().st_size > 0


def test_perforation_star_and_report_are_the_verified_plan(tmp_path, model_files, conv2_not_faster):
    prepared = prepare(str(model_files["pt2"]), data="digits")
    search = RateSearchConfig(mask="grid", speedup=1.8, epsilon=None)
    result = optimize_perforation(prepared, search=search, crossover=LayerTimer(cache=tmp_path / "timings.json"))
    assert result.crossover.left_dense == ["conv2"]
    write_perforation_report(result, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    verified, last_step = report["verified"], report["operating_points"][-1]
    assert verified["macs_speedup"] < last_step["macs_speedup"]  # the rule undid conv2's steps

    dense_gm, gm, calib = prepared.captured.graph_module, result.graph_module, prepared.data.calib
    accuracy = evaluate(gm, calib, metric="top1").value
    loss = 100 * (evaluate(dense_gm, calib, metric="top1").value - accuracy)
    speedup = account(dense_gm).total_macs / account(gm).total_performed_macs
    assert verified["calib_accuracy"] == accuracy and verified["macs_speedup"] == pytest.approx(speedup)
    x, y = _star(perforation_figure(report))
    assert (x, y) == (pytest.approx(speedup), pytest.approx(loss))
