"""File helpers shared by the package: atomic writes and file checksums.

An atomic write goes to a temporary file beside the target, then ``os.replace``
moves it over the target: a reader (or a run killed half-way) sees the old file or
the new one, never half of one. The temporary file lives in the target's folder
because a rename is only atomic within one file system.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "replace_file", "fsync_dir", "sha256_file"]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (any size, bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds: the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(tmp: str | os.PathLike[str], path: str | os.PathLike[str], *, fsync: bool = False) -> None:
    """Move the finished file ``tmp`` over ``path`` in one step. With ``fsync``, the data
    reaches the disk before the rename and the rename before the return (what a
    crash-safe protocol needs: a power cut cannot leave a renamed but empty file)."""
    if fsync:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_dir(Path(path).parent)


@contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, suffix: str | None = None, tmp_name: str | None = None, fsync: bool = False
) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that needs a file name
    (``np.savez``, ``soundfile.write``, ``shutil.copyfile``); on a clean exit it replaces
    ``path``, on an exception it is removed and ``path`` is left as it was.

    The default name is hidden, unique and ends with ``suffix`` (default: ``path``'s own),
    so writers that pick the format from the extension, or append one, still write to it;
    ``tmp_name`` names it instead (for callers that find and clean their own leftovers).
    The writer creates the file, so it gets the usual permissions.
    """
    path = Path(path)
    end = path.suffix if suffix is None else suffix
    tmp = path.with_name(tmp_name or f".{path.name}.{secrets.token_hex(4)}.tmp{end}")
    try:
        yield tmp
        replace_file(tmp, path, fsync=fsync)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, tmp_name: str | None = None, fsync: bool = False
) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, tmp_name=tmp_name, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", fsync: bool = False) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding=encoding)
