"""Tarballs a dataset comes in: downloaded through a .part file with its MD5 checked, and
unpacked safely (regular files and folders only, nothing outside the target, all or nothing)."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

from spnas.errors import SpnasError
from spnas.files import exclusive, make_folders, remove_empty_folders


def _checked_members(tarball: Path, tar: tarfile.TarFile, root: Path) -> list[tarfile.TarInfo]:
    """Every member, refusing links, special files and paths that leave ``root``."""
    members = tar.getmembers()
    for m in members:
        target = (root / m.name).resolve()
        if not (m.isfile() or m.isdir()):
            raise SpnasError(f"refusing to unpack {tarball}: member {m.name!r} is a "
                             "link or special file; the official tarball has none")
        if target != root and root not in target.parents:
            raise SpnasError(f"refusing to unpack {tarball}: member {m.name!r} "
                             f"would land outside {root.parent}")
    return members


def _unpack(tarball: Path, root: Path) -> None:
    with tarfile.open(tarball) as tar:
        for m in _checked_members(tarball, tar, root):
            target = root / m.name
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            if src is None:  # only for links and special files, which _checked_members refused
                raise SpnasError(f"cannot read member {m.name!r} of {tarball}")
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
        # read to the end, so gzip checks its CRC: a garbled stream may decompress to
        # wrong bytes, or look like an archive that ends early, without any other error
        while tar.fileobj.read(1 << 20):
            pass


def _move_into_place(tmp: Path, dest: Path, tarball: Path) -> None:
    for entry in sorted(tmp.iterdir()):
        target = dest / entry.name
        if os.path.lexists(target):
            raise SpnasError(f"{target} already exists (an unpack that did not finish?); "
                             f"delete it and run again, and {tarball.name} will be unpacked "
                             "afresh")
        os.replace(entry, target)


def _one_line(e: Exception) -> str:
    """tarfile lists each method it tried on its own line: keep the message on one."""
    return " ".join(str(e).split()) or type(e).__name__


def _megabytes(n: int) -> int:
    return max(1, -(-n // 1_000_000))


def safe_extract(tarball: Path, dest: Path, expect: tuple[str, ...] = ()) -> None:
    """Unpack regular files and folders only, refusing any member that leaves ``dest``.

    The members are unpacked into a hidden temporary folder inside ``dest`` and
    renamed into place only once all of them are written, so a failure (a full
    disk, a truncated tarball) leaves ``dest`` as it was, and the tarball too.
    ``expect``: paths the tarball must hold (a damaged tarball may just end early).
    One process unpacks at a time (it holds a lock on the tarball): the next finds the
    files there and returns, and removes the temporary folders of unpacks killed midway.
    """
    tarball, dest = Path(tarball), Path(dest).resolve()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with exclusive(tarball):
            if expect and all((dest / f).is_file() for f in expect):
                return  # another process unpacked it while this one waited
            for stale in dest.glob(f".{tarball.name}.unpacking-*"):
                shutil.rmtree(stale, ignore_errors=True)  # no live unpack: the lock is ours
            _unpack_into(tarball, dest, expect)
    except OSError as e:
        if e.errno is not None:  # permissions, a read-only disk: not the tarball's fault
            raise SpnasError(_unwritable(tarball, dest, e)) from None
        raise


def _unwritable(tarball: Path, dest: Path, e: OSError) -> str:
    return (f"cannot unpack {tarball} into {dest}: {e.strerror} ({e.filename or dest}); make "
            f"{dest} writable or put the tarball in a writable --data_path")


def _unpack_into(tarball: Path, dest: Path, expect: tuple[str, ...]) -> None:
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{tarball.name}.unpacking-", dir=dest))
        _unpack(tarball, tmp)
        lacking = [f for f in expect if not (tmp / f).is_file()]
        if lacking:
            raise SpnasError(f"{tarball} is incomplete or damaged: it lacks "
                             f"{', '.join(lacking)}; delete it and download it again")
        _move_into_place(tmp, dest, tarball)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp = None
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise SpnasError(_disk_full(tarball, dest)) from None
        if e.errno is not None:  # permissions, a read-only disk: not the tarball's fault
            raise SpnasError(_unwritable(tarball, dest, e)) from None
        raise SpnasError(f"{tarball} is corrupt or truncated ({_one_line(e)}); delete it "
                         "and download it again") from None
    except (tarfile.TarError, EOFError, ValueError, zlib.error) as e:
        raise SpnasError(f"{tarball} is corrupt or truncated ({_one_line(e)}); delete it "
                         "and download it again") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _disk_full(tarball: Path, dest: Path) -> str:
    try:
        with tarfile.open(tarball) as tar:
            needed = sum(m.size for m in tar.getmembers() if m.isfile())
    except (OSError, tarfile.TarError, EOFError, zlib.error):
        needed = 0
    free = shutil.disk_usage(dest).free
    short = needed - free if needed > free else needed
    return (f"disk full while unpacking {tarball} into {dest} (it needs "
            f"{_megabytes(needed)} MB, {free // 1_000_000} MB are free): free "
            f"{_megabytes(short)} MB and run again; the tarball is intact, keep it")


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _drop(part: Path, folders_made: list[Path]) -> None:
    """Remove a failed download's ``.part`` file, and the folders the download made."""
    part.unlink(missing_ok=True)
    remove_empty_folders(folders_made)


def download(url: str, dest: Path, md5: str, timeout: float = 30.0) -> None:
    """Fetch ``url`` to ``dest`` through a ``.part`` file, with a progress bar, MD5 checked."""
    from tqdm import tqdm
    part = dest.with_name(dest.name + ".part")
    made = make_folders(dest.parent)  # a failed download leaves no empty folder it made
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}") as bar:
                for chunk in iter(lambda: r.read(1 << 16), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (OSError, ValueError) as e:
        _drop(part, made)
        raise ConnectionError(str(e)) from None
    got = md5sum(part)
    if got != md5:
        _drop(part, made)
        raise SpnasError(f"downloaded {dest.name} has MD5 {got}, expected {md5}: the "
                         "download was damaged; run again")
    os.replace(part, dest)
