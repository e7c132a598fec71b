"""Search records on disk, so that an interrupted search (Ctrl-C, kill) resumes where it was.

Records are keyed by what was evaluated; a search is deterministic, so a resumed run asks for
the same keys, finds the finished ones here and reaches the same result. Writes are atomic
(temporary file, then rename): a kill mid-write leaves the previous checkpoint intact. A file
read back is checked against a schema first: a corrupt or edited one is refused in one line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import storage
from ..distributed import SINGLE, World
from ..errors import InputError, OutputError
from ..schema import read_json

_NUMBER = {"type": "number", "minimum": -1e300, "maximum": 1e300}  # JSON's 1e999 reads as infinity
_ACCURACY = {"type": "number", "minimum": 0, "maximum": 1}
SPATIAL_RECORD = {"type": "array", "prefixItems": [_ACCURACY, _NUMBER], "minItems": 2, "maxItems": 2}  # accuracy, saved
STEP_RECORD = {  # a greedy perforation step: the layer it advanced, or why it stopped
    "type": "object",
    "required": ["layer"],
    "additionalProperties": False,
    "properties": {"layer": {"type": ["string", "null"]}, "ratio": _NUMBER, "loss": _NUMBER,
                   "layers": {"type": "array", "items": {"type": "string"}, "minItems": 2},  # several raised together
                   "accuracy": _ACCURACY, "reason": {"type": "string"}},  # fmt: skip
    "if": {"properties": {"layer": {"type": "string"}}},
    "then": {"required": ["ratio", "loss", "accuracy"]},
    "else": {"required": ["reason"]},
}


def checkpoint_schema(record: dict) -> dict:
    """The schema of a checkpoint file whose records are each valid against ``record``."""
    return {
        "type": "object",
        "required": ["identity", "records"],
        "additionalProperties": False,
        "properties": {"identity": {"type": "object"}, "records": {"type": "object", "additionalProperties": record}},
    }


def same_identity(stored, current) -> bool:
    """Whether a checkpoint written for ``stored`` belongs to the search ``current``: equal, but
    for options ``stored`` lacks that ``current`` leaves off (None): options added since it was
    written, whose default is the search it ran."""
    if isinstance(stored, dict) and isinstance(current, dict):
        return all(key in stored or current[key] is None for key in current) and all(
            key in current and same_identity(value, current[key]) for key, value in stored.items()
        )
    return stored == current


class Checkpoint:
    """A key -> record store flushed to ``path`` at most every ``interval`` seconds (and on
    ``flush``). ``identity`` says which search wrote it: a checkpoint of another search (other
    model, data or options) is refused rather than mixed in; a file whose records do not match
    ``record`` (a JSON Schema: ``SPATIAL_RECORD``, ``STEP_RECORD``) is refused as corrupt.
    ``path=None`` keeps it in memory. With a ``world`` of several ranks, the main rank alone
    reads and writes the file; the others get its records (a resumed search stays in step)."""

    def __init__(self, path: str | Path | None, identity: dict | None = None, interval: float = 2.0,
                 record: dict | None = None, world: World = SINGLE):  # fmt: skip
        self.path = Path(path) if path is not None else None
        self.identity = identity or {}
        self.interval = interval
        self._last_flush = time.monotonic()
        self._dirty = False
        self.records: dict[str, list] = world.from_main(lambda: self._read(record))
        if not world.is_main:
            self.path = None
        self.resumed = len(self.records)

    def _read(self, record: dict | None) -> dict[str, list]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            schema = checkpoint_schema(record or {"anyOf": [SPATIAL_RECORD, STEP_RECORD]})
            data = read_json(self.path, schema, "checkpoint")
        except InputError as error:
            raise InputError(f"{error}; remove it or pass --no-resume to start over") from None
        if not same_identity(data["identity"], self.identity):
            raise InputError(
                f"checkpoint '{self.path}' was written by another search (other model, data or "
                "options); remove it or pass --no-resume"
            )
        return data["records"]

    def get(self, key: str):
        return self.records.get(key)

    def put(self, key: str, record) -> None:
        self.records[key] = record
        self._dirty = True
        if time.monotonic() - self._last_flush >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self.path is None or not self._dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"cannot write checkpoint '{self.path}': {error.strerror or error}") from error
        storage.write_text(self.path, json.dumps({"identity": self.identity, "records": self.records}))
        self._dirty = False
        self._last_flush = time.monotonic()
