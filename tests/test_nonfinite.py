"""``check_finite`` and the scores it guards: a NaN output is an error naming the model, never a
prediction of class 0."""

import numpy as np
import pytest
import torch
from torch import nn

from sparsify_cnn.data import Split, make_dataset
from sparsify_cnn.errors import DataError, InputError, NonFiniteError, SparsifyError, check_finite, count_nonfinite
from sparsify_cnn.evaluate import evaluate, predict


def test_check_finite_counts_nan_and_inf_in_torch_and_numpy():
    values = [1.0, float("nan"), float("inf"), -float("inf"), 0.0]
    assert count_nonfinite(torch.tensor(values)) == (3, 5)
    assert count_nonfinite(np.array(values, dtype=np.float32)) == (3, 5)
    assert count_nonfinite(np.arange(4)) == (0, 4) and count_nonfinite(torch.arange(4)) == (0, 4)
    check_finite(torch.ones(3), "finite")  # no error
    with pytest.raises(NonFiniteError, match=r"^the logits: 3 of 5 values are NaN or infinite; hint$"):
        check_finite(torch.tensor(values), "the logits", hint="; hint")

    class Mismatch(SparsifyError):
        pass

    with pytest.raises(Mismatch, match="^x: 1 of 2 values"):
        check_finite(np.array([np.nan, 1.0]), "x", Mismatch)
    assert issubclass(NonFiniteError, InputError) and NonFiniteError.exit_code == 2


class Broken(nn.Module):
    """Class 0 for every image, as NaN outputs would argmax to."""

    def __init__(self, value=float("nan")):
        super().__init__()
        self.value = value

    def forward(self, x):
        out = torch.zeros(len(x), 3)
        out[1::2] = self.value  # every second image
        return out


class Zero(nn.Module):
    def forward(self, x):
        return torch.zeros(len(x), 3)


X = torch.zeros(6, 1, 2, 2)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_model_with_nan_outputs_has_no_score(value):
    labels = torch.zeros(6, dtype=torch.long)  # argmax of NaN is class 0: this would score 100%
    assert evaluate(Zero(), Split(X, labels)).value == 1.0
    with pytest.raises(NonFiniteError, match=r"^the outputs of the SSC model \(6 images\): 9 of 18 values"):
        evaluate(Broken(value), Split(X, labels), name="the SSC model")
    with pytest.raises(NonFiniteError, match=r"^the outputs of the reference \(dense\) model \(6 images\)"):
        evaluate(Zero(), Split(X, None), reference=Broken(value))
    with pytest.raises(NonFiniteError, match=r"^the outputs of the model \(6 images\)"):
        predict(Broken(value), X)


def test_images_with_nan_are_refused_with_their_count():
    x = np.zeros((6, 1, 2, 2), dtype=np.float32)
    x[0, 0, 0, :] = np.nan
    with pytest.raises(DataError, match="^data 'nan' has images: 2 of 24 values are NaN or infinite$"):
        make_dataset("nan", x, np.arange(6) % 2)
    with pytest.raises(DataError, match="2 of 24"):
        make_dataset("big", np.where(x == x, 0.0, 1e300), None)  # finite in float64, inf in float32
