import json

import numpy as np
import pytest
from click.testing import CliRunner

from sparsify_cnn.cli.main import cli
from sparsify_cnn.cli.train import STAN_KERNELS
from sparsify_cnn.cli.tune import PRESETS as CLI_PRESETS
from sparsify_cnn.model_io import load_model


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """150 labelled 1x16x16 images: zoo:lenet and zoo:mlp adapt to them and train in moments."""
    rng = np.random.default_rng(0)
    y = np.arange(150) % 3
    x = rng.normal(0, 0.1, (150, 1, 16, 16)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, 0, 2 + 4 * label : 7 + 4 * label, 4:10] += 1.0
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x=x, y=y)
    return path


def _one_error_line(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_choices_match_the_package():
    from sparsify_cnn.techniques.stan.conv import KERNELS
    from sparsify_cnn.techniques.stan.hyperband import PRESETS

    assert STAN_KERNELS == KERNELS and CLI_PRESETS == tuple(PRESETS)
    assert "tune-hparams" in run("--help").output


def test_train_with_stan_reports_coverage_times_and_speedups(tmp_path, small_npz):
    out, report = tmp_path / "lenet.pt2", tmp_path / "report.json"
    result = run("train", "zoo:lenet", "--data", small_npz, "--epochs", 3, "--batch-size", 30, "--stan", "stan-lite",
                 "--theta", 0, "--period", 2, "--report", report, "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "stan-lite: theta 0, p_t 0, Z 2, kernel auto; entry matrix" in result.output
    assert "epoch   2  skip" in result.output and "coverage conv1" in result.output
    assert "conv2: t_f" in result.output and "timing model" in result.output
    data = json.loads(report.read_text())
    assert [e["kind"] for e in data["epochs"]] == ["build", "skip", "skip"]
    assert set(data["layer_times"]) == {"conv1", "conv2"} and data["speedup"]["predicted"] > 0
    loaded = load_model(str(out))
    assert loaded.metadata["train"]["stan"]["variant"] == "stan-lite"


def test_entry_memory_limit_is_one_clear_line(tmp_path, small_npz):
    result = run("train", "zoo:lenet", "--data", small_npz, "--stan", "stan", "--max-entry-memory", "1KB",
                 "--out", tmp_path / "m.pt2")  # fmt: skip
    _one_error_line(result, "the STAN entry matrix needs", "bytes: 90 samples x", "over --max-entry-memory")
    result = run("train", "zoo:lenet", "--data", small_npz, "--theta", 1, "--out", tmp_path / "m.pt2")
    _one_error_line(result, "--theta applies to STAN")
    result = run("train", "zoo:lenet", "--stan", "stan", "--max-entry-memory", "lots", "--out", tmp_path / "m.pt2")
    assert result.exit_code == 2 and "not a memory size" in result.output


def test_baselines_in_the_same_command(tmp_path, small_npz):
    result = run("train", "zoo:lenet", "--data", small_npz, "--epochs", 1, "--conv-dropout", 0.5, "--meprop-k", 20,
                 "--out", tmp_path / "m.pt2")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "conv dropout: conv1, conv2" in result.output and "meprop: ip1" in result.output


def test_tune_then_train_with_the_config(tmp_path, small_npz):
    storage, best = tmp_path / "study.db", tmp_path / "best.json"
    args = ("tune-hparams", "zoo:mlp", "--preset", "mlp", "--data", small_npz, "--trials", 2, "--max-epochs", 2,
            "--storage", storage, "--out", best)  # fmt: skip
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "trial   0" in result.output and "best: trial" in result.output
    config = json.loads(best.read_text())
    assert config["setup"]["batch_size"] == 100 and config["tuned"]["preset"] == "mlp"
    again = run(*args[:-4], "--trials", 3, "--storage", storage, "--out", best)
    assert again.exit_code == 0 and "resumed a study of 2 trials" in again.output
    out = tmp_path / "mlp.pt2"
    result = run("train", "zoo:mlp", "--data", small_npz, "--config", best, "--epochs", 1, "--out", out)
    assert result.exit_code == 0, result.output
    saved = load_model(str(out)).metadata["train"]
    assert saved["epochs"] == 1 and saved["batch_size"] == 100 and saved["optimizer"] == "adam"
    assert saved["model_options"] == config["setup"]["model_options"]
    _one_error_line(run("train", "zoo:mlp", "--config", tmp_path / "none.json", "--out", out), "cannot read config")
