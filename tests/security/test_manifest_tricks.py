"""Tampered artifacts: the manifest is not signed, so the loader trusts nothing it says beyond
what it can check (schema, exact file set, checksums, params.npz members), and a pinned manifest
digest refuses any other manifest. Every failure is one ArtifactError line, never a hang."""

import hashlib
import io
import json
import shutil
import subprocess
import warnings
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsify_cnn.codegen.compile import compile_graph
from sparsify_cnn.runtime import ArtifactError, load
from sparsify_cnn.transform.capture import capture

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out

SHAPE = (1, 1, 6, 6)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A tiny model compiled once; tests tamper with copies."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(32, 3)).eval()
    out = tmp_path_factory.mktemp("tiny") / "artifact"
    result = compile_graph(capture(model, SHAPE).graph_module, SHAPE, out, check_inputs=torch.randn(2, *SHAPE[1:]))
    assert result.manifest_sha256 == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    return out


def _copy(artifact, dst):
    return shutil.copytree(artifact, dst)


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _write_manifest(folder, manifest):
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _refused(folder, match, **kwargs):
    with pytest.raises(ArtifactError, match=match) as error:
        load(folder, **kwargs)
    assert "\n" not in str(error.value)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_untouched_artifact_loads_and_pins(artifact):
    digest = _sha(artifact / "manifest.json")
    model = load(artifact, expected_sha256=digest.upper())
    assert model.manifest_sha256 == digest
    assert model(np.zeros(SHAPE, np.float32)).shape == (1, 3)


def test_emptied_file_list_is_refused(artifact, tmp_path):
    folder = _copy(artifact, tmp_path / "a")
    manifest = _manifest(folder)
    manifest["files"] = {}
    _write_manifest(folder, manifest)
    _refused(folder, "files lacks the field 'model.so'")


def test_params_left_out_of_the_list_are_refused(artifact, tmp_path):
    folder = _copy(artifact, tmp_path / "a")
    manifest = _manifest(folder)
    del manifest["files"]["params.npz"]
    _write_manifest(folder, manifest)
    _refused(folder, "files lacks the field 'params.npz'")
    (folder / "params.npz").unlink()
    _refused(folder, "files lacks the field 'params.npz'")


def test_unlisted_files_and_folders_are_refused(artifact, tmp_path):
    folder = _copy(artifact, tmp_path / "a")
    (folder / "notes.txt").write_text("hello")
    _refused(folder, "holds 'notes.txt', which its manifest does not list")
    (folder / "notes.txt").unlink()
    (folder / "sub").mkdir()
    _refused(folder, "holds 'sub', which its manifest does not list")
    manifest = _manifest(folder)
    manifest["files"]["sub"] = "0" * 64
    _write_manifest(folder, manifest)
    _refused(folder, "sub' is not a plain file: a folder")


def test_symlinks_are_refused_even_to_the_right_bytes(artifact, tmp_path):
    folder = _copy(artifact, tmp_path / "a")
    (folder / "model.so").unlink()
    (folder / "model.so").symlink_to(artifact / "model.so")
    _refused(folder, "model.so' is not a plain file: a symbolic link")
    folder = _copy(artifact, tmp_path / "b")
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").symlink_to(artifact / "manifest.json")
    _refused(folder, "manifest.json' is not a plain file")


def _foreign_library(tmp_path, marker):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler to build a foreign library")
    source = tmp_path / "foreign.c"
    source.write_text(
        "#include <stdio.h>\n__attribute__((constructor)) static void run(void) {\n"
        f'  FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }}\n}}\n'
    )
    library = tmp_path / "foreign.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True, capture_output=True)
    return library


def test_a_foreign_library_never_runs(artifact, tmp_path):
    marker = tmp_path / "marker"
    foreign = _foreign_library(tmp_path, marker)
    pinned = _sha(artifact / "manifest.json")
    folder = _copy(artifact, tmp_path / "a")
    shutil.copy(foreign, folder / "model.so")
    _refused(folder, "model.so' was altered")  # the manifest's checksum is the original's
    manifest = _manifest(folder)
    manifest["files"]["model.so"] = _sha(foreign)  # an attacker rewrites the manifest too
    _write_manifest(folder, manifest)
    _refused(folder, f"manifest sha256 [0-9a-f]{{64}}, not the expected {pinned}", expected_sha256=pinned)
    manifest["files"] = {}
    _write_manifest(folder, manifest)
    _refused(folder, "files lacks the field")
    assert not marker.exists()


