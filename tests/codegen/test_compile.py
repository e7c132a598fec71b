import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from sparsify_cnn import models
from sparsify_cnn.codegen.compile import TOLERANCE, compile_graph
from sparsify_cnn.codegen.importer import UnsupportedOpsError, unsupported_message
from sparsify_cnn.errors import InputError
from sparsify_cnn.runtime import ArtifactError, load
from sparsify_cnn.techniques.spatial.op import diagonal, tile
from sparsify_cnn.techniques.spatial.rewrite import insert_spatial_ops, spatial_ops
from sparsify_cnn.transform.capture import capture

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out

SMALL = {"alexnet": (3, 64, 64), "resnet18": (3, 32, 32), "resnet50": (3, 32, 32)}
COMPILED_ZOO = [name for name in models.zoo_names() if name != "resnet34"]  # resnet18's layers, more of them


@pytest.mark.parametrize("name", COMPILED_ZOO)
def test_every_zoo_model_compiles_and_matches_torch(name, tmp_path):
    torch.manual_seed(0)
    entry = models.get_entry(name)
    shape = SMALL.get(name, entry.input_shape)
    model = entry.factory().eval()
    images = torch.randn(4, *shape)
    result = compile_graph(capture(model, (2, *shape)).graph_module, (2, *shape), tmp_path, check_inputs=images)
    assert result.relative_diff <= TOLERANCE
    compiled = load(tmp_path)
    with torch.no_grad():
        expected = model(images[:2]).numpy()
    np.testing.assert_allclose(compiled(images[:2].numpy()), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.fixture(scope="module", params=["dense", "sparsified"])
def lenet_artifact(request, tmp_path_factory, trained_lenet, digits28):
    """The demo model compiled dense, and with diagonal Spatial masks (a plan's kind of graph)."""
    out = tmp_path_factory.mktemp("lenet") / "artifact"  # a folder of its own: it holds only the artifact
    gm = capture(trained_lenet, (1, 1, 28, 28), method="export").graph_module  # the .pt2 form
    if request.param == "sparsified":
        gm = insert_spatial_ops(gm).graph_module
        for op in spatial_ops(gm).values():
            op.set_mask(tile(diagonal(2), op.mask.shape[0], *op.out_hw, 2))
    compile_graph(gm, (1, 1, 28, 28), out, check_inputs=digits28.calib.x[:16])
    out.parent.joinpath("reference.txt").write_text(" ".join(str(int(v)) for v in gm(digits28.test.x).argmax(1)))
    return out


def test_fresh_process_loads_without_torch_and_reproduces_predictions(lenet_artifact, trained_lenet, digits28):
    x = digits28.test.x.numpy()
    np.save(lenet_artifact.parent / "test_x.npy", x)
    script = (
        "import sys, numpy as np\n"
        "from sparsify_cnn.runtime import load\n"
        f"model = load({str(lenet_artifact)!r})\n"
        f"x = np.load({str(lenet_artifact.parent / 'test_x.npy')!r})\n"
        "print(' '.join(str(int(model(x[i:i+1]).argmax())) for i in range(len(x))))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    predictions = [int(v) for v in done.stdout.split()]
    expected = [int(v) for v in (lenet_artifact.parent / "reference.txt").read_text().split()]
    assert predictions == expected


def test_manifest_records_what_a_deployment_needs(lenet_artifact):
    manifest = json.loads((lenet_artifact / "manifest.json").read_text())
    assert manifest["inputs"][0] == {"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32"}
    assert manifest["outputs"][0]["shape"] == [1, 10]
    assert manifest["target"]["kind"] == "llvm" and manifest["target"]["num-cores"] >= 1
    assert set(manifest["files"]) == {"model.so", "params.npz"}
    assert set(manifest["versions"]) == {"sparsify_cnn", "torch", "apache-tvm"}
    assert manifest["check"]["images"] == 16 and manifest["check"]["relative_diff"] <= TOLERANCE


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_artifact_problems_are_clear_errors(lenet_artifact, tmp_path):
    model = load(lenet_artifact)
    with pytest.raises(ArtifactError, match=r"shape \(2, 1, 28, 28\); the artifact was compiled for \(1, 1, 28, 28\)"):
        model(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(ArtifactError, match="dtype float64; the artifact takes float32"):
        model(np.zeros((1, 1, 28, 28)))
    altered = _copy(lenet_artifact, tmp_path / "altered")
    with open(altered / "params.npz", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match="params.npz' was altered"):
        load(altered)
    missing = _copy(lenet_artifact, tmp_path / "missing")
    (missing / "model.so").unlink()
    with pytest.raises(ArtifactError, match="missing model.so"):
        load(missing)
    for key, value, message in [
        ("versions", {"apache-tvm": "0.1"}, "compiled with apache-tvm 0.1"),
        ("cpu_features", ["not_a_cpu_feature"], "needs CPU features this machine lacks: not_a_cpu_feature"),
        ("target", {"kind": "cuda", "arch": "sm_90"}, "no CUDA GPU"),
    ]:
        edited = _copy(lenet_artifact, tmp_path / key)
        manifest = json.loads((edited / "manifest.json").read_text())
        manifest[key] = value
        (edited / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError, match=message):
            load(edited)
    with pytest.raises(ArtifactError, match="is not a sparsify artifact"):
        load(tmp_path)


def test_unsupported_ops_are_listed_together_in_one_short_line(tmp_path):
    class Odd(nn.Module):
        def forward(self, x):
            return torch.special.bessel_j0(x) + torch.special.bessel_j1(x) * torch.special.bessel_j0(x)

    with pytest.raises(UnsupportedOpsError) as error:
        compile_graph(capture(Odd(), (1, 3)).graph_module, (1, 3), tmp_path)
    assert str(error.value) == ("TVM cannot lower 3 node(s) of the graph: 2x special_bessel_j0.default (e.g. node "
                                "special_bessel_j0), 1x special_bessel_j1.default (e.g. node special_bessel_j1)")  # fmt: skip
    many = unsupported_message({f"op{i}": [f"n{i}"] * 30 for i in range(9)})
    assert many.endswith("and 5 other op(s)") and len(many) < 200


def test_a_slice_filled_in_place_compiles(tmp_path):
    """Swin builds its attention mask by filling slices of a zeros tensor in place (aten.fill_):
    decomposed, as the frontend translates it, that is a slice_scatter."""

    class FillsSlices(nn.Module):
        def forward(self, x):
            mask = torch.zeros(1, 1, 4, 4)
            mask[:, :, :2, 1:] = 1.0
            mask[:, :, 3:, :] = -2.0
            return x * mask

    model = FillsSlices()
    images = torch.randn(2, 3, 4, 4)
    result = compile_graph(capture(model, (2, 3, 4, 4), method="export").graph_module, (2, 3, 4, 4), tmp_path,
                           check_inputs=images)  # fmt: skip
    assert result.relative_diff <= TOLERANCE
    np.testing.assert_allclose(load(tmp_path)(images.numpy()), model(images).numpy(), rtol=1e-6)


def test_cuda_artifact_of_the_sparsified_demo_builds_here_with_its_source(tmp_path):
    gm = insert_spatial_ops(capture(models.build("lenet").eval(), (1, 1, 28, 28)).graph_module).graph_module
    for op in spatial_ops(gm).values():
        op.set_mask(tile(diagonal(2), op.mask.shape[0], *op.out_hw, 2))
    result = compile_graph(gm, (1, 1, 28, 28), tmp_path, target="cuda:sm_80")
    assert result.max_abs_diff is None  # no GPU here: built, not run
    source = (tmp_path / "model.cu").read_text()
    assert "__global__" in source and "sparsify_spatial_conv" in source
    assert "model.cu" in result.manifest["files"]
    nvcc = result.manifest["check"]["nvcc"]
    assert nvcc.startswith("compiled by nvcc for sm_80") or nvcc.startswith("nvcc not found")
    with pytest.raises(InputError, match="not of the form sm_80"):
        compile_graph(gm, (1, 1, 28, 28), tmp_path / "bad", target="cuda:volta")


def test_a_failure_inside_tvm_is_one_line_naming_the_step(tmp_path, monkeypatch):
    import tvm

    from sparsify_cnn.codegen import build

    made = build._steps

    def steps(*args, **kwargs):
        found = made(*args, **kwargs)

        def fails(mod):
            raise tvm.error.InternalError("std::bad_alloc")

        return {**found, "legalize_and_fuse": fails}

    monkeypatch.setattr(build, "_steps", steps)
    with pytest.raises(build.CompileFailed, match=r"TVM failed in the legalize_and_fuse step of compiling \(.*bad_alloc"):
        compile_graph(capture(nn.Conv2d(3, 4, 3).eval(), (1, 3, 8, 8)).graph_module, (1, 3, 8, 8), tmp_path)
