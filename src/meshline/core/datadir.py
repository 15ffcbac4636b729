"""The control plane's data directory: only its own user may enter it or read what is in it.

It holds the store of record (``meshline.db`` and SQLite's ``-wal``/``-shm`` files), the
key-encryption key and the local admin token. ``secure_data_dir`` makes the directory 0700
and every file in it 0600 on each start, fixing what an older version (or a careless copy)
left readable and saying so, because a WAL readable by another user gives away whatever
was written last.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from meshline.core.errors import MeshlineError

log = logging.getLogger("meshline.controlplane")

DIR_MODE = 0o700
FILE_MODE = 0o600


def secure_data_dir(path: Path) -> Path:
    """Create ``path`` 0700 (or tighten it) and make every file in it 0600.

    Refuses a directory another user owns or a shared one (sticky bit, like /tmp): fixing
    their modes would break other programs, and keeping secrets there is unsafe anyway.
    """
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise MeshlineError(
            f"data dir {path} belongs to another user (uid {info.st_uid}); use a directory of your own"
            " (--data-dir / MESHLINE_DATA_DIR)"
        )
    if info.st_mode & stat.S_ISVTX:
        raise MeshlineError(
            f"data dir {path} is a shared directory (sticky bit, like /tmp); use a directory of its"
            f" own, e.g. {path}/meshline (--data-dir / MESHLINE_DATA_DIR)"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode != DIR_MODE:
        os.chmod(path, DIR_MODE)
        log.warning("data dir %s was mode %o; made it %o (only this user may enter it)", path, mode, DIR_MODE)
    for child in sorted(path.iterdir()):
        secure_file(child)
    return path


def secure_file(path: Path) -> None:
    """Make one file 0600 (a regular file only: links and sockets are left alone)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        return
    mode = stat.S_IMODE(info.st_mode)
    if mode & ~FILE_MODE:
        os.chmod(path, FILE_MODE)
        log.warning("%s was mode %o; made it %o (it may hold secrets)", path, mode, FILE_MODE)


def create_private(path: Path) -> None:
    """Create ``path`` empty and 0600 if it does not exist yet (before SQLite opens it: SQLite
    gives its -wal and -shm files the database file's mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to ``path`` readable by the owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
