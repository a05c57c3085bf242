"""Files: durable atomic writes and digests.

:func:`atomic_write` is the one way edgeai replaces a file: readers see the old content or
the whole new one, never a torn file, and (durable, the default) a power cut after it
returns cannot bring the old content back.  The sequence is the classic one: a unique temp
file in the same directory, write, ``fsync``, ``rename``, ``fsync`` of the directory (the
rename is the commit point; see rename(2) and https://lwn.net/Articles/457667/).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes (``hashlib.file_digest``: no whole-file read)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to stable storage."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: Path,
    data: bytes | str,
    *,
    mode: int | None = None,
    durable: bool = True,
) -> None:
    """Replace ``path`` with ``data`` atomically (and, by default, durably).

    Parameters
    ----------
    path
        The file to write; its directory is created if missing.
    data
        The content; a ``str`` is written as UTF-8.
    mode
        The file's permission bits, exact (not masked by the umask) and set on the temp
        file before any byte is written: with ``0o600`` a key is never readable by others,
        not even for an instant.  ``None``: a replaced file keeps its mode (and, when we
        run as root, its owner: a daemon that drops privileges still reads what root
        edited); a new file gets the mode ``open()`` would give it (``0o666`` less the
        umask).
    durable
        ``fsync`` the file before the rename and the directory after it.  Pass ``False``
        only for content that can be recomputed (a cache) and say so at the call site:
        the write then survives a process crash but not a power cut.

    Notes
    -----
    The temp file has a unique name (``.<name>.<random>.tmp``), so concurrent writers
    never share one: the last rename wins and each reader sees one writer's whole file.
    On any failure the temp file is removed and ``path`` is left as it was.
    """
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = _create_temp(path, mode)
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


@contextmanager
def atomic_path(path: Path, *, mode: int | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path that replaces ``path`` when the block ends without an exception.

    For tools that write a file by name (``onnx.save``, an exporter): same guarantees and
    ``mode``/``durable`` as :func:`atomic_write`.  The temp file exists (empty, with its
    mode already set) when the block starts; on an exception it is removed and ``path``
    is left as it was.  The temp name ends with ``path``'s suffix, for tools that choose a
    format by extension.
    """
    fd, tmp = _create_temp(path, mode, suffix=path.suffix)
    os.close(fd)
    try:
        yield tmp
        if durable:
            fsync_file(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def _create_temp(path: Path, mode: int | None, suffix: str = "") -> tuple[int, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        existing = path.stat() if mode is None else None
    except FileNotFoundError:
        existing = None
    # A plain new file is created as open() would (the umask applies); anything else is
    # 0600 until its final mode is set, so it is never readable by others in between.
    create_mode = 0o666 if mode is None and existing is None else 0o600
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, create_mode)
            break
        except FileExistsError:  # pragma: no cover  (48 random bits)
            continue
    try:
        if existing is not None:
            if os.geteuid() == 0:  # before chmod: chown clears set-id bits
                os.fchown(fd, existing.st_uid, existing.st_gid)
            os.fchmod(fd, existing.st_mode & 0o7777)
        elif mode is not None:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return fd, tmp


def fsync_file(path: Path) -> None:
    """Flush a file's content to stable storage (a file written by someone else)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
