"""Files and folders written whole or not at all.

Every write goes to a temporary sibling, is flushed to disk, then renamed over its target: a
kill, a crash or a full disk leaves the previous file (or none), never half of one. A write that
fails raises :class:`OutputError` with the path and the reason, never a bare ``OSError``::

    write_json(out / "plan.json", data)
    with atomic_path(out / "plot.png") as tmp:
        figure.savefig(tmp)                    # any writer that takes a path
    write_buffered(out / "model.pt2", lambda f: torch.export.save(program, f))  # torch's writers
    with atomic_dir(out / "artifact") as tmp:  # a folder is swapped in whole
        (tmp / "manifest.json").write_text(...)

A run claims its output first (:func:`claim_output`): the folder is proved writable before any
work, and locked, so that a second run on the same ``--out`` stops instead of mixing files.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
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
    # the suffix stays last: writers that pick a format by it (savefig, PIL) see .png, not .tmp
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    _remove_orphans(path.parent, f".{path.stem}.tmp-*{path.suffix}")
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


def write_buffered(path: str | Path, writer: Callable[[io.BytesIO], None]) -> None:
    """``writer`` fills a memory buffer, then its bytes are written as :func:`write_bytes` does.
    For torch's writers (``torch.save``, ``torch.export.save``): on a full disk their C++ file
    writer raises, then aborts the process (SIGABRT) while it is destroyed::

        write_buffered(out / "model.pt2", lambda f: torch.export.save(program, f))
    """
    buffer = io.BytesIO()
    writer(buffer)
    write_bytes(path, buffer.getbuffer())


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``path``; when the block ends without error it replaces
    ``path`` (and whatever was there) in one rename, else it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if not path.exists():  # a writer killed between its two renames left the previous folder aside
        for previous in _orphans(path.parent, f".{path.name}.old-*"):
            with contextlib.suppress(OSError):
                os.replace(previous, path)
    _remove_orphans(path.parent, f".{path.name}.tmp-*")
    _remove_orphans(path.parent, f".{path.name}.old-*")
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


LOCK_NAME = ".sparsify.lock"


@contextlib.contextmanager
def output_lock(path: str | Path, inside: bool = True, option: str = "--out") -> Iterator[Path]:
    """Hold the lock of output ``path`` for the block: ``path/.sparsify.lock`` for a folder a run
    writes into (``inside``), else a hidden sibling ``.NAME.lock`` (a file, or an artifact folder
    that must hold exactly its manifest's files). A second run on ``path`` stops with an
    :class:`OutputError` naming the holder (and ``option``, to choose another); the kernel
    releases the lock when the holder ends, even by SIGKILL::

        with output_lock(out):
            ...  # the only sparsify run writing into out/
    """
    path = Path(path)
    lock = path / LOCK_NAME if inside else path.with_name(f".{path.name}.lock")
    fd = _take_lock(lock, path, option)
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {started}\n".encode())
        yield lock
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # still locked: a run that opened it meanwhile sees it gone and retries
        os.close(fd)


@contextlib.contextmanager
def claim_output(path: str | Path, inside: bool = True, option: str = "--out") -> Iterator[Path]:
    """Before any work: the output's folder is created if needed and proved writable, then
    locked (:func:`output_lock`). At the end a folder this created is removed if it holds
    nothing, so a failed run leaves no empty folder behind. ``inside=False`` for a file."""
    if isinstance(path, str) and not path:  # an unset shell variable: Path('') is the current folder
        raise OutputError(f"{option} is empty: give the path to write")
    path = Path(path)
    if not inside and path.exists() and not (path.is_file() or path.is_dir()):
        yield path  # a device or pipe (/dev/stdout) is written in place: no folder to check or lock
        return
    folder = path.absolute() if inside else path.absolute().parent
    missing = [f for f in (folder, *folder.parents) if not f.exists()]  # what this run creates
    check_writable_dir(folder, "output folder" if inside else "the output's folder")
    try:
        with output_lock(path, inside, option):
            yield path
    finally:
        for created in missing:  # innermost first; stops mattering at the first one not empty
            remove_if_empty(created)


def _take_lock(lock: Path, path: Path, option: str) -> int:
    for _ in range(20):  # a holder may remove the file between our open and our lock
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputError(f"cannot lock '{path}': {_reason(error)}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(f"'{path}' is being written by another sparsify run ({holder}); wait for it to "
                              f"finish or choose another {option}") from None  # fmt: skip
        except OSError as error:
            os.close(fd)
            raise OutputError(f"cannot lock '{path}': {_reason(error)}") from error
        try:
            current = os.stat(lock)
            mine = os.fstat(fd)
            if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise OutputError(f"cannot lock '{path}': its lock file '{lock}' keeps changing")


def _holder(fd: int) -> str:
    try:
        pid, _, started = os.pread(fd, 200, 0).decode("utf-8", "replace").strip().partition(" ")
    except OSError:
        pid, started = "", ""
    return f"pid {pid}, started {started}" if pid.isdigit() and started else "pid unknown"


def _remove_orphans(folder: Path, pattern: str) -> None:
    """Remove the temporary files and folders of writers killed mid-write."""
    for orphan in _orphans(folder, pattern):
        if orphan.is_dir() and not orphan.is_symlink():
            shutil.rmtree(orphan, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                orphan.unlink()


def _orphans(folder: Path, pattern: str) -> list[Path]:
    """Entries of ``folder`` matching ``pattern`` (``.NAME.tmp-PID...``) whose process is gone."""
    found = []
    with contextlib.suppress(OSError):
        for entry in folder.glob(pattern):
            pid = entry.name.rpartition("-")[2].split(".")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                found.append(entry)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__
