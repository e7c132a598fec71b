"""Paths that lead out of an artifact folder, or to files that never end (devices, fifos), and
`sparsify run`'s own paths: each is refused in one line, fast, and nothing outside tmp is touched."""

import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sparsify_cnn.cli.main import cli
from sparsify_cnn.codegen.compile import compile_graph
from sparsify_cnn.errors import OutputError
from sparsify_cnn.runtime import ArtifactError, load
from sparsify_cnn.transform.capture import capture

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out

SHAPE = (1, 1, 6, 6)


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(32, 3)).eval()
    return capture(model, SHAPE).graph_module


@pytest.fixture(scope="module")
def artifact(graph, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "artifact"
    compile_graph(graph, SHAPE, out)
    return out


@pytest.fixture(autouse=True)
def no_hang():
    """A loader that blocks on a device or fifo fails the test instead of hanging it."""

    def stop(*_):
        raise TimeoutError("hung")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _listing(artifact, tmp_path, name, digest="0" * 64):
    folder = shutil.copytree(artifact, tmp_path / "a")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = digest
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/passwd", "/dev/zero", "sub/model.so", "a\\b", "..", ".hidden", "", "notes\n"]
)
def test_names_that_are_not_plain_file_names_are_refused(artifact, tmp_path, name):
    digest = hashlib.sha256(b"").hexdigest()
    with pytest.raises(ArtifactError, match=r"manifest.json': files|which is not a plain file name") as error:
        load(_listing(artifact, tmp_path, name, digest))
    assert "\n" not in str(error.value)


def test_a_device_in_the_folder_is_refused_without_reading_it(artifact, tmp_path):
    folder = _listing(artifact, tmp_path, "zero")
    try:
        os.mknod(folder / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers, made in tmp
    except OSError:
        pytest.skip("cannot make a device node here")
    with pytest.raises(ArtifactError, match="zero' is not a plain file: a device"):
        load(folder)


@pytest.mark.parametrize("listed", [True, False])
def test_a_fifo_in_the_folder_does_not_hang_the_loader(artifact, tmp_path, listed):
    folder = _listing(artifact, tmp_path, "pipe") if listed else shutil.copytree(artifact, tmp_path / "a")
    os.mkfifo(folder / "pipe")
    match = "pipe' is not a plain file: a fifo" if listed else "holds 'pipe', which its manifest does not list"
    with pytest.raises(ArtifactError, match=match):
        load(folder)
    (folder / "model.so").unlink()
    os.mkfifo(folder / "model.so")
    with pytest.raises(ArtifactError, match="is not a plain file: a fifo|does not list"):
        load(folder)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_run_writes_exactly_the_output_path_given(artifact, tmp_path):
    x = np.ones(SHAPE, np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run("run", artifact, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "y.out").exists() and not (tmp_path / "y.out.npy").exists()
    np.testing.assert_array_equal(np.load(tmp_path / "y.out"), load(artifact)(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "y.out"]  # no temporary left behind


@pytest.mark.parametrize("name", ["manifest.json", "y.npy"])
def test_run_never_writes_into_the_artifact(artifact, tmp_path, name):
    np.save(tmp_path / "x.npy", np.ones(SHAPE, np.float32))
    before = {p.name: p.read_bytes() for p in artifact.iterdir()}
    result = run("run", artifact, "--input", tmp_path / "x.npy", "--output", artifact / name)
    assert result.exit_code == 2 and "is inside the artifact" in result.output
    assert {p.name: p.read_bytes() for p in artifact.iterdir()} == before


def test_run_pins_the_manifest_digest(artifact, tmp_path):
    np.save(tmp_path / "x.npy", np.ones(SHAPE, np.float32))
    digest = hashlib.sha256((artifact / "manifest.json").read_bytes()).hexdigest()
    ok = run("run", artifact, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--expect-sha256", digest)
    assert ok.exit_code == 0, ok.output
    wrong = run("run", artifact, "--input", tmp_path / "x.npy", "--output", tmp_path / "z.npy",
                "--expect-sha256", "ab" * 32)  # fmt: skip
    assert wrong.exit_code == 2 and f"not the expected {'ab' * 32}" in wrong.output
    assert not (tmp_path / "z.npy").exists()


def _huge_header():
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (1 << 38, 1, 6, 6)})
    return buffer.getvalue() + b"\0" * 64


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: np.save(p, np.array([{}, 1], dtype=object), allow_pickle=True), "holds Python objects"),
        (lambda p: p.write_bytes(_huge_header()), "claims 39,582,418,599,936 bytes of float32"),
        (lambda p: np.save(p, np.ones((2, 1, 6, 6), np.float32)), r"shape \(2, 1, 6, 6\); the artifact was compiled"),
        (lambda p: np.save(p, np.ones(SHAPE, np.float64)), "has dtype float64; the artifact was compiled for float32"),
        (lambda p: p.write_bytes(b"not numpy"), "is not a .npy array"),
        (lambda p: p.write_bytes(np.lib.format.MAGIC_PREFIX + b"\x01\x00"), "is not a .npy array"),
        (lambda p: os.mkfifo(p), "is not a regular file"),
    ],
)
def test_run_refuses_bad_inputs_in_one_line(artifact, tmp_path, make, message):
    make(tmp_path / "x.npy")
    result = run("run", artifact, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "y.npy").exists()


def test_compile_never_replaces_a_folder_of_other_files(graph, tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(OutputError, match="holds other files, which the artifact would replace"):
        compile_graph(graph, SHAPE, tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_a_failed_write_leaves_the_previous_artifact(graph, artifact, tmp_path):
    previous = shutil.copytree(artifact, tmp_path / "a")
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    with pytest.raises(OutputError):
        compile_graph(graph, SHAPE, previous, extra_files={"report.md": tmp_path / "missing.md"})
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary folder left behind
    (tmp_path / "report.md").write_text("# chosen for")
    result = compile_graph(graph, SHAPE, previous, extra_files={"report.md": tmp_path / "report.md"})
    assert set(result.manifest["files"]) == {"model.so", "params.npz", "report.md"}
    assert load(previous, expected_sha256=result.manifest_sha256).manifest["files"]["report.md"]
