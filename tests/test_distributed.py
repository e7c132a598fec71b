"""Data-parallel searches: two local ranks under torchrun (gloo) find the plan one process finds,
resume its checkpoint, and fail together, in one line each, instead of waiting on each other."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from sparsify_cnn.cli.main import cli
from sparsify_cnn.distributed import World, environment_world
from sparsify_cnn.errors import InputError

TIMEOUT = 300  # a hang (a rank waiting for a collective the other never calls) fails, not blocks CI


def torchrun(*args, ranks: int = 2, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=cwd)


def search(model, out, *extra, ranks: int = 1):
    options = [model, "--mode", "uniform_filter", "--top-m", "2", "--data", "digits", "--target", "none",
               "--no-crossover", "--out", out, *extra]  # fmt: skip
    if ranks == 1:
        result = CliRunner().invoke(cli, [str(a) for a in options])
        assert result.exit_code == 0, result.output
        return result.output
    done = torchrun("-m", "sparsify_cnn", *options, ranks=ranks)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_two_ranks_find_the_plan_one_process_finds_and_resume_its_checkpoint(tmp_path, model_files):
    model = model_files["pt2"]
    search(model, tmp_path / "one", "--checkpoint", tmp_path / "one.json")
    stdout = search(model, tmp_path / "two", ranks=2)
    one, two = (json.loads((tmp_path / name / "plan.json").read_text()) for name in ("one", "two"))
    assert one["masks"] == two["masks"] and one["masks"]
    assert one["results"] == two["results"]
    reports = [json.loads((tmp_path / name / "report.json").read_text())["search"] for name in ("one", "two")]
    for key in ("options", "evaluated", "suffix_images", "full_passes", "chosen"):
        assert reports[0][key] == reports[1][key], key
    assert reports[1]["work_passes"] == pytest.approx(reports[0]["work_passes"])
    assert (reports[0]["ranks"], reports[1]["ranks"]) == (1, 2)
    assert "on 2 ranks" in (tmp_path / "two" / "report.md").read_text()
    assert stdout.count("wrote plan.json") == 1  # the main rank alone writes and speaks
    # The single process's checkpoint, resumed by two ranks: every record read, none re-run.
    search(model, tmp_path / "resumed", "--checkpoint", tmp_path / "one.json", ranks=2)
    resumed = json.loads((tmp_path / "resumed" / "report.json").read_text())
    assert resumed["search"]["checkpoint_records_resumed"] > 0
    assert json.loads((tmp_path / "resumed" / "plan.json").read_text())["masks"] == one["masks"]


def test_two_ranks_choose_the_perforation_rates_one_process_chooses(tmp_path, model_files):
    """Impact masks (gradients summed over ranks) and the greedy steps, with agreement and the KL
    divergence to the dense model as L."""
    extra = ["--technique", "perforation", "--metric", "agreement", "--data", "digits", "--target", "none",
             "--no-crossover"]  # fmt: skip
    result = CliRunner().invoke(cli, [str(model_files["pt2"]), *extra, "--out", str(tmp_path / "one")])
    assert result.exit_code == 0, result.output
    done = torchrun("-m", "sparsify_cnn", model_files["pt2"], *extra, "--out", tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / "plan.json").read_text()) for name in ("one", "two"))
    assert one["masks"] == two["masks"] and one["results"] == two["results"]
    reports = [json.loads((tmp_path / name / "report.json").read_text())["search"] for name in ("one", "two")]
    assert reports[0]["steps"] == reports[1]["steps"] > 0
    assert reports[1]["dense_loss"] == pytest.approx(reports[0]["dense_loss"], rel=1e-12)
    assert reports[1]["ranks"] == 2 and "on 2 ranks" in (tmp_path / "two" / "report.md").read_text()


def test_two_ranks_find_the_plan_one_process_finds_with_a_sample_and_first_order_estimates(tmp_path, model_files):
    extra = ("--search-images", "120", "--first-level", "first-order")
    search(model_files["pt2"], tmp_path / "one", *extra)
    search(model_files["pt2"], tmp_path / "two", *extra, ranks=2)
    one, two = (json.loads((tmp_path / name / "plan.json").read_text()) for name in ("one", "two"))
    assert one["masks"] == two["masks"] and one["masks"] and one["results"] == two["results"]
    reports = [json.loads((tmp_path / name / "report.json").read_text())["search"] for name in ("one", "two")]
    assert reports[0]["search_images"] == reports[1]["search_images"] == 120
    assert reports[0]["evaluated"] == reports[1]["evaluated"]


def test_a_checkpoint_the_main_rank_refuses_stops_every_rank_with_its_error(tmp_path, model_files):
    checkpoint = tmp_path / "corrupt.json"
    checkpoint.write_text("{not json")
    done = torchrun("-m", "sparsify_cnn", model_files["pt2"], "--data", "digits", "--target", "none",
                    "--checkpoint", checkpoint, "--out", tmp_path / "out")  # fmt: skip
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checkpoint" in errors[0] and "--no-resume" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr.split("torch/distributed/elastic")[0]  # ours: none, before torchrun's summary


PROBE = textwrap.dedent("""
    import json, sys
    import torch
    from sparsify_cnn.distributed import join, leave
    from sparsify_cnn.errors import InputError

    world = join()
    result = {"rank": world.rank, "shard": [world.shard(5).start, world.shard(5).stop]}
    result["sum"] = world.sum(torch.tensor([world.rank + 1, 10], dtype=torch.int64)).tolist()
    result["count"] = world.count(3)
    result["gathered"] = world.gather(torch.arange(5)[world.shard(5)] * 10, 5).tolist()
    result["main_value"] = world.from_main(lambda: {"picked by": world.rank, "x": [1.5, 2.25]})
    world.check_same("same text", "probes")
    try:
        world.check_same(f"rank {world.rank}", "probes")
    except InputError as error:
        result["differ"] = str(error)
    def fails():
        raise InputError("only the main rank can see this")
    try:
        world.from_main(fails)
    except InputError as error:
        result["error"] = str(error)
    from sparsify_cnn.job import calib_predictions
    x = torch.arange(10, dtype=torch.float32).reshape(5, 2)
    model = torch.nn.Linear(2, 3)
    torch.nn.init.constant_(model.weight, 0.5)
    torch.nn.init.zeros_(model.bias)
    model.weight.data[1] = torch.tensor([-1.0, 2.0])
    result["predictions"] = calib_predictions(model, x, world).tolist()
    x[4, 0] = float("nan")  # rank 1's share alone
    try:
        calib_predictions(model, x, world)
    except InputError as error:
        result["nan"] = str(error)
    with open(f"{sys.argv[1]}/rank{world.rank}.json", "w") as out:  # one file each: printed lines interleave
        json.dump(result, out)
    leave()
