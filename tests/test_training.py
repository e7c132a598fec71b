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
