import pytest
import torch

from sparsify_cnn import models
from sparsify_cnn.errors import InputError
from sparsify_cnn.evaluate import evaluate
from sparsify_cnn.training import TrainConfig, train


def _trained(data, epochs):
    torch.manual_seed(0)
    model = models.build("lenet")
    result = train(model, data, TrainConfig(epochs=epochs, seed=3))
    return model, result


def test_training_learns_digits_and_is_deterministic(digits28, trained_lenet):
    first, result = _trained(digits28, 2)
    second, _ = _trained(digits28, 2)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert [log.epoch for log in result.epochs] == [1, 2]
    assert result.epochs[1].loss < result.epochs[0].loss
    assert evaluate(trained_lenet, digits28.test).value > 0.85  # 3 epochs (conftest); chance is 0.1


@pytest.mark.parametrize(
    "field, value", [("epochs", -1), ("batch_size", 0), ("lr", 0.0), ("momentum", 1.0), ("weight_decay", -1.0)]
)
def test_config_validation(field, value):
    with pytest.raises(InputError, match=field.replace("_", " ").replace("lr", "learning rate")):
        TrainConfig(**{field: value})


def test_label_free_data_cannot_train(digits28):
    from sparsify_cnn.data import Dataset, Split

    free = Dataset("free", *(Split(s.x, None) for s in (digits28.train, digits28.calib, digits28.test)), None)
    with pytest.raises(InputError, match="has no labels"):
        train(models.build("lenet"), free, TrainConfig(epochs=1))


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(epochs=3, batch_size=128, seed=1),
        TrainConfig(epochs=3, batch_size=128, schedule="step", milestones=(1, 2)),
    ],
)
def test_an_interrupted_run_resumes_to_identical_weights(digits28, tmp_path, config, tiny, stop_after):
    straight = tiny()
    expected = train(straight, digits28, config)
    path = tmp_path / "run.ckpt"

    with pytest.raises(stop_after.error):
        train(tiny(), digits28, config, on_epoch=stop_after(2), checkpoint=path)
    assert path.exists() and not (tmp_path / "run.ckpt.partial").exists()
    seen = []
    resumed = tiny()
    result = train(resumed, digits28, config, on_epoch=seen.append, checkpoint=path)
    assert result.resumed_from == 2 and [log.epoch for log in seen] == [3]
    assert result.epochs == expected.epochs  # losses and calibration scores, every epoch
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # A finished run's checkpoint gives the final weights back without training.
    again = tiny()
    finished = train(again, digits28, config, on_epoch=seen.append, checkpoint=path)
    assert finished.resumed_from == 3 and len(seen) == 1
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), straight.state_dict().values()))


def test_a_checkpoint_of_another_run_is_refused(digits28, tmp_path, tiny):
    path = tmp_path / "run.ckpt"
    config = TrainConfig(epochs=1, batch_size=256)
    train(tiny(), digits28, config, checkpoint=path)
    with pytest.raises(InputError, match="written by another run \\(other config\\); remove it"):
        train(tiny(), digits28, TrainConfig(epochs=2, batch_size=256), checkpoint=path)
    other_init = tiny()
    with torch.no_grad():
        other_init[0].weight.add_(1)
    with pytest.raises(InputError, match="other initial weights"):
        train(other_init, digits28, config, checkpoint=path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="is unreadable"):
        train(tiny(), digits28, config, checkpoint=path)


def test_a_checkpoint_with_the_right_identity_but_wrong_contents_is_one_error(digits28, tmp_path, tiny):
    path = tmp_path / "run.ckpt"
    config = TrainConfig(epochs=1, batch_size=256)
    train(tiny(), digits28, config, checkpoint=path)
    state = torch.load(path, weights_only=True)
    del state["optimizer"]
    torch.save(state, path)
    with pytest.raises(InputError, match="does not fit this run \\(KeyError: 'optimizer'\\); remove it or rerun with"):
        train(tiny(), digits28, config, checkpoint=path)
    state["optimizer"], state["model"] = {}, {name: t.reshape(-1)[:1] for name, t in state["model"].items()}
    torch.save(state, path)
    with pytest.raises(InputError, match="does not fit this run \\(RuntimeError"):
        train(tiny(), digits28, config, checkpoint=path)


def test_step_schedule_and_the_seed_recipe():
    from torch import nn

    from sparsify_cnn.training import _schedule

    recipe = TrainConfig.seed_recipe()
    assert (recipe.epochs, recipe.lr, recipe.weight_decay, recipe.batch_size) == (250, 0.1, 1e-4, 128)
    assert recipe.schedule == "step" and recipe.milestones == (100, 150, 200) and recipe.gamma == 0.1
    config = TrainConfig(epochs=4, lr=1.0, schedule="step", milestones=(1, 3), gamma=0.5)
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=config.lr)
    schedule = _schedule(optimizer, config, steps_per_epoch=2)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert TrainConfig().to_dict()["schedule"] == "cosine"  # the default is unchanged


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule": "linear"}, "schedule must be one of cosine, step"),
        ({"milestones": (3,)}, "milestones apply to the step schedule"),
        ({"schedule": "step", "milestones": (3, 2)}, "milestones must be increasing"),
        ({"schedule": "step", "gamma": 0.0}, "gamma must be in"),
    ],
)
def test_schedule_validation(kwargs, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**kwargs)
