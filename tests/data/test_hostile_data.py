"""Hostile and broken data files, built for real: each is one DataError naming the file and what
was wrong (exit 2 and one ``error:`` line through the CLI), with nothing large allocated."""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sparsify_cnn.cli.main import cli
from sparsify_cnn.data import load_data
from sparsify_cnn.errors import DataError

TERABYTES = (10**7, 3, 1024, 1024)  # 126 TB of float32


def npy_header(shape, descr="<f4", version=1) -> bytes:
    """An .npy header written by hand, claiming ``shape`` whatever follows it."""
    text = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    size_format, prefix = ("<H", 10) if version == 1 else ("<I", 12)
    pad = -(prefix + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(size_format, len(text)) + text


def npz(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def png(width, height, idat=zlib.compress(b"\0" * 16)) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` greyscale pixels."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


X = np.random.default_rng(0).random((12, 1, 4, 4)).astype(np.float32)
Y = np.arange(12) % 3


def _npz_cases(tmp):
    """name -> (path, fragment of the message)."""
    cases = {}

    def arrays(name, fragment, **values):
        cases[name] = (npz(tmp / f"{name}.npz", {f"{k}.npy": npy_bytes(v) for k, v in values.items()}), fragment)

    np.save(tmp / "single.npy", X)
    (tmp / "single.npy").rename(tmp / "npy_named_npz.npz")
    cases["npy_named_npz"] = (tmp / "npy_named_npz.npz", "is a single .npy array, not an .npz archive")
    np.save(tmp / "given.npy", X)
    cases["npy_given"] = (tmp / "given.npy", "is a single .npy array; --data takes an .npz archive")
    arrays("objects", "holds Python objects", x=np.array([{"a": 1}, 2], dtype=object), y=Y)
    arrays("object_labels", "holds Python objects", x=X, y=np.array([[1], "b"], dtype=object))
    cases["terabytes"] = (npz(tmp / "terabytes.npz", {"x.npy": npy_header(TERABYTES) + b"\0" * 64}),
                          "has shape (10000000, 3, 1024, 1024) of float32")  # fmt: skip
    cases["terabytes_v2_deflated"] = (
        npz(tmp / "tb2.npz", {"x.npy": npy_header(TERABYTES, "<f8", 2)}, zipfile.ZIP_DEFLATED), "GiB, over the 8 GiB"
    )
    cases["header_beyond_member"] = (npz(tmp / "short.npz", {"x.npy": npy_header((1000, 1, 28, 28)) + b"\0" * 100}),
                                     "claims 3,136,000 bytes of float32 (1000, 1, 28, 28) but holds 100")  # fmt: skip
    cases["not_npy_member"] = (npz(tmp / "text.npz", {"x.npy": b"hello"}), "is not a .npy array")
    arrays("huge_label", "has label 1,000,000,000,000; expected classes 0..K-1 with K at most 100,000", x=X,
           y=np.r_[Y[:-1], 10**12])
    arrays("uint64_label", "has label 18,446,744,073,709,551,615", x=X, y=np.full(12, 2**64 - 1, dtype=np.uint64))
    arrays("float_huge_label", "has label 1e+300", x=X, y=np.full(12, 1e300))
    arrays("negative_label", "has negative labels (smallest -1)", x=X, y=Y - 1)
    arrays("fractional_label", "not whole numbers; expected integer class indices", x=X, y=Y + 0.5)
    arrays("nan_label", "has labels: 1 of 12 values are NaN or infinite", x=X, y=np.r_[Y[:-1], np.nan])
    arrays("inf_label", "has labels: 1 of 12 values are NaN or infinite", x=X, y=np.r_[Y[:-1], np.inf])
    arrays("length_mismatch", "has labels of shape (11,); expected (12,)", x=X, y=Y[:11])
    arrays("no_images", "is empty", x=np.zeros((0, 1, 4, 4), np.float32), y=np.zeros(0, np.int64))
    arrays("wrong_dims", "has images of shape (12, 16)", x=X.reshape(12, 16), y=Y)
    nan_images = np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X)
    arrays("nan_images", "has images: 1 of 192 values are NaN", x=nan_images, y=Y)
    arrays("strings", "has images of type <U1", x=np.array(["a"] * 12), y=Y)
    arrays("no_x", "has no array 'x' (it has: images)", images=X)
    (tmp / "random.npz").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    cases["not_a_zip"] = (tmp / "random.npz", "is not a readable .npz archive")
    good = npz(tmp / "good.npz", {"x.npy": npy_bytes(X), "y.npy": npy_bytes(Y)}, zipfile.ZIP_DEFLATED)
    (tmp / "truncated.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated"] = (tmp / "truncated.npz", "is not a readable .npz archive")
    return cases


CASES = [
    "npy_named_npz", "npy_given", "objects", "object_labels", "terabytes", "terabytes_v2_deflated",
    "header_beyond_member", "not_npy_member", "huge_label", "uint64_label", "float_huge_label", "negative_label",
    "fractional_label", "nan_label", "inf_label", "length_mismatch", "no_images", "wrong_dims", "nan_images",
    "strings", "no_x", "not_a_zip", "truncated",
]  # fmt: skip


@pytest.fixture(scope="module")
def npz_cases(tmp_path_factory):
    return _npz_cases(tmp_path_factory.mktemp("hostile_npz"))


def test_every_case_is_tested(npz_cases):
    assert sorted(npz_cases) == sorted(CASES)


@pytest.mark.parametrize("name", CASES)
def test_hostile_npz_is_one_data_error_naming_the_file(npz_cases, name):
    path, fragment = npz_cases[name]
    with pytest.raises(DataError) as error:
        load_data(str(path))
    message = str(error.value)
    assert "\n" not in message and str(path) in message and fragment in message, message


def test_a_good_archive_still_loads(npz_cases, tmp_path):
    path = npz(tmp_path / "ok.npz", {"x.npy": npy_bytes(X), "y.npy": npy_bytes(Y.astype(np.float32))})
    data = load_data(str(path))
    assert data.num_classes == 3 and sum(map(len, (data.train, data.calib, data.test))) == 12


def _folder(tmp, name, files: dict[str, bytes]):
    root = tmp / name
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    root.mkdir(exist_ok=True)
    return root


def _real_png(size=8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(size * size, dtype=np.uint8).reshape(size, size)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "files, culprit, fragment",
    [
        ({"a/bomb.png": png(100_000, 100_000)}, "a/bomb.png", "is too large to decode"),  # PIL's error
        ({"a/big.png": png(10_000, 10_000)}, "a/big.png", "is too large to decode"),  # PIL's warning
        ({"a/big.png": png(9000, 9000)}, "a/big.png", "is 9000x9000 pixels; at most 67,108,864"),  # our bound
        ({"a/ok.png": _real_png(), "a/z.png": png(9000, 9000)}, "a/z.png", "is 9000x9000 pixels"),
        ({"a/ok.png": _real_png(), "a/cut.png": _real_png(64)[:60]}, "a/cut.png", "cannot be read"),
        ({"a/ok.png": _real_png(), "b/text.jpg": b"not an image at all"}, "b/text.jpg", "cannot be read"),
        ({"empty.jpg": b""}, "empty.jpg", "cannot be read"),
        ({"notes.txt": b"hello"}, "", "has no images and no class subfolders"),
        ({"a/ok.png": _real_png(), "b/notes.txt": b"x"}, "b", "has no images"),
    ],
    ids=["bomb-error", "bomb-warning", "over-our-bound", "second-file", "truncated", "not-an-image", "empty-file",
         "no-images", "empty-class"],  # fmt: skip
)
def test_broken_image_folder_is_one_data_error_naming_the_file(tmp_path, files, culprit, fragment):
    root = _folder(tmp_path, "images", files)
    with pytest.raises(DataError) as error:
        load_data(str(root))
    message = str(error.value)
    assert "\n" not in message and str(root / culprit).rstrip("/") in message and fragment in message, message


def test_image_folder_too_large_in_all_is_refused_before_decoding(tmp_path):
    root = _folder(tmp_path, "images", {f"a/{i}.png": png(8000, 8000) for i in range(40)})  # headers only
    with pytest.raises(DataError, match=r"would take .* GiB as 40 images of 1x8000x8000"):
        load_data(str(root))


@pytest.mark.parametrize("name", ["terabytes", "huge_label", "npy_named_npz", "objects"])
def test_through_the_cli_one_error_line_exit_2(npz_cases, name):
    path, fragment = npz_cases[name]
    result = CliRunner().invoke(cli, ["inspect", "zoo:lenet", "--data", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.count("error: ") == 1
    assert fragment in result.output


def test_a_pipe_named_npz_is_refused_without_reading(tmp_path):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)  # opening it to read would block until a writer comes
    with pytest.raises(DataError, match="is not a regular file or a folder"):
        load_data(str(fifo))
