import numpy as np
import pytest
import torch
from PIL import Image

from sparsify_cnn.data import load_data, make_dataset
from sparsify_cnn.errors import DataError


def test_digits_native_splits_are_fixed_disjoint_and_stratified():
    data = load_data("digits")
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10 and data.labeled
    sizes = [len(data.train), len(data.calib), len(data.test)]
    assert sum(sizes) == 1797 and sizes == [1078, 359, 360]
    rows = [tuple(x.flatten().tolist()) for split in (data.train, data.calib, data.test) for x in split.x]
    assert len(set(rows)) > 1700  # the splits do not share images (a few digits are duplicates)
    assert float(data.train.x.min()) >= 0.0 and float(data.train.x.max()) <= 1.0
    for split in (data.train, data.calib, data.test):  # every class in every split
        assert set(split.y.tolist()) == set(range(10))
    assert load_data("digits").fingerprint() == data.fingerprint()
    assert load_data("digits", seed=1).fingerprint() != data.fingerprint()


def test_digits_resized_to_the_model_input():
    data = load_data("digits", (3, 32, 32))
    assert data.train.x.shape[1:] == (3, 32, 32)
    torch.testing.assert_close(data.train.x[:, 0], data.train.x[:, 2])  # grey in every channel
    assert data.train.x.dtype == torch.float32


def test_npz_with_and_without_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((30, 2, 5, 5)).astype(np.float32)
    y = np.repeat(np.arange(3), 10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_data(str(tmp_path / "d.npz"))
    assert data.input_shape == (2, 5, 5) and data.num_classes == 3
    assert sorted(torch.cat([data.train.y, data.calib.y, data.test.y]).tolist()) == sorted(y.tolist())
    np.savez(tmp_path / "free.npz", x=x[:, 0])  # (N, H, W): one channel, no labels
    free = load_data(str(tmp_path / "free.npz"))
    assert free.input_shape == (1, 5, 5) and not free.labeled and free.num_classes is None


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((0, 1, 4, 4))}, "is empty"),
        ({"x": np.zeros((5, 4))}, "expected \\(N, C, H, W\\) or \\(N, H, W\\)"),
        ({"x": np.zeros((6, 1, 4, 4)), "y": np.array([0, 1, -1, 0, 1, 0])}, "negative labels"),
        ({"x": np.zeros((6, 1, 4, 4)), "y": np.zeros(5, dtype=int)}, "expected \\(6,\\), one per image"),
        ({"x": np.zeros((6, 1, 4, 4)), "y": np.full(6, 0.5)}, "expected integer class indices"),
        ({"x": np.full((6, 1, 4, 4), np.nan)}, "NaN or infinite"),
        ({"images": np.zeros((6, 1, 4, 4))}, "has no array 'x' \\(it has: images\\)"),
    ],
)
def test_bad_npz(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_data(str(path))


def test_unreadable_and_missing_data(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_data(str(tmp_path / "junk.npz"))
    with pytest.raises(DataError, match="does not exist"):
        load_data(str(tmp_path / "nowhere"))
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(DataError, match="not an .npz file or an image folder"):
        load_data(str(tmp_path / "data.csv"))


def _image(path, value, size=(6, 4), mode="L"):
    Image.new(mode, size, color=value).save(path)


def test_image_folder_with_classes_resized_and_scaled(tmp_path):
    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(4):
            _image(tmp_path / name / f"{i}.png", 60 * label + 10 * i)
    data = load_data(str(tmp_path), (1, 3, 3))
    assert data.input_shape == (1, 3, 3) and data.num_classes == 2
    x = torch.cat([data.train.x, data.calib.x, data.test.x])
    y = torch.cat([data.train.y, data.calib.y, data.test.y])
    assert x[y == 1].min() >= 60 / 255 - 1e-6  # dogs are the brighter class, scaled to [0, 1]
    rgb = load_data(str(tmp_path), (3, 2, 2))
    assert rgb.input_shape == (3, 2, 2)


def test_image_folder_without_classes_is_label_free_and_sized_by_first_image(tmp_path):
    for i in range(5):
        _image(tmp_path / f"{i}.png", (i, i, i), mode="RGB")
    data = load_data(str(tmp_path))
    assert data.input_shape == (3, 4, 6) and not data.labeled


def test_bad_image_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no images and no class subfolders"):
        load_data(str(tmp_path / "empty"), (1, 4, 4))
    root = tmp_path / "classes"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    _image(root / "a" / "0.png", 1)
    with pytest.raises(DataError, match="class folder .*b' has no images"):
        load_data(str(root), (1, 4, 4))
    _image(root / "b" / "0.png", 1)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="image .*broken.png' cannot be read"):
        load_data(str(root), (1, 4, 4))
    with pytest.raises(DataError, match="4 input channels"):
        load_data(str(root), (4, 4, 4))


def test_check_model_shape_and_label_range():
    data = make_dataset("toy", np.zeros((9, 1, 4, 4)), np.arange(9) % 5)
    data.check_model((1, 4, 4), 5)
    with pytest.raises(DataError, match=r"images of shape \(1, 4, 4\); the model takes \(3, 4, 4\)"):
        data.check_model((3, 4, 4), 5)
    with pytest.raises(DataError, match="labels up to 4; the model has 3 outputs"):
        data.check_model((1, 4, 4), 3)


@pytest.mark.parametrize("text, expected", [
    ("imagenet", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
    ("0.5,0.25", ((0.5,), (0.25,))),
    ("0.1:0.2:0.3,0.5", ((0.1, 0.2, 0.3), (0.5,))),
])  # fmt: skip
def test_normalization_is_parsed_from_the_option(text, expected):
    from sparsify_cnn.data import parse_normalization

    assert parse_normalization(text) == expected


@pytest.mark.parametrize("text", ["0.5", "0.5,0", "a,b", "0.1:0.2,0.1:0.2:0.3", "0.5,-1", "nan,1"])
def test_bad_normalization_is_refused(text):
    from sparsify_cnn.data import parse_normalization

    with pytest.raises(ValueError):
        parse_normalization(text)


def test_images_are_normalised_per_channel_in_every_split(tmp_path):
    from sparsify_cnn.data import normalized

    x = np.random.default_rng(0).random((20, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    plain = load_data(str(tmp_path / "x.npz"))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    data = load_data(str(tmp_path / "x.npz"), normalize=(mean, std))
    for name in ("train", "calib", "test"):
        expected = (plain.split(name).x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        torch.testing.assert_close(data.split(name).x, expected)
    assert data.fingerprint() != plain.fingerprint()  # plans record which data chose them
    with pytest.raises(DataError, match="2 mean values for images of 3 channels"):
        normalized(plain, (0.1, 0.2), (1.0,))


def test_normalize_option_reaches_the_data_and_bad_values_are_usage_errors(tmp_path, model_files):
    from click.testing import CliRunner

    from sparsify_cnn.cli.main import cli

    ok = CliRunner().invoke(cli, ["inspect", str(model_files["pt2"]), "--data", "digits", "--normalize", "0.5,0.25"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(cli, ["inspect", str(model_files["pt2"]), "--data", "digits", "--normalize", "0.5"])
    assert bad.exit_code == 2 and "is not MEAN,STD" in bad.output
