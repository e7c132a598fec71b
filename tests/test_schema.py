"""JSON from disk: one line naming the file and the bad field's path, or the data."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsify_cnn.errors import InputError
from sparsify_cnn.schema import field_path, parse_json, read_json

SCHEMA = {
    "type": "object",
    "required": ["version", "masks"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1},
        "kind": {"enum": ["spatial", "ssc"]},
        "masks": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["shape"],
                "properties": {"shape": {"type": "array", "items": {"type": "integer", "minimum": 1}}},
            },
        },
    },
}


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"version": 1}', "the top level lacks the field 'masks'"),
        ('{"version": 1, "masks": {"conv1": {"shape": [1, "2"]}}}', "masks.conv1.shape[1] must be an integer, not a string"),
        ('{"version": 1, "masks": {"conv1": {"shape": [0]}}}', "masks.conv1.shape[0] is 0; it must be >= 1"),
        ('{"version": 1, "masks": {}, "extra": 0}', "the top level has an unknown field 'extra'"),
        ('{"version": 2, "masks": {}}', "version is 2; expected 1"),
        ('{"version": 1, "masks": {}, "kind": "stan"}', 'kind is "stan"; expected "spatial" or "ssc"'),
        ("[]", "the top level must be an object, not a list"),
        ('{"version": 1, "masks": {"c": {"shape": [NaN]}}}', "not valid JSON: NaN is not a JSON number"),
        ('{"version": 1,', "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ],
)
def test_a_bad_document_is_one_line_naming_the_field(text, message):
    with pytest.raises(InputError) as caught:
        parse_json(text, SCHEMA, "plan 'p.json'")
    assert str(caught.value).startswith("plan 'p.json'")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_valid_document_is_returned():
    assert parse_json('{"version": 1, "masks": {"a": {"shape": [2]}}}', SCHEMA, "x") == {
        "version": 1,
        "masks": {"a": {"shape": [2]}},
    }


def test_read_json_names_missing_folders_and_undecodable_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_json(tmp_path / "nope.json", SCHEMA, "plan")
    with pytest.raises(InputError, match="is not a file"):
        read_json(tmp_path, SCHEMA, "plan")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(InputError, match="unreadable: UnicodeDecodeError"):
        read_json(tmp_path / "bin.json", SCHEMA, "plan")


def test_field_path_reads_like_python():
    assert field_path(["masks", "conv1", "shape", 0]) == "masks.conv1.shape[0]"
    assert field_path([3, "a"]) == "[3].a"
    assert field_path([]) == ""


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(document=JSON)
def test_any_json_value_loads_or_fails_in_one_line(document):
    try:
        parse_json(json.dumps(document), SCHEMA, "plan")
    except InputError as error:
        assert "\n" not in str(error) and len(str(error)) < 300
