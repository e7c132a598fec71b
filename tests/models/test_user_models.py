"""What users bring, as they bring it: torchvision (and timm) models with random weights,
exported the ordinary way (``torch.export.export(model, (one_image,))``: a static batch of one),
saved state dicts with ``--arch`` and whole pickled modules, with label-free data.

This is the tier CI can run in its time: one model per family for loading, a few end-to-end
runs to a compiled artifact. ``benchmarks/zoo.py`` runs the whole zoo through every technique.
"""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sparsify_cnn.cli.main import cli
from sparsify_cnn.model_io import load_model
from sparsify_cnn.transform.capture import capture

torchvision = pytest.importorskip("torchvision", reason="the user-model tier needs torchvision (README test command)")
pytestmark = pytest.mark.zoo

# The smallest model of families whose graphs differ in kind: residual, dense, depthwise with
# ReLU6 or hardswish, channel shuffle (ints in the graph), squeeze-excite, concat branches,
# permutes and layer norms (ConvNeXt), grouped convs (RegNet).
FAMILIES = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1", "googlenet",
            "efficientnet_b0", "densenet121", "regnet_y_400mf", "convnext_tiny", "mnasnet0_5"]  # fmt: skip
SIZE = 32


def _export_static(model: torch.nn.Module, path, size: int = SIZE) -> None:
    program = torch.export.export(model.eval(), (torch.randn(1, 3, size, size),))
    torch.export.save(program, str(path))


def _torchvision(name: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, num_classes=10, **options).eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "x.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((16, 3, SIZE, SIZE)).astype(np.float32))
    return path


@pytest.mark.parametrize("name", FAMILIES)
def test_static_batch_exports_load_and_take_batches(name, tmp_path):
    model = _torchvision(name)
    _export_static(model, tmp_path / "model.pt2")
    captured = capture(load_model(str(tmp_path / "model.pt2")).module, (1, 3, SIZE, SIZE))
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(captured.graph_module(x), model(x), rtol=1e-4, atol=1e-5)


def test_vit_whose_reshapes_fold_the_batch_into_heads_and_tokens_takes_batches(tmp_path):
    """ViT's attention folds the batch into the heads in one reshape and into the tokens in
    another; one image's shapes ([5, 1, 12, 64] to [5, 768]) cannot tell which, so the
    generalisation keeps the reading under which the rest of the graph runs."""
    model = _torchvision("vit_b_16", image_size=SIZE)
    _export_static(model, tmp_path / "vit.pt2")
    loaded = load_model(str(tmp_path / "vit.pt2"))
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x), rtol=1e-4, atol=1e-5)


def _main_job(model, images, out, *options):
    return CliRunner().invoke(cli, [str(model), "--data", str(images), "--out", str(out), "--no-crossover", *options])


def _artifact_reproduces_rewritten_model(out, images):
    from sparsify_cnn import runtime

    artifact = runtime.load(out / "artifact")
    rewritten = load_model(str(out / "model.pt2")).module
    batch = artifact.input["shape"][0]
    x = np.load(images)["x"][:batch]
    with torch.no_grad():
        expected = rewritten(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(artifact(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("technique, options", [("spatial", ["--mode", "uniform_layer"]),
                                                ("perforation", ["--epsilon", "0.05"]),
                                                ("ssc", ["--target-params", "0.5"])])  # fmt: skip
def test_main_job_compiles_an_artifact_that_reproduces_the_rewritten_model(technique, options, tmp_path, images):
    _export_static(_torchvision("squeezenet1_1"), tmp_path / "model.pt2")  # the smallest compile of the zoo
    out = tmp_path / "out"
    result = _main_job(tmp_path / "model.pt2", images, out, "--technique", technique, *options)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["metric"] == "agreement"  # label-free data
    _artifact_reproduces_rewritten_model(out, images)


def test_relu6_nets_search_through_the_main_job(tmp_path, images):
    """MobileNetV2: ReLU6 after every expansion and depthwise conv (its kernels are compiled and
    checked in tests/techniques/spatial/test_lowering.py)."""
    _export_static(_torchvision("mobilenet_v2"), tmp_path / "model.pt2")
    result = _main_job(tmp_path / "model.pt2", images, tmp_path / "out", "--mode", "uniform_layer", "--target", "none")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["layers"]) > 30  # every conv that feeds a ReLU6 has its op


def test_channel_shuffle_searches_without_batching_graph_ints(tmp_path, images):
    """ShuffleNetV2 reads the batch size inside the graph: the search must not batch it."""
    model = _torchvision("shufflenet_v2_x0_5")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    result = _main_job(tmp_path / "weights.pt", images, tmp_path / "out", "--arch", "torchvision.models:shufflenet_v2_x0_5",
                       "--input-shape", f"1,3,{SIZE},{SIZE}", "--mode", "uniform_layer", "--target", "none")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "of MACs saved on the test split" in result.output


def test_a_net_without_relu_is_refused_in_one_short_line(tmp_path, images):
    _export_static(_torchvision("efficientnet_b0"), tmp_path / "model.pt2")  # SiLU throughout
    result = _main_job(tmp_path / "model.pt2", images, tmp_path / "out", "--target", "none")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error:") and len(lines[-1]) < 300 and "--technique perforation" in lines[-1]
    assert "Traceback" not in result.output


def test_a_trusted_pickled_module_and_a_state_dict_with_arch(tmp_path):
    model = _torchvision("mnasnet0_5")
    torch.save(model, tmp_path / "whole.pt")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(x)
        for loaded in (load_model(str(tmp_path / "whole.pt"), trust_pickle=True),
                       load_model(str(tmp_path / "weights.pt"), arch="torchvision.models:mnasnet0_5")):  # fmt: skip
            torch.testing.assert_close(loaded.module.eval()(x), expected)


def test_timm_models_exported_as_users_do(tmp_path, images):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=10).eval()
    _export_static(model, tmp_path / "model.pt2")
    result = _main_job(tmp_path / "model.pt2", images, tmp_path / "out", "--mode", "uniform_layer", "--target", "none")
    assert result.exit_code == 0, result.output
