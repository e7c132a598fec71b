"""Hostile .pt2 archives: each is a real torch.export.save file rewritten the way an attacker
would, and each must be refused in one line without running the payload it carries."""

import json
import pickle
import random
import warnings
import zipfile

import pytest
import torch

from sparsify_cnn.errors import ModelLoadError
from sparsify_cnn.model_io import load_model, save_program

CONSTANTS = "data/constants/model_constants_config.json"
OPAQUE = {"config": {"obj": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}}


class _Touch:
    """Unpickling this creates the file ``path``: proof that the payload ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    path = tmp_path_factory.mktemp("pt2") / "tiny.pt2"
    save_program(torch.nn.Conv2d(1, 2, 3).eval(), (1, 6, 6), path, {"zoo": "lenet"})
    return path


def _entries(path):
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info.filename)) for info in archive.infolist()]


def _write(path, entries):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns of the duplicate names we want
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in entries:
                archive.writestr(name, data)
    return path


def _rewrite(program, path, replace=None, add=()):
    """``program`` with entries replaced (name -> bytes) and others appended, all under its folder."""
    entries = _entries(program)
    folder = entries[0][0].split("/")[0] + "/"
    replace = {folder + k: v for k, v in (replace or {}).items()}
    entries = [(n, replace.get(n, d)) for n, d in entries] + [(folder + n, d) for n, d in add]
    return _write(path, entries)


def _refused(path, match, trust_pickle=False):
    with pytest.raises(ModelLoadError, match=match) as error:
        load_model(str(path), trust_pickle=trust_pickle)
    assert "\n" not in str(error.value) and path.name in str(error.value)


def test_duplicate_config_that_torch_reads_first_is_refused_and_never_unpickled(program, tmp_path):
    """torch's zip reader (miniz) finds a name by binary search, Python's zipfile keeps the last
    entry: a hostile config placed where torch finds it and Python does not hid a pickle."""
    marker = tmp_path / "marker"
    entries = _entries(program)
    folder = entries[0][0].split("/")[0] + "/"
    hostile = json.dumps(OPAQUE).encode()
    payload = (folder + "data/constants/opaque_obj_0", pickle.dumps(_Touch(marker)))
    for position in range(len(entries)):
        path = _write(tmp_path / f"dup{position}.pt2", [*entries[:position], (folder + CONSTANTS, hostile),
                                                       *entries[position:], payload])  # fmt: skip
        torch_reads = torch._C.PyTorchFileReader(str(path)).get_record(CONSTANTS)
        python_reads = zipfile.ZipFile(path).read(folder + CONSTANTS)
        if torch_reads == hostile and python_reads != hostile:
            break
    else:
        pytest.fail("no layout where torch and zipfile disagree: the test no longer shows the threat")
    _refused(path, rf"two entries named '{CONSTANTS}'")
    _refused(path, "two entries named", trust_pickle=True)  # ambiguous even when trusted
    assert not marker.exists()


def test_name_that_differs_only_in_case_is_a_duplicate(program, tmp_path):
    marker = tmp_path / "marker"
    path = _rewrite(program, tmp_path / "case.pt2", add=[
        (CONSTANTS.replace("model_constants", "MODEL_constants"), json.dumps(OPAQUE).encode()),
        ("data/constants/opaque_obj_0", pickle.dumps(_Touch(marker))),
    ])  # fmt: skip
    _refused(path, "the same name to torch's reader")
    assert not marker.exists()


def test_opaque_object_needs_trust(program, tmp_path):
    marker = tmp_path / "marker"
    path = _rewrite(program, tmp_path / "opaque.pt2", replace={CONSTANTS: json.dumps(OPAQUE).encode()},
                    add=[("data/constants/opaque_obj_0", pickle.dumps(_Touch(marker)))])  # fmt: skip
    _refused(path, r"carries pickled objects \(obj\).*--trust-pickle")
    assert not marker.exists()


@pytest.mark.parametrize(
    "name, match",
    [
        ("../../escape.txt", "unsafe name"),
        ("extra//double.txt", "unsafe name"),
        ("extra/back\\slash", "unsafe name"),
        ("data/aotinductor/model/model.so", "which no torch.export program has"),
        ("code/__torch__.py", "which no torch.export program has"),
    ],
)
def test_odd_entry_names_are_refused(program, tmp_path, name, match):
    _refused(_rewrite(program, tmp_path / "odd.pt2", add=[(name, b"x")]), match)


def test_entry_outside_the_archive_folder_is_refused(program, tmp_path):
    path = _write(tmp_path / "outside.pt2", [*_entries(program), ("version", b"1")])
    _refused(path, "not a readable torch.export program.*not in a subdirectory")


@pytest.mark.parametrize(
    "config, match",
    [
        (b"{not json", "is not valid JSON"),
        (b'{"config": {}, "config": {"obj": 1}}', "key 'config' appears twice"),
        (b"\xff\xfe", "is not valid JSON"),
        (b'{"config": {"c": {"path_name": "tensor_0", "use_pickle": "false"}}}', "use_pickle must be true or false"),
        (b'{"config": {"c": {"path_name": "../tensor_0", "use_pickle": false}}}', "path_name"),
        (b'{"config": {"c": {"path_name": "script_0", "use_pickle": false}}}', "constant 'c' of unknown kind"),
        (b'{"config": [], "extra": 1}', "config"),
    ],
)
def test_configs_the_scan_cannot_read_are_refused_not_skipped(program, tmp_path, config, match):
    path = _rewrite(program, tmp_path / "config.pt2", replace={CONSTANTS: config})
    _refused(path, match)


def test_truncated_archives_are_refused_in_one_line(program, tmp_path):
    data = program.read_bytes()
    for size in (100, len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut{size}.pt2"
        path.write_bytes(data[:size])
        with pytest.raises(ModelLoadError) as error:
            load_model(str(path))
        assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "metadata, match",
    [
        (b'{"input_shape": [1, 0, 6]}', r"input_shape\[1\] is 0; it must be >= 1"),
        (b'{"input_shape": [1, 6]}', "input_shape has the wrong size"),
        (b'{"input_shape": "1x6x6"}', "input_shape must be a list"),
        (b'{"input_shape": [1, 6, 6], "input_shape": [1, 6, 6]}', "appears twice"),
        (b'{"num_classes": NaN}', "not valid JSON"),
        (b"[1, 2]", "the top level must be an object"),
    ],
)
def test_corrupt_sparsify_metadata_is_one_line(program, tmp_path, metadata, match):
    _refused(_rewrite(program, tmp_path / "meta.pt2", replace={"extra/sparsify.json": metadata}), match)


def test_the_untouched_program_still_loads(program):
    loaded = load_model(str(program))
    assert loaded.input_shape == (1, 6, 6) and loaded.metadata["zoo"] == "lenet"
    assert loaded.module(torch.zeros(3, 1, 6, 6)).shape == (3, 2, 4, 4)


def _edit_program(program, path, edit):
    with zipfile.ZipFile(program) as archive:
        name = next(n for n in archive.namelist() if n.endswith("models/model.json"))
        data = json.loads(archive.read(name))
    edit(data)
    return _rewrite(program, path, replace={"models/model.json": json.dumps(data).encode()})


def _first_node(data):
    return data["graph_module"]["graph"]["nodes"][0]


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d, code: d.update(guards_code=[f"{code} or True"]), "guards code"),
        (lambda d, code: _first_node(d).update(target="torch.os.system"), "call target 'torch.os.system'"),
        (lambda d, code: _first_node(d).update(target="_operator.attrgetter"), "call target '_operator.attrgetter'"),
        (lambda d, code: _first_node(d).update(target="torch.ops.__class__.x"), "call target"),
        (None, "shape expression"),
    ],
)
def test_python_in_the_graph_is_refused_like_a_pickle(program, tmp_path, edit, match):
    """torch evaluates guards code (exec), shape expressions (sympify) and resolves node targets
    by getattr from torch: each can run code from the file without any pickle."""
    marker = tmp_path / "marker"
    code = f"open({str(marker)!r}, 'w').write('ran')"
    if edit is None:
        with zipfile.ZipFile(program) as archive:
            name = next(n for n in archive.namelist() if n.endswith("models/model.json"))
            text = archive.read(name).decode()
        expression = text[text.index('"expr_str": "') + 13 :].split('"')[0]
        hostile = text.replace(expression, f"({code}) or {expression}".replace('"', '\\"'))
        path = _rewrite(program, tmp_path / "expr.pt2", replace={"models/model.json": hostile.encode()})
    else:
        path = _edit_program(program, tmp_path / "graph.pt2", lambda d: edit(d, code))
    _refused(path, rf"graph holds Python that loading would run \({match}.*--trust-pickle")
    assert not marker.exists()


def test_random_damage_gives_a_model_or_one_line(program, tmp_path):
    """Flipped bytes and fields of the wrong type: a ModelLoadError line or a model, nothing else."""
    rng = random.Random(0)
    data = program.read_bytes()
    with zipfile.ZipFile(program) as archive:
        config = next(n for n in archive.namelist() if n.endswith(CONSTANTS))[: -len(CONSTANTS)]
    for i in range(40):
        path = tmp_path / f"damaged{i}.pt2"
        if i % 2:
            damaged = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            path.write_bytes(bytes(damaged))
        else:
            value = rng.choice([None, True, -1, 2**40, 1.5, "x", [], {}, [1, 2]])
            entry = rng.choice(["models/model.json", CONSTANTS, "data/weights/model_weights_config.json"])
            with zipfile.ZipFile(program) as archive:
                document = json.loads(archive.read(config + entry))
            document[rng.choice(sorted(document))] = value
            _rewrite(program, path, replace={entry: json.dumps(document).encode()})
        try:
            load_model(str(path))
        except ModelLoadError as error:
            assert "\n" not in str(error)


def test_a_shape_expression_that_would_hang_is_refused(program, tmp_path):
    """sympy computes 9**9**9 exactly when it parses it: minutes of CPU, not a shape."""
    with zipfile.ZipFile(program) as archive:
        name = next(n for n in archive.namelist() if n.endswith("models/model.json"))
        text = archive.read(name).decode()
    expression = text[text.index('"expr_str": "') + 13 :].split('"')[0]
    hostile = text.replace(expression, f"PowByNatural(9, PowByNatural(9, 9)) + {expression}")
    path = _rewrite(program, tmp_path / "tower.pt2", replace={"models/model.json": hostile.encode()})
    _refused(path, r"graph holds Python that loading would run \(shape expression.*--trust-pickle")


def _flip_in_entry(path, out, suffix):
    """``path`` with the bytes of the first entry ending in ``suffix`` inverted in place (its
    CRC-32 left as it was): what a bad disk or a careless edit does."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix) and i.file_size >= 8)
    data = bytearray(path.read_bytes())
    head = info.header_offset  # the local header's name and extra lengths (torch pads the extra)
    start = head + 30 + int.from_bytes(data[head + 26 : head + 28], "little") + int.from_bytes(data[head + 28 : head + 30], "little")
    for i in range(start, start + 8):
        data[i] ^= 0xFF
    out.write_bytes(bytes(data))
    return out


def test_damaged_weights_are_refused_not_loaded(program, tmp_path):
    """torch's zip reader does not check CRC-32s: damaged weights loaded silently before."""
    _refused(_flip_in_entry(program, tmp_path / "damaged.pt2", "weight_0"), r"is damaged: entry .*weight_0.* CRC-32")
    state = tmp_path / "state.pt"
    torch.save(torch.nn.Conv2d(1, 2, 3).state_dict(), state)
    damaged = _flip_in_entry(state, tmp_path / "damaged.pt", "data/0")
    with pytest.raises(ModelLoadError, match=r"'.*damaged.pt' is damaged: entry .*data/0.* CRC-32"):
        load_model(str(damaged), arch="zoo:lenet")
