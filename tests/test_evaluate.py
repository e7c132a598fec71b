import pytest
import torch
from torch import nn

from sparsify_cnn.data import Split
from sparsify_cnn.errors import DataError
from sparsify_cnn.evaluate import evaluate, predict


class Fixed(nn.Module):
    """Predicts class (first pixel > 0)."""

    def forward(self, x):
        first = x.flatten(1)[:, :1]
        return torch.cat([-first, first], dim=1)


X = torch.tensor([[-1.0], [2.0], [3.0], [-4.0]]).view(4, 1, 1, 1)


def test_top1_against_labels():
    score = evaluate(Fixed(), Split(X, torch.tensor([0, 1, 0, 0])))
    assert (score.metric, score.value, score.count) == ("top1", 0.75, 4)
    assert str(score) == "top-1 accuracy 75.00% (4 images)"
    assert predict(Fixed(), X, batch_size=3).tolist() == [0, 1, 1, 0]


def test_label_free_data_means_agreement_with_the_reference():
    class Flipped(Fixed):
        def forward(self, x):
            out = super().forward(x)
            out[0] = out[0].flip(0)  # disagree on the first image of each batch
            return out

    score = evaluate(Flipped(), Split(X, None), reference=Fixed())
    assert (score.metric, score.value) == ("agreement", 0.75)
    assert "agreement with the dense model" in str(score)
    with pytest.raises(DataError, match="needs a reference"):
        evaluate(Fixed(), Split(X, None))
    with pytest.raises(DataError, match="needs labels"):
        evaluate(Fixed(), Split(X, None), metric="top1")
