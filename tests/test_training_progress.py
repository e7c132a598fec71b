import pytest
import torch

from sparsify_cnn.training import TrainConfig, train

CONFIG = TrainConfig(epochs=2, batch_size=256, seed=1)  # 1078 digits: 5 steps an epoch


def _recorder():
    calls = []
    return calls, lambda phase, item, done, total, **extra: calls.append((phase, item, done, total, extra))


def test_every_step_is_reported_and_the_weights_are_those_of_a_silent_run(digits28, tiny):
    calls, progress = _recorder()
    reported, silent = tiny(), tiny()
    result = train(reported, digits28, CONFIG, progress=progress)
    train(silent, digits28, CONFIG)
    assert all(torch.equal(a, b) for a, b in zip(reported.state_dict().values(), silent.state_dict().values()))
    assert {(phase, total, extra["unit"]) for phase, _, _, total, extra in calls} == {("training", 10, "steps")}
    assert [done for _, _, done, _, _ in calls] == list(range(11))  # the start, then every step
    assert calls[1][1] == "epoch 1 of 2, step 1 of 5"
    # An epoch's last step is told once the epoch is scored, with its loss and calibration score.
    last = calls[-1]
    assert last[1] == "epoch 2 of 2" and last[4]["loss"] == result.epochs[1].loss
    assert last[4]["calib"] == str(result.epochs[1].calib)


def test_a_resumed_run_reports_from_where_it_resumes(digits28, tmp_path, tiny, stop_after):
    path = tmp_path / "run.ckpt"

    with pytest.raises(stop_after.error):
        train(tiny(), digits28, CONFIG, on_epoch=stop_after(None), checkpoint=path)
    calls, progress = _recorder()
    train(tiny(), digits28, CONFIG, checkpoint=path, progress=progress)
    assert [done for _, _, done, _, _ in calls] == list(range(5, 11))
    assert calls[0][1] == "epoch 2 of 2"
    calls.clear()
    train(tiny(), digits28, CONFIG, checkpoint=path, progress=progress)  # finished: nothing to do or tell
    assert calls == []
