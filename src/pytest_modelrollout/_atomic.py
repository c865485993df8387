"""Atomic file writing: readers see the old file or the new one, never a partial file.

The content is written to a temporary file in the destination's directory, flushed and
fsync'ed, then moved over the destination with :func:`os.replace` (atomic on POSIX and on
Windows when source and destination are on the same volume). Concurrent writers of the same
path (e.g. two pytest-xdist workers recording the same cassette) each write a complete file;
the last rename wins. A failed write leaves the destination untouched and removes the
temporary file.

This module does not import pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

__all__ = ["atomic_stream_text", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]

_WINDOWS = sys.platform.startswith("win")


@contextlib.contextmanager
def _atomic_file(
    path: str | os.PathLike[str],
    *,
    text_encoding: str | None,
    fsync: bool,
    mode: int | None,
    make_parents: bool,
) -> Iterator[Any]:
    """The protocol: a temporary file beside ``path`` (binary, or text with ``text_encoding``
    and no newline translation), flushed and fsync'ed, given ``mode`` and moved over ``path``
    when the block ends normally; removed (``path`` untouched) when it raises."""
    dest = Path(path)
    parent = dest.parent
    if make_parents:
        parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
    tmp = Path(tmp_name)
    try:
        if text_encoding is None:
            f: Any = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=text_encoding, newline="", buffering=1 << 16)
        with f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if mode is not None:
            with contextlib.suppress(OSError):
                os.chmod(tmp, mode)
        _replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync and not _WINDOWS:
        _fsync_dir(parent)


def atomic_write_bytes(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    fsync: bool = True,
    mode: int | None = 0o644,
    make_parents: bool = True,
) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    ``mode`` is applied to the new file (``tempfile.mkstemp`` creates files readable by the
    owner only); ``None`` keeps the temporary file's mode. ``fsync`` makes the content durable
    before the rename (and, on POSIX, the rename itself by syncing the directory).
    """
    with _atomic_file(
        path, text_encoding=None, fsync=fsync, mode=mode, make_parents=make_parents
    ) as f:
        f.write(data)
    return Path(path)


def atomic_stream_text(
    path: str | os.PathLike[str],
    *,
    encoding: str = "utf-8",
    mode: int | None = 0o644,
    make_parents: bool = True,
) -> contextlib.AbstractContextManager[TextIO]:
    """Write text to ``path`` atomically as it is produced (for files too large to build in
    memory first): ``with atomic_stream_text(p) as f: f.write(...)``.

    The same protocol as :func:`atomic_write_bytes` (temporary file, fsync, ``os.replace``,
    directory fsync), applied when the block ends normally; if it raises, the temporary file is
    removed, the destination is untouched and the exception propagates. No newline translation.
    """
    return _atomic_file(
        path, text_encoding=encoding, fsync=True, mode=mode, make_parents=make_parents
    )


def atomic_write_text(
    path: str | os.PathLike[str],
    text: str,
    *,
    encoding: str = "utf-8",
    fsync: bool = True,
    mode: int | None = 0o644,
    make_parents: bool = True,
) -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation) and return the path."""
    return atomic_write_bytes(
        path, text.encode(encoding), fsync=fsync, mode=mode, make_parents=make_parents
    )


def atomic_write_json(
    path: str | os.PathLike[str],
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    fsync: bool = True,
    mode: int | None = 0o644,
    make_parents: bool = True,
) -> Path:
    """Serialise ``obj`` as UTF-8 JSON (non-ASCII kept readable) and write it atomically.

    The object is serialised before anything touches the disk, so an unserialisable object
    raises without creating any file.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text, fsync=fsync, mode=mode, make_parents=make_parents)


def _replace(src: Path, dest: Path) -> None:
    if not _WINDOWS:
        os.replace(src, dest)
        return
    # On Windows the rename fails while another process has the destination open (a reader);
    # retry briefly instead of failing a concurrent recording.
    delay = 0.005
    for _ in range(40):
        try:
            os.replace(src, dest)
            return
        except PermissionError:
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
    os.replace(src, dest)


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(dfd)
    finally:
        os.close(dfd)