""")


def test_collectives_sum_exactly_and_carry_the_main_ranks_values_and_errors(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    done = torchrun(tmp_path / "probe.py", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [r["shard"] for r in results] == [[0, 2], [2, 5]]
    for result in results:
        assert result["sum"] == [3, 20] and result["count"] == 6 and result["gathered"] == [0, 10, 20, 30, 40]
        assert result["main_value"] == {"picked by": 0, "x": [1.5, 2.25]}
        assert "ranks loaded different probes" in result["differ"]
        assert result["error"] == "only the main rank can see this"
        assert result["predictions"] == [1] * 5  # class 1 scores 1.5 (x1 - x0) more: x1 = x0 + 1
        assert result["nan"].startswith("the outputs of the dense model on the calib split (5 images): 3 of 15 values")


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_shards_cover_every_item_once_and_differ_by_at_most_one(count, size):
    shards = [World(rank, size).shard(count) for rank in range(size)]
    assert [i for s in shards for i in range(count)[s]] == list(range(count))
    lengths = [s.stop - s.start for s in shards]
    assert max(lengths) - min(lengths) <= 1


def test_the_environment_describes_the_world(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert environment_world() == World()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert environment_world() == World(3, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(InputError, match="RANK 4 is not a rank of WORLD_SIZE 4"):
        environment_world()


def test_under_torchrun_a_technique_that_does_not_run_data_parallel_is_refused(model_files, tmp_path):
    env = {"WORLD_SIZE": "2", "RANK": "0"}
    result = CliRunner().invoke(cli, [str(model_files["pt2"]), "--technique", "ssc", "--target-params", "0.5", "--out",
                                str(tmp_path / "o")], env=env)  # fmt: skip
    assert result.exit_code == 2
    assert "--technique ssc runs in one process, not under torchrun (data-parallel: perforation, spatial)" in result.output
    result = CliRunner().invoke(cli, [str(model_files["pt2"]), "--out", str(tmp_path / "o")],
                                env={**env, "MASTER_ADDR": None, "MASTER_PORT": None})  # fmt: skip
    assert result.exit_code == 2 and "launch with torchrun" in result.output
