"""Files written whole or not at all: a temporary file in the same folder, fsynced, then
renamed over the target; the clean-up of temporaries a killed process left behind; and
folders made for a write, removed again when it fails."""
from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from spnas.errors import SpnasError

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # not POSIX: no locks
    fcntl = None


@contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the existing file ``path`` for the block (nothing is
    written to it); waits while another process holds it, and the OS drops it when the
    process dies. Where the file system cannot lock (NFS without write access, Lustre with
    noflock), the block runs unlocked, as off POSIX."""
    if fcntl is None:
        yield
        return
    try:  # NFS emulates flock with byte-range locks: an exclusive one needs a writable fd
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in (errno.EBADF, errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
        yield
    finally:
        os.close(fd)


@contextmanager
def replaced_from_temp(path: str | Path) -> Iterator[Path]:
    """A temporary file next to ``path`` (with the mode a new file gets) for the block to
    write, renamed over ``path`` when the block ends without an error. On any error the
    temporary file is removed and ``path`` is left as it was; an ``OSError`` that names no
    file (a full disk on write or fsync) or the temporary file (which the user never named)
    is given ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        e.filename = str(path)
        raise
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if isinstance(e, OSError) and e.filename in (None, tmp):  # write/fsync: no file;
            e.filename, e.filename2 = str(path), None             # replace: the temporary
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync it, then rename it over
    ``path`` (``replaced_from_temp``)."""
    with replaced_from_temp(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


# what tempfile.mkstemp(prefix=".<name>.", suffix=".tmp") makes: 8 random characters
_TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


def remove_stale_temp_files(folder: str | Path) -> list[str]:
    """Delete the temporary files of ``atomic_write`` calls that were killed midway.

    Only call this while no live process writes into ``folder`` (a run holds the run
    folder's lock). Returns the names removed.
    """
    removed = []
    for p in sorted(Path(folder).glob(".*.tmp")):
        if _TEMP_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def make_folders(folder: str | Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it made, deepest first (for
    ``remove_empty_folders`` when what was to go there fails)."""
    made, up = [], Path(folder)
    while not up.exists() and up != up.parent:
        made.append(up)
        up = up.parent
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)  # a file in the way: FileExistsError
    except OSError:  # made some, then failed (a name too long, a full disk): none left
        remove_empty_folders(made)
        raise
    return made


def folder_to_write(path: str | Path, flag: str) -> list[Path]:
    """Make ``path``'s folder and prove a file can be created in it, before the work whose
    result goes there (a latency table is minutes of timing); returns the folders made
    (``make_folders``). A folder that cannot be made or written is a one-line error naming
    ``flag``."""
    folder = Path(path).parent
    made: list[Path] = []
    try:
        made = make_folders(folder)
        fd, probe = tempfile.mkstemp(prefix=".spnas-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        remove_empty_folders(made)
        why = ("a file is in the way of that folder" if e.errno in (errno.EEXIST, errno.ENOTDIR)
               else e.strerror or str(e))
        raise SpnasError(f"{flag} {path}: cannot write into {folder} ({why}); "
                         f"choose another {flag}") from None
    return made


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first, as ``make_folders`` gives them) while they are empty;
    one that is not (someone else's files are there now) stays, and those above it. One that
    is not there (its ``mkdir`` failed) is skipped."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENAMETOOLONG):  # never made: the next one up
                continue
            break
