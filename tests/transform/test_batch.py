"""Programs exported with a static batch take any batch once generalised (checked against the
original, image by image)."""

import pytest
import torch
from torch import nn

from sparsify_cnn.transform.batch import GeneralizationError, generalize_batch, static_batch


class Flatten(nn.Module):
    """conv -> BN -> ReLU -> pool -> view(size(0), -1) -> linear: the batch in a reshape."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        y = nn.functional.adaptive_avg_pool2d(torch.relu(self.norm(self.conv(x))), 4)
        return self.fc(y.view(y.size(0), -1))


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle: reshapes with the batch and a -1 elsewhere."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        b, c, h, w = y.shape
        y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, -1, h, w)
        return torch.flatten(y, 1)


class Token(nn.Module):
    """A ViT-like class token expanded to the batch, and a zeros tensor of the batch's size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 4, stride=4)
        self.token = nn.Parameter(torch.randn(1, 1, 6))

    def forward(self, x):
        y = self.conv(x).flatten(2).transpose(1, 2)
        y = torch.cat([self.token.expand(x.shape[0], -1, -1), y], dim=1)
        return y + torch.zeros(x.shape[0], 1, 6)


class Attention(nn.Module):
    """Patches through ``nn.MultiheadAttention`` (batch first), as ViT has them: one image's
    [T, 1, 2, 4] heads become [T, 8] (the batch folded into the tokens, not the features)."""

    def __init__(self):
        super().__init__()
        self.patches = nn.Conv2d(3, 8, 4, stride=4)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        y = self.patches(x).flatten(2).transpose(1, 2)
        return self.attention(y, y, y, need_weights=False)[0].mean(1)


class MixesImages(nn.Module):
    """Subtracts the batch mean: no generalisation can reproduce it image by image."""

    def forward(self, x):
        return x - x.mean(0, keepdim=True)


def _exported(model: nn.Module, batch: int = 1):
    example = torch.randn(batch, 3, 16, 16)
    return torch.export.export(model.eval(), (example,)).module(), example


@pytest.mark.parametrize("model", [Flatten(), Shuffle(), Token(), Attention()], ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("batch", [1, 2])
def test_static_exports_take_any_batch(model, batch):
    torch.manual_seed(0)
    gm, example = _exported(model, batch)
    assert static_batch(gm) == batch
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad(), pytest.raises(Exception):
        gm(x)  # the export's guard refuses other batches
    generalize_batch(gm, example)
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-6)
        assert torch.allclose(gm(x[:1]), model(x[:1]), atol=1e-6)


def test_dynamic_exports_are_left_alone():
    example = torch.randn(2, 3, 16, 16)
    program = torch.export.export(Flatten().eval(), (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    assert static_batch(program.module()) is None


def test_models_that_mix_images_are_refused():
    gm, example = _exported(MixesImages())
    with pytest.raises(GeneralizationError, match="mixes the images"):
        generalize_batch(gm, example)


class Windows(nn.Module):
    """Swin's window partition: the batch folds into the window count ([4, 16, 8] for one
    image, [4 * N, 16, 8] for N), moves with a permute, and unfolds again."""

    def __init__(self):
        super().__init__()
        self.patches = nn.Conv2d(3, 8, 2, stride=2)
        self.mix = nn.Linear(8, 8)

    def forward(self, x):
        y = self.patches(x).permute(0, 2, 3, 1)  # (B, 8, 8, C)
        b, h, w, c = y.shape
        windows = y.view(b, h // 4, 4, w // 4, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 16, c)
        windows = torch.softmax(windows @ windows.transpose(1, 2), -1) @ self.mix(windows)
        y = windows.view(b, h // 4, w // 4, 4, 4, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return y.mean((1, 2))


@pytest.mark.parametrize("batch", [1, 2])
def test_the_batch_is_followed_where_it_folds_into_other_dimensions(batch):
    torch.manual_seed(0)
    model = Windows().eval()
    gm, example = _exported(model, batch)
    generalize_batch(gm, example)
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)
