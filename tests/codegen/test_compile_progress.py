"""Compiling and tuning tell a progress callback (sparsify_cnn.progress) where they are. Real
tuning takes minutes here: MetaSchedule's search is replaced by one that measures nothing and
calls the measure callbacks as its task scheduler would."""

import pytest
import torch
from torch import nn
from tvm.s_tir import meta_schedule as ms

from sparsify_cnn.codegen.compile import STEPS, compile_graph
from sparsify_cnn.codegen.tuning import TrialCounter
from sparsify_cnn.transform.capture import capture

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out


def _recorder():
    calls = []
    return calls, lambda phase, item, done, total, **extra: calls.append((phase, item, done, total, extra))


def test_compile_reports_each_step_and_the_tuning_inside_build(tmp_path, monkeypatch):
    measured = {}

    def search(*, tasks, measure_callbacks, max_trials_global, **rest):
        measured["defaults"] = [type(callback).__name__ for callback in measure_callbacks[:-1]]
        scheduler = ms.task_scheduler.TaskScheduler.create("round-robin")
        for task_id in range(len(tasks)):  # two candidates a task: one ran, one failed
            results = [ms.runner.RunnerResult([2e-3, 1e-3], None), ms.runner.RunnerResult(None, "failed")]
            measure_callbacks[-1].apply(scheduler, task_id, [], [], results)
        measured["tasks"] = len(tasks)

    monkeypatch.setattr(ms.tune, "tune_tasks", search)
    # Making the search spaces imports MetaSchedule's tensor intrinsics (minutes here): the
    # extracted tasks stand in for their contexts, which the fake search only counts.
    monkeypatch.setattr(ms.relax_integration, "extracted_tasks_to_tune_contexts",
                        lambda tasks, *args, **kwargs: (list(tasks), [task.weight for task in tasks]))  # fmt: skip
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    gm = capture(model, (1, 1, 8, 8)).graph_module
    calls, progress = _recorder()
    compile_graph(gm, (1, 1, 8, 8), tmp_path / "a", check_inputs=torch.randn(2, 1, 8, 8), tune_trials=8,
                  records=tmp_path / "records", progress=progress)  # fmt: skip

    assert measured["defaults"] == ["AddToDatabase", "RemoveBuildArtifact", "UpdateCostModel"]  # kept, ours added
    steps = [call for call in calls if call[0] == "compile"]
    written = (f"written to {tmp_path / 'a'}", 5)
    assert [(item, done) for _, item, done, _, _ in steps] == [*zip(STEPS, range(5)), written]
    assert {(total, extra["eta"]) for _, _, _, total, extra in steps} == {(5, False)}  # unlike steps: no estimate
    setup = [call for call in calls if call[0] == "tuning setup"]
    assert [done for _, _, done, _, _ in setup] == [0, 1] and calls.index(setup[0]) == calls.index(steps[2]) + 1
    tuning = [call for call in calls if call[0] == "tuning"]
    assert calls.index(tuning[0]) == calls.index(setup[1]) + 1 and calls.index(tuning[-1]) < calls.index(steps[3])
    tasks = measured["tasks"]
    assert [done for _, _, done, _, _ in tuning] == [2 * i for i in range(tasks + 1)] + [2 * tasks]
    assert {(total, extra["unit"], extra["at_most"]) for _, _, _, total, extra in tuning} == {(8, "trials", True)}
    assert tuning[-1][4]["end"] and all("end" not in extra for *_, extra in tuning[:-1])
    assert tuning[1][4]["best_ms"] == 1.0  # the fastest run of the one that worked, in ms


def test_the_trial_counter_keeps_each_tasks_best_time():
    calls, progress = _recorder()
    counter = TrialCounter(progress, ["conv", "dense"], 16)
    counter.measured(0, 4, [3e-3, 2e-3])
    counter.measured(1, 4, [])  # every candidate failed: no time yet
    counter.measured(0, 4, [5e-3])  # slower than the best so far
    counter.finish()
    assert [(item, done) for _, item, done, _, _ in calls] == [
        ("2 tasks", 0), ("task 1 of 2 (conv)", 4), ("task 2 of 2 (dense)", 8), ("task 1 of 2 (conv)", 12),
        ("1 of 2 tasks have a measured schedule", 12),
    ]  # fmt: skip
    assert [extra.get("best_ms") for *_, extra in calls] == [None, 2.0, None, 2.0, None]
