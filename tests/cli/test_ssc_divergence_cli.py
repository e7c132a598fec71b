"""An SSC fine-tune that diverges is a failed job: one error line, exit 2, nothing written as if it
had worked."""

from click.testing import CliRunner

from sparsify_cnn.cli.main import cli


def test_a_diverging_finetune_exits_2_with_one_error_line(tmp_path, model_files):
    out = tmp_path / "out"
    args = [model_files["pt2"], "--technique", "ssc", "--target-params", "0.95", "--finetune-epochs", "1",
            "--finetune-lr", "1e10", "--data", "digits", "--target", "none", "--no-crossover", "--out", out]  # fmt: skip
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert errors[0].startswith("error: fine-tuning diverged at epoch 1 step ")
    assert "with lr 1e+10: " in errors[0] and errors[0].endswith(
        "stopped and kept the weights it started from, the last finite ones; try a smaller --finetune-lr"
    )
    written = {p.name for p in out.iterdir()} if out.exists() else set()  # a folder left empty is removed
    assert not written & {"plan.json", "model.pt2", "report.json", "report.md", "artifact", "train-checkpoint.pt"}
