"""A training run that reaches NaN or infinity stops, says where, and keeps the weights of its
last finite epoch (in the model and in its checkpoint)."""

import pytest
import torch
from torch import nn

from sparsify_cnn import models
from sparsify_cnn.errors import NonFiniteError, TrainingDiverged
from sparsify_cnn.training import FINETUNE_LR, TrainConfig, train


class _Stop(Exception):
    pass


def _lenet():
    torch.manual_seed(0)
    return models.build("lenet")


def _stopped_after(epoch: int, data, config, checkpoint=None) -> nn.Module:
    """The same run interrupted at the end of ``epoch``: the oracle for the weights kept."""
    model = _lenet()

    def stop(log):
        if log.epoch == epoch:
            raise _Stop

    with pytest.raises(_Stop):
        train(model, data, config, on_epoch=stop, checkpoint=checkpoint)
    return model


def _equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_an_absurd_learning_rate_stops_at_the_last_finite_epoch(digits28, tmp_path):
    # One step per epoch: lr 1e10 leaves finite (huge) weights after epoch 1, NaN outputs after 2.
    config = TrainConfig(epochs=3, batch_size=len(digits28.train), lr=1e10, seed=0)
    model, path = _lenet(), tmp_path / "run.ckpt"
    with pytest.raises(TrainingDiverged) as caught:
        train(model, digits28, config, checkpoint=path)
    error = caught.value
    assert (error.epoch, error.step, error.kept_epoch) == (2, 1, 1)
    assert error.lr == pytest.approx(1e10 * 0.75)  # cosine over 3 steps, at its second step
    assert str(error).startswith("training diverged at epoch 2 step 1 with lr 7.5e+09:")
    assert "kept the weights of epoch 1" in str(error) and "\n" not in str(error)
    assert [log.epoch for log in error.result.epochs] == [1]
    assert not model.training
    assert all(t.isfinite().all() for t in model.state_dict().values())
    assert _equal(model, _stopped_after(1, digits28, config))
    # The checkpoint holds epoch 1, finite, and resuming from it meets the same divergence.
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and all(torch.equal(a, b) for a, b in zip(state["model"].values(), model.state_dict().values()))
    with pytest.raises(TrainingDiverged, match="at epoch 2 step 1"):
        train(_lenet(), digits28, config, checkpoint=path)


def test_weights_that_turn_nan_are_named_and_the_epoch_before_is_restored(digits28):
    config = TrainConfig(epochs=3, batch_size=512, seed=0)  # 3 steps per epoch
    model = _lenet()
    steps = []

    def poison(grad):  # the 5th backward (epoch 2, step 2) gives the last layer a NaN gradient
        steps.append(1)
        return grad * float("nan") if len(steps) == 5 else grad

    last = [name for name, _ in model.named_parameters()][-2]  # the classifier's weight
    model.get_parameter(last).register_hook(poison)
    with pytest.raises(TrainingDiverged) as caught:
        train(model, digits28, config)
    error = caught.value
    assert (error.epoch, error.step, error.kept_epoch) == (2, 2, 1)
    assert f"{last} is NaN or infinite after the step" in str(error)
    assert _equal(model, _stopped_after(1, digits28, config))


def test_a_checkpoint_with_nan_weights_is_refused(digits28, tmp_path):
    path = tmp_path / "run.ckpt"
    config = TrainConfig(epochs=2, batch_size=512, seed=0)
    _stopped_after(1, digits28, config, checkpoint=path)
    state = torch.load(path, weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name].view(-1)[0] = float("nan")  # as a run before this check could have written
    torch.save(state, path)
    with pytest.raises(NonFiniteError, match=f"run.ckpt', {name}: 1 of .* NaN or infinite; remove it"):
        train(_lenet(), digits28, config, checkpoint=path)


def test_the_finetune_recipe_is_the_seed_recipe_at_a_tenth_of_its_lr():
    recipe, seed = TrainConfig.finetune_recipe(30, seed=2), TrainConfig.seed_recipe(30, seed=2)
    assert FINETUNE_LR == 0.01 and recipe.lr == pytest.approx(seed.lr / 10)
    assert {**recipe.to_dict(), "lr": seed.lr} == seed.to_dict()
    assert TrainConfig.finetune_recipe(30, lr=0.003).lr == 0.003
