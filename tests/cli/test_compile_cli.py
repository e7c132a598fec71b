import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sparsify_cnn.cli.main import cli

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_compile_then_run_from_the_shell(tmp_path, model_files, trained_lenet, digits28):
    out = tmp_path / "artifact"
    result = run("compile", model_files["pt2"], "--data", "digits", "--check-images", 8, "--out", out,
                 "--dump-ir", tmp_path / "ir")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "matches torch on 8 images" in result.output
    assert (tmp_path / "ir" / "00_decompose_for_inference_before.py").exists()
    x = digits28.test.x[:1].numpy()
    np.save(tmp_path / "x.npy", x)
    digest = re.search(r"manifest sha256 ([0-9a-f]{64}) \(pin it with sparsify run --expect-sha256\)", result.output)
    assert digest, result.output
    result = run("run", out, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--expect-sha256", digest[1])
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        expected = trained_lenet(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-4)
    np.save(tmp_path / "x4.npy", np.zeros((4, 1, 28, 28), np.float32))
    result = run("run", out, "--input", tmp_path / "x4.npy", "--output", tmp_path / "y4.npy")
    assert result.exit_code == 2 and "compiled for (1, 1, 28, 28)" in result.output
    result = run("run", tmp_path, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert result.exit_code == 2 and "is not a sparsify artifact" in result.output


def test_compile_a_plan_from_a_search(tmp_path, model_files, digits28):
    optimized = tmp_path / "opt"
    assert run(model_files["pt2"], "--mode", "uniform_layer", "--target", "none", "--out", optimized).exit_code == 0
    out = tmp_path / "a"
    result = run("compile", model_files["pt2"], "--plan", optimized / "plan.json", "--data", "digits", "--out", out)
    assert result.exit_code == 0, result.output
    assert "matches torch" in result.output
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plan"]["technique"] == "spatial"
