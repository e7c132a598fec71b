"""Files and folders written whole or not at all.

Every write goes to a temporary sibling, is flushed to disk, then renamed over its target: a
kill, a crash or a full disk leaves the previous file (or none), never half of one. A write that
fails raises :class:`OutputError` with the path and the reason, never a bare ``OSError``::

    write_json(out / "plan.json", data)
    with atomic_path(out / "model.pt2") as tmp:
        torch.export.save(program, tmp)        # any writer that takes a path
    with atomic_dir(out / "artifact") as tmp:  # a folder is swapped in whole
        (tmp / "manifest.json").write_text(...)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed onto ``path`` when the block ends without error.
    A device or pipe (``/dev/stdout``) is written in place: a rename would replace it."""
    path = Path(path)
    if path.exists() and not path.is_file():
        if path.is_dir():
            raise OutputError(f"cannot write '{path}': it is a folder")
        try:
            yield path
        except OSError as error:
            raise OutputError(f"cannot write '{path}': {_reason(error)}") from error
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as error:
        raise OutputError(f"cannot write '{path}': {_reason(error)}") from error
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data, indent: int | None = 2) -> None:
    write_text(path, json.dumps(data, indent=indent))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``path``; when the block ends without error it replaces
    ``path`` (and whatever was there) in one rename, else it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync(file)
        if path.is_dir() and not path.is_symlink():
            os.replace(path, old)
        elif path.exists() or path.is_symlink():
            raise OutputError(f"cannot write '{path}': it exists and is not a folder")
        os.replace(tmp, path)
    except OSError as error:
        if old.exists() and not path.exists():
            os.replace(old, path)  # put the previous folder back
        raise OutputError(f"cannot write '{path}': {_reason(error)}") from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def check_writable_dir(path: str | Path, what: str = "output folder") -> bool:
    """Create folder ``path`` if needed and prove that files can be written in it, before any
    work is done. Returns whether it was created (so a failed run can remove it if still empty)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} '{path}' exists and is not a folder")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".sparsify-probe-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as error:
        raise OutputError(f"cannot write in {what} '{path}': {_reason(error)}") from error
    return created


def remove_if_empty(path: str | Path) -> None:
    """Remove folder ``path`` if it holds nothing (a run that failed before writing anything)."""
    with contextlib.suppress(OSError):
        Path(path).rmdir()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__
