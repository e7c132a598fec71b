"""Search records on disk, so that an interrupted search (Ctrl-C, kill) resumes where it was.

Records are keyed by what was evaluated; a search is deterministic, so a resumed run asks for
the same keys, finds the finished ones here and reaches the same result. Writes are atomic
(temporary file, then rename): a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import InputError


class Checkpoint:
    """A key -> record store flushed to ``path`` at most every ``interval`` seconds (and on
    ``flush``). ``identity`` says which search wrote it: a checkpoint of another search (other
    model, data or options) is refused rather than mixed in. ``path=None`` keeps it in memory."""

    def __init__(self, path: str | Path | None, identity: dict | None = None, interval: float = 2.0):
        self.path = Path(path) if path is not None else None
        self.identity = identity or {}
        self.interval = interval
        self.records: dict[str, list] = {}
        self._last_flush = time.monotonic()
        self._dirty = False
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as error:
                raise InputError(f"checkpoint '{self.path}' is unreadable ({error}); remove it to start over") from error
            if data.get("identity") != self.identity:
                raise InputError(
                    f"checkpoint '{self.path}' was written by another search (other model, data or "
                    "options); remove it or pass --no-resume"
                )
            self.records = data.get("records", {})
        self.resumed = len(self.records)

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"identity": self.identity, "records": self.records}))
        os.replace(tmp, self.path)
        self._dirty = False
        self._last_flush = time.monotonic()