def _npz(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data, method in members:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buffer.getvalue()


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)  # object arrays too: the loader must refuse them
    return buffer.getvalue()


def _huge_npy():
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)})
    return buffer.getvalue() + b"\0" * 16


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p: [*p, ("p99.npy", _npy(np.zeros(2, np.float32)), zipfile.ZIP_STORED)], "holds 'p99.npy' besides"),
        (lambda p: p[1:], "lacks p0.npy"),
        (lambda p: [*p, p[0]], "holds 'p0.npy' besides"),
        (lambda p: [(n, d, zipfile.ZIP_DEFLATED) for n, d, _ in p], "p0.npy is compressed"),
        (lambda p: [("p0.npy", _huge_npy(), zipfile.ZIP_STORED), *p[1:]], "claims 4,398,046,511,104 bytes"),
        (lambda p: [("p0.npy", _npy(np.array([{}, 1], dtype=object)), zipfile.ZIP_STORED), *p[1:]],
         "holds Python objects"),
    ],
)
def test_params_must_be_exactly_p0_to_pn(artifact, tmp_path, change, match):
    """The manifest's checksum is updated each time: only the members are wrong."""
    warnings.simplefilter("ignore", UserWarning)  # zipfile warns of the duplicate member we want
    folder = _copy(artifact, tmp_path / "a")
    with np.load(folder / "params.npz") as params:
        members = [(f"{name}.npy", _npy(params[name]), zipfile.ZIP_STORED) for name in params.files]
    (folder / "params.npz").write_bytes(_npz(change(sorted(members))))
    manifest = _manifest(folder)
    manifest["files"]["params.npz"] = _sha(folder / "params.npz")
    _write_manifest(folder, manifest)
    _refused(folder, match)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("num_params", "2", "num_params must be an integer, not a string"),
        ("inputs", [{"name": "x", "shape": [1, -1], "dtype": "float32"}], r"inputs\[0\].shape\[1\] is -1"),
        ("target", {"kind": "tpu"}, 'target.kind is "tpu"'),
        ("files", {"model.so": "not a hash", "params.npz": "0" * 64}, "files.model.so is \"not a hash\""),
        ("versions", {}, "versions lacks the field 'apache-tvm'"),
        ("version", 2, "is not a version 1 sparsify artifact"),
    ],
)
def test_manifest_schema_violations_name_the_field(artifact, tmp_path, key, value, match):
    folder = _copy(artifact, tmp_path / "a")
    manifest = _manifest(folder)
    manifest[key] = value
    _write_manifest(folder, manifest)
    _refused(folder, match)


def test_manifest_that_is_not_json_or_duplicates_keys(artifact, tmp_path):
    folder = _copy(artifact, tmp_path / "a")
    (folder / "manifest.json").write_bytes(b"\xff{")
    _refused(folder, "is not valid JSON")
    (folder / "manifest.json").write_text('{"format": NaN}')
    _refused(folder, "is not valid JSON")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@pytest.fixture(scope="module")
def mutable(artifact, tmp_path_factory):
    return _copy(artifact, tmp_path_factory.mktemp("mutable") / "a")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_manifests_load_or_raise_artifact_error(artifact, mutable, data):
    manifest = json.loads((artifact / "manifest.json").read_text())
    path = data.draw(st.sampled_from([p for p in _paths(manifest) if p]))
    parent = manifest
    for part in path[:-1]:
        parent = parent[part]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_JSON)
    _write_manifest(mutable, manifest)
    try:
        load(mutable)
    except ArtifactError as error:
        assert "\n" not in str(error)


def test_loads_from_the_folder_where_temporary_files_cannot_run(artifact, monkeypatch):
    """The library is loaded from a private copy of the checked bytes; where that fails (a temp
    folder mounted noexec) it is loaded from the folder, after checking it has not changed."""
    import sparsify_cnn.runtime as runtime

    def noexec(*args, **kwargs):
        raise OSError("temp folder mounted noexec")

    monkeypatch.setattr(runtime.tempfile, "TemporaryDirectory", noexec)
    assert load(artifact)(np.zeros(SHAPE, np.float32)).shape == (1, 3)
