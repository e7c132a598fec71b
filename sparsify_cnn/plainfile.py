"""Open a file for reading only if it is a plain (regular) file: a fifo does not block the open,
and a device, folder, socket (or, when asked, a symbolic link) is refused before any read, so
``/dev/zero`` or a pipe given as a data or artifact file cannot hang or exhaust memory. No torch,
no numpy: the artifact runtime uses it."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class NotPlainFile(Exception):
    """``path`` exists but is not a plain file; ``kind`` says what it is ("a fifo", ...)."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


@contextlib.contextmanager
def open_plain(path: str | Path, follow_links: bool = True) -> Iterator[tuple[BinaryIO, int]]:
    """``path`` open for reading and its size when checked (read no more than that). Raises
    OSError when it cannot be opened, NotPlainFile when it is not a plain file. Example::

        with open_plain("x.npy") as (f, size):
            data = f.read(size)
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)  # a fifo must not block
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if not follow_links and Path(path).is_symlink():
            raise NotPlainFile("a symbolic link") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotPlainFile(kind_of(info.st_mode))
    with open(fd, "rb") as f:
        yield f, info.st_size


def kind_of(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words."""
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a fifo"), (stat.S_ISCHR, "a device"),
             (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")]  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a regular file")
